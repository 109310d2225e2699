"""Dagster's own GCS message reader (dagster-gcp) against the real function server.

``PipesGCSMessageReader`` always sends ``include_stdio_in_messages`` in its params. A step
that uses it with the inline context injector posts ``session.get_bootstrap_env_vars()`` as
Dagster builds them; the reader then collects the function's messages from the emulator.
Wrapped in ``PipesSharedLocationReader``, it serves ``PipesCloudFunctionClient`` too.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import deltalake  # noqa: F401 - before polars (people_lake.checks)
import pytest
import requests
from dagster_gcp.pipes import PipesGCSMessageReader
from dagster_pipes import DAGSTER_PIPES_MESSAGES_ENV_VAR, decode_param
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from dagster_pipes_gcf import (
    PipesCloudFunctionClient,
    PipesCloudFunctionEventContextInjector,
    PipesSharedLocationReader,
)
from devstack.stack import LocalStack, local_stack
from people_lake.checks import CHECK_NAMES

pytestmark = pytest.mark.integration

PIPES_BUCKET = "stock-reader-pipes"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory.mktemp("stock"), pipes_bucket=PIPES_BUCKET) as running:
        yield running


def emulator_client(stack: LocalStack) -> storage.Client:
    return storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.emulator_url},
    )


def stock_reader(stack: LocalStack, include_stdio: bool = False) -> PipesGCSMessageReader:
    return PipesGCSMessageReader(
        bucket=PIPES_BUCKET,
        client=emulator_client(stack),
        include_stdio_in_messages=include_stdio,
        interval=0.2,
    )


def stock_asset(stack: LocalStack, include_stdio: bool, sent: list[dict[str, Any]]) -> Any:
    """The people asset as a user of the stock integration writes it: one POST, no retries."""

    @dg.asset(check_specs=[dg.AssetCheckSpec(name, asset="people") for name in CHECK_NAMES])
    def people(context: dg.AssetExecutionContext) -> Iterator[Any]:
        lake = stack.fresh_lake()
        reader = stock_reader(stack, include_stdio)
        with dg.open_pipes_session(
            context=context,
            context_injector=PipesCloudFunctionEventContextInjector(),
            message_reader=reader,
        ) as session:
            body = {**session.get_bootstrap_env_vars(), "num_rows": 5, "dl_bucket": str(lake)}
            sent.append(body)
            answer = requests.post(stack.function_url, json=body, timeout=120)
            assert answer.status_code == 200, answer.text
        yield from session.get_results()

    return people


@pytest.mark.parametrize("include_stdio", [False, True])
def test_the_stock_gcs_reader_materializes_through_the_function(
    stack: LocalStack, include_stdio: bool
) -> None:
    sent: list[dict[str, Any]] = []
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [stock_asset(stack, include_stdio, sent)], instance=instance, raise_on_error=False
    )

    messages_params = decode_param(sent[0][DAGSTER_PIPES_MESSAGES_ENV_VAR])
    assert messages_params["include_stdio_in_messages"] is include_stdio  # the stock key
    assert result.success, [e.message for e in result.all_events if e.is_step_failure]
    [materialization] = result.asset_materializations_for_node("people")
    assert materialization.metadata["dagster/row_count"].value == 5
    checks = result.get_asset_check_evaluations()
    assert sorted(c.check_name for c in checks) == sorted(CHECK_NAMES)
    assert all(check.passed for check in checks)
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("rows streamed to Delta" in line for line in logs), logs


def test_the_function_client_materializes_through_the_wrapped_stock_reader(
    stack: LocalStack,
) -> None:
    client = PipesCloudFunctionClient(PipesSharedLocationReader(stock_reader(stack)))

    @dg.asset(check_specs=[dg.AssetCheckSpec(name, asset="people") for name in CHECK_NAMES])
    def people(context: dg.AssetExecutionContext) -> Iterator[Any]:
        event = {"num_rows": 5, "dl_bucket": str(stack.fresh_lake())}
        yield from client.run(
            context=context, function_url=stack.function_url, event=event
        ).get_results()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([people], instance=instance, raise_on_error=False)

    assert result.success, [e.message for e in result.all_events if e.is_step_failure]
    [materialization] = result.asset_materializations_for_node("people")
    assert materialization.metadata["dagster/row_count"].value == 5
    assert materialization.metadata["http_attempts"].value == 1
    checks = result.get_asset_check_evaluations()
    assert sorted(c.check_name for c in checks) == sorted(CHECK_NAMES)
    assert all(check.passed for check in checks)
