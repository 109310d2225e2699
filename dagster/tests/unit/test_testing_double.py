"""``dagster_pipes_gcf.testing``: assets tested as a user would, against the in-process double."""

import json
import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pytest
from dagster_pipes import PipesContext
from google.api_core.exceptions import NotFound, PreconditionFailed

from dagster_pipes_gcf import PipesCloudFunctionClient
from dagster_pipes_gcf.testing import (
    FakeCloudFunction,
    InMemoryStorageClient,
    UnsupportedByFake,
)


class GreetingFunction(dg.ConfigurableResource):
    url: str


@dg.asset(check_specs=[dg.AssetCheckSpec("greeting_not_empty", asset="greeting")])
def greeting(
    context: dg.AssetExecutionContext,
    cloud_function: PipesCloudFunctionClient,
    greeting_function: GreetingFunction,
) -> dg.MaterializeResult:
    return cloud_function.run(
        context=context, function_url=greeting_function.url, event={"name": "Ada"}
    ).get_materialize_result()


def greet(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    text = f"Hello, {event['name']}!"
    pipes.log.info(f"greeting {event['name']}")
    logging.getLogger("greeter").info("through Python logging")
    pipes.report_asset_materialization(metadata={"greeting": text, "length": len(text)})
    pipes.report_asset_check(
        check_name="greeting_not_empty", passed=bool(text), metadata={"length": len(text)}
    )
    return {"greeting": text}


def resources(function: FakeCloudFunction) -> dict[str, Any]:
    return {
        "cloud_function": function.pipes_client(),
        "greeting_function": GreetingFunction(url=function.url),
    }


def materialize(function: FakeCloudFunction) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [greeting], resources=resources(function), instance=instance, raise_on_error=False
        )
        return result, [entry.user_message for entry in instance.all_logs(result.run_id)]


def test_materialize_delivers_the_handlers_logs_metadata_and_check() -> None:
    function = FakeCloudFunction(greet)

    result, logs = materialize(function)

    assert result.success
    [materialization] = result.asset_materializations_for_node("greeting")
    assert materialization.metadata["greeting"] == dg.TextMetadataValue("Hello, Ada!")
    assert materialization.metadata["length"] == dg.IntMetadataValue(11)
    assert materialization.metadata["function_url"] == dg.TextMetadataValue(function.url)
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("greeting_not_empty", True)
    assert check.metadata["length"] == dg.IntMetadataValue(11)
    assert "greeting Ada" in logs
    assert "through Python logging" in logs, "the handler's logging records reach the run"
    [call] = function.calls
    assert call.event == {"name": "Ada"}, "the handler gets the event without the Pipes params"
    assert call.body["result"] == {"greeting": "Hello, Ada!"}


def test_a_directly_invoked_asset_runs_against_the_double() -> None:
    function = FakeCloudFunction(greet)

    with dg.build_asset_context(resources=resources(function)) as context:
        result = greeting(context=context)

    assert result.metadata is not None
    assert result.metadata["greeting"] == dg.TextMetadataValue("Hello, Ada!")
    [check] = result.check_results or []
    assert (check.check_name, check.passed) == ("greeting_not_empty", True)


def test_the_messages_are_the_pipes_chunk_protocol() -> None:
    function = FakeCloudFunction(greet)

    materialize(function)

    names = function.storage.object_names(function.pipes_bucket)
    assert names and all(name.startswith("dagster-pipes/") for name in names)
    prefix = names[0].rsplit("/", 1)[0]
    assert names == [f"{prefix}/{n}.json" for n in range(1, len(names) + 1)]
    methods = [
        json.loads(line)["method"]
        for name in names
        for line in function.storage.read(function.pipes_bucket, name).splitlines()
    ]
    assert methods == [
        "opened",
        "log",
        "log",
        "report_asset_materialization",
        "report_asset_check",
        "closed",
    ]


def test_a_handler_that_raises_fails_the_step_with_its_remote_error() -> None:
    def crash(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        pipes.log.info("about to fail")
        raise ValueError("no greeting today")

    function = FakeCloudFunction(crash)

    result, logs = materialize(function)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.error is not None
    message = failure.step_failure_data.error.to_string()
    assert "HTTP 500: ValueError: no greeting today" in message
    assert "remote traceback: in the run's event" in message  # shown once, there
    assert "about to fail" in logs, "lines logged before the crash still reach the run"
    assert not result.asset_materializations_for_node("greeting")


def test_a_directly_invoked_asset_whose_handler_raises_raises_the_remote_error() -> None:
    def crash(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        raise ValueError("no greeting today")

    function = FakeCloudFunction(crash)

    with (
        dg.build_asset_context(resources=resources(function)) as context,
        pytest.raises(dg.Failure, match="HTTP 500: ValueError: no greeting today"),
    ):
        greeting(context=context)


def test_a_refusal_is_a_4xx_naming_the_field_without_a_traceback() -> None:
    class RequestError(Exception):  # as gcf_pipes.RequestError carries them
        status = 400
        field = "name"

    def refuse(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        raise RequestError("name must be at most 3 characters")

    result, _ = materialize(FakeCloudFunction(refuse))

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.error is not None
    message = failure.step_failure_data.error.to_string()
    assert "HTTP 400: RequestError: name must be at most 3 characters (field: name)" in message
    assert "Remote traceback" not in message


def test_a_call_to_another_url_is_refused() -> None:
    function = FakeCloudFunction(greet)
    wrong = {**resources(function), "greeting_function": GreetingFunction(url=function.url + "x")}

    with (
        dg.build_asset_context(resources=wrong) as context,
        pytest.raises(UnsupportedByFake, match="serves"),
    ):
        greeting(context=context)
    assert not function.calls


def test_a_request_naming_another_bucket_is_refused_with_403() -> None:
    storage = InMemoryStorageClient(("fake-pipes-bucket", "other-bucket"))
    function = FakeCloudFunction(greet, storage=storage)
    client = PipesCloudFunctionClient(
        message_reader=FakeCloudFunction(
            greet, pipes_bucket="other-bucket", storage=storage
        ).message_reader(),
        invoker=function.invoker(),
    )
    other_reader = {
        "cloud_function": client,
        "greeting_function": GreetingFunction(url=function.url),
    }

    with (
        dg.build_asset_context(resources=other_reader) as context,
        pytest.raises(dg.Failure, match="HTTP 403"),
    ):
        greeting(context=context)


def test_storage_calls_the_pipes_code_does_not_make_raise() -> None:
    bucket = InMemoryStorageClient().bucket("fake-pipes-bucket")

    with pytest.raises(UnsupportedByFake, match="get_blob"):
        bucket.get_blob("x")
    with pytest.raises(UnsupportedByFake, match="if_generation_match"):
        bucket.blob("x").upload_from_string("{}", if_generation_match=7)


def test_storage_keeps_gcs_semantics_for_what_pipes_relies_on() -> None:
    storage = InMemoryStorageClient(("fake-pipes-bucket",))
    blob = storage.bucket("fake-pipes-bucket").blob("p/1.json")

    assert not blob.exists()
    with pytest.raises(NotFound, match="No such object"):
        blob.download_as_text()
    blob.upload_from_string("{}", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string("{}", if_generation_match=0)
    with pytest.raises(NotFound, match="bucket does not exist"):
        storage.bucket("another").blob("p/1.json").download_as_text()


def test_an_https_call_without_the_id_token_is_refused_with_401() -> None:
    function = FakeCloudFunction(greet)

    status, _ = function.answer(function.url, {}, b"{}")

    assert status == 401
    assert not function.calls
