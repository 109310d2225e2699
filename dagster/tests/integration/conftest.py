"""Fixtures that run the real local stack: GCS emulator and function server processes."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import dagster as dg
import pytest

from dagster_pipes_gcf import (
    CloudFunctionInvoker,
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
    PollingPolicy,
)
from devstack.lakes import Lake
from devstack.stack import LocalStack, local_stack
from gcf_demo.defs.assets import cloud_function_pipes_asset
from gcf_demo.defs.resources import PeopleFunction

T = TypeVar("T")

TEST_POLLING = PollingPolicy(drain_timeout=10.0)
TABLE = "cloud_function_pipes_asset"  # the demo asset's table


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack of every test here: its default lake is ``gs://`` in the emulator (as in the
    cloud); a directory lake is as allowed (``fresh_lake(stack, "directory")``)."""
    with local_stack(tmp_path_factory.mktemp("stack")) as running_stack:
        yield running_stack


@pytest.fixture(autouse=True)
def emulator_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dagster side (this process) talks to the same emulator as the function."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.emulator_url)


def wait_until(
    probe: Callable[[], T | None], timeout: float, failure: str, interval: float = 0.1
) -> T:
    """What ``probe`` returns once it is truthy; ``AssertionError: <failure> within <timeout> s``
    when it is not by then (one last look at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{failure} within {timeout:g} s")
        time.sleep(interval)


def pipes_client(
    stack: LocalStack,
    polling: PollingPolicy = TEST_POLLING,
    invocation: InvocationPolicy | None = None,
) -> PipesCloudFunctionClient:
    return PipesCloudFunctionClient(
        message_reader=PipesCloudStorageMessageReader(bucket=stack.pipes_bucket, polling=polling),
        invoker=CloudFunctionInvoker(
            policy=invocation or InvocationPolicy(attempts=2, initial_backoff=0.1)
        ),
    )


@dataclass
class PeopleRun:
    """A finished materialization and the instance whose event log holds it."""

    result: dg.ExecuteInProcessResult
    instance: dg.DagsterInstance

    @property
    def success(self) -> bool:
        return self.result.success

    @property
    def logs(self) -> list[str]:
        """Every log line of the run as Dagster's event log stored it."""
        return [entry.user_message for entry in self.instance.all_logs(self.result.run_id)]

    def materializations(self) -> list[dg.AssetMaterialization]:
        return self.result.asset_materializations_for_node("cloud_function_pipes_asset")

    def failure_message(self) -> str:
        failures = [e for e in self.result.all_events if e.is_step_failure]
        assert failures, "the step did not fail"
        error = failures[0].step_failure_data.error
        assert error is not None
        return error.to_string()


def materialize_people(
    stack: LocalStack,
    *,
    asset: dg.AssetsDefinition = cloud_function_pipes_asset,
    function_url: str | None = None,
    data_lake_uri: str | Lake | None = None,
    client: PipesCloudFunctionClient | None = None,
    partition_key: str | None = None,
    **config: Any,
) -> PeopleRun:
    """Materialize ``asset`` against the stack; ``config`` is its op config (num_rows: 25)."""
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [asset],
        resources={
            "pipes_function_client": client or pipes_client(stack),
            "people_function": PeopleFunction(
                function_url=function_url or stack.function_url,
                data_lake_uri=str(data_lake_uri or stack.data_lake_uri),
            ),
        },
        run_config={"ops": {asset.op.name: {"config": {"num_rows": 25, **config}}}},
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
    )
    return PeopleRun(result, instance)


def fresh_lake(stack: LocalStack, kind: Literal["gs", "directory"] | None = None) -> Lake:
    """A new, empty lake root: ``gs://`` in the emulator (the stack's default), or ``kind``."""
    return stack.fresh_lake(kind)


def directory_lake(stack: LocalStack) -> Path:
    """A new, empty directory lake root (for tests that run on a directory lake only)."""
    return Path(stack.fresh_lake("directory").uri)


def table_dir(stack: LocalStack, lake: str | Lake | None = None) -> str:
    """The URI of the demo asset's table in ``lake`` (the stack's default lake without one)."""
    return f"{lake or stack.data_lake_uri}/cloud_function_pipes_asset"
