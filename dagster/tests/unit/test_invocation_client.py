"""The client's Pipes context and invocation ids, with a fake function standing in for HTTP:
what reaches the function for range runs of assets and op jobs, through any injector, and
under direct invocation (``build_asset_context()``)."""

import json
import re
from collections.abc import Mapping
from typing import Any

import dagster as dg
import google.auth.credentials
import google.auth.exceptions
import pytest
from dagster._core.pipes.context import build_external_execution_context_data
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesDefaultContextLoader, decode_param

from dagster_pipes_gcf import (
    CloudFunctionError,
    CloudFunctionInvoker,
    FunctionResponse,
    IdTokenAuth,
    PipesCloudFunctionClient,
    PipesCloudFunctionEventContextInjector,
    PipesSharedLocationReader,
)
from dagster_pipes_gcf.invocation import Call

URL = "http://127.0.0.1:9/people"
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01")
# The function's own check of the invocation id (people_lake.request).
INVOCATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
RANGE_TAGS = {
    ASSET_PARTITION_RANGE_START_TAG: "2024-01-02",
    ASSET_PARTITION_RANGE_END_TAG: "2024-01-04",
}
RANGE = {"start": "2024-01-02", "end": "2024-01-04"}
WINDOW = {"start": "2024-01-02T00:00:00+00:00", "end": "2024-01-05T00:00:00+00:00"}


class FakeFunction(CloudFunctionInvoker):
    """Answers 200 at once; records the Pipes context each call carried and its id."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[dict[str, Any]] = []
        self.invocation_ids: list[str] = []

    def start(self, url: str, **kwargs: Any) -> Call:
        return RecordingCall(self, url, kwargs["headers"], 1.0)


class RecordingCall(Call):
    def post(self, payload: Mapping[str, Any], handler_started: Any = None) -> None:
        function = self.invoker
        assert isinstance(function, FakeFunction)
        params = decode_param(payload[DAGSTER_PIPES_CONTEXT_ENV_VAR])
        if "path" in params:  # PipesTempFileContextInjector
            with open(params["path"]) as file:
                function.contexts.append(json.load(file))
        else:
            function.contexts.append(params[PipesDefaultContextLoader.DIRECT_KEY])
        function.invocation_ids.append(self.headers["X-Dagster-Invocation-Id"])

    def result(self) -> FunctionResponse:
        return FunctionResponse(200, {"status": "ok"}, 0.0, 1)


INJECTORS = {
    "inline": PipesCloudFunctionEventContextInjector,
    "temp file": dg.PipesTempFileContextInjector,
}


def client_with(function: FakeFunction, injector: str = "inline") -> PipesCloudFunctionClient:
    return PipesCloudFunctionClient(
        message_reader=PipesSharedLocationReader(dg.PipesTempFileMessageReader()),
        context_injector=INJECTORS[injector](),
        invoker=function,
    )


def test_a_reader_that_knows_nothing_of_attempts_is_refused_naming_the_wrapper() -> None:
    with pytest.raises(TypeError, match=r"PipesTempFileMessageReader .*PipesSharedLocationReader"):
        PipesCloudFunctionClient(message_reader=dg.PipesTempFileMessageReader())  # type: ignore[arg-type]


@pytest.mark.parametrize("injector", INJECTORS)
def test_a_range_run_of_an_asset_carries_its_keys_and_window_through_any_injector(
    injector: str,
) -> None:
    function = FakeFunction()
    client = client_with(function, injector)

    @dg.asset(partitions_def=DAILY)
    def days(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client.run(context=context, function_url=URL)
        return dg.MaterializeResult()

    assert dg.materialize([days], tags=RANGE_TAGS).success
    (context,) = function.contexts
    assert context["partition_key"] is None
    assert context["partition_key_range"] == RANGE
    assert context["partition_time_window"] == WINDOW


def test_a_range_run_of_an_op_job_gets_its_time_window() -> None:
    function = FakeFunction()
    client = client_with(function, "temp file")

    @dg.op
    def call(context: dg.OpExecutionContext) -> None:
        client.run(context=context, function_url=URL)

    @dg.job(partitions_def=DAILY)
    def daily_job() -> None:
        call()

    assert daily_job.execute_in_process(tags=RANGE_TAGS).success
    (context,) = function.contexts
    assert context["partition_key_range"] == RANGE
    assert context["partition_time_window"] == WINDOW


def test_a_range_of_partitions_that_are_not_time_windows_gets_keys_only() -> None:
    function = FakeFunction()
    client = client_with(function)

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b", "c"]))
    def letters(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client.run(context=context, function_url=URL)
        return dg.MaterializeResult()

    tags = {ASSET_PARTITION_RANGE_START_TAG: "a", ASSET_PARTITION_RANGE_END_TAG: "b"}
    assert dg.materialize([letters], tags=tags).success
    (context,) = function.contexts
    assert context["partition_key_range"] == {"start": "a", "end": "b"}
    assert context["partition_time_window"] is None


def test_a_single_partition_run_carries_dagsters_own_context_unchanged() -> None:
    function = FakeFunction()
    client = client_with(function)
    expected: list[Any] = []

    @dg.asset(partitions_def=DAILY)
    def day(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        expected.append(build_external_execution_context_data(context, None))
        client.run(context=context, function_url=URL)
        return dg.MaterializeResult()

    assert dg.materialize([day], partition_key="2024-01-03").success
    (context,) = function.contexts
    for key in ("partition_key", "partition_key_range", "partition_time_window"):
        assert context[key] == expected[0][key]
    assert context["partition_time_window"]["start"] == "2024-01-03T00:00:00+00:00"


def test_a_directly_invoked_asset_calls_the_function_with_a_new_id_each_time() -> None:
    """Users unit-test Pipes assets with build_asset_context(), as with the AWS clients."""
    function = FakeFunction()
    client = client_with(function)

    @dg.asset
    def people(context: dg.AssetExecutionContext) -> None:
        client.run(context=context, function_url=URL, call_key="batch-1")

    people(dg.build_asset_context())
    people(dg.build_asset_context())
    first, second = function.invocation_ids
    assert first != second, "two direct invocations are two pieces of work, not a repeat"
    assert INVOCATION_ID.fullmatch(first) and INVOCATION_ID.fullmatch(second)
    assert [c["run_id"] for c in function.contexts] == ["EPHEMERAL", "EPHEMERAL"]


def test_a_directly_invoked_range_gets_its_keys() -> None:
    function = FakeFunction()
    client = client_with(function)

    @dg.asset(partitions_def=DAILY)
    def days(context: dg.AssetExecutionContext) -> None:
        client.run(context=context, function_url=URL)

    days(
        dg.build_asset_context(partition_key_range=dg.PartitionKeyRange("2024-01-02", "2024-01-04"))
    )
    (context,) = function.contexts
    assert context["partition_key_range"] == RANGE


class RefusingCredentials(google.auth.credentials.Credentials):
    """google-auth credentials whose every refresh is refused (e.g. permission denied)."""

    def refresh(self, request: Any) -> None:
        raise google.auth.exceptions.RefreshError("Permission 'getOpenIdToken' denied")


class TokenForEveryUrl(IdTokenAuth):
    """Asks for a token for a local URL too, as it would for a deployed function."""

    def headers_for(self, url: str, timeout: float | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_for('https://fn-ew.a.run.app', timeout)}"}


def test_a_refused_token_fails_the_step_as_a_call_failure_with_its_trace() -> None:
    errors: list[CloudFunctionError] = []
    client = PipesCloudFunctionClient(
        message_reader=PipesSharedLocationReader(dg.PipesTempFileMessageReader()),
        invoker=CloudFunctionInvoker(
            auth=TokenForEveryUrl(default_factory=lambda _: RefusingCredentials())
        ),
    )

    @dg.asset
    def people(context: dg.AssetExecutionContext) -> None:
        try:
            client.run(context=context, function_url=URL)
        except CloudFunctionError as error:
            errors.append(error)
            raise

    assert not dg.materialize([people], raise_on_error=False).success
    (error,) = errors
    assert "no ID token" in str(error.description) and "getOpenIdToken" in str(error.description)
    assert "trace_id" in error.metadata
    assert error.function_may_still_run is False
