"""Faults of the store while Dagster materializes through the real stack: the function and
the Dagster side both reach GCS through the fault proxy (devstack/fault_proxy.py), and the
lake is ``gs://`` in the emulator. One fault of any request class is absorbed: the run
succeeds with one materialization and the table holds one commit of its rows."""

import uuid
from collections.abc import Iterator
from typing import Any

import deltalake  # before polars (crash at exit otherwise)
import polars as pl
import pytest
import requests

from devstack.fault_proxy import FaultProxy, running_proxy
from devstack.net import free_port
from devstack.services import function_command, running
from devstack.stack import LocalStack, local_stack
from people_lake.storage import storage_options_for

from .conftest import materialize_people

pytestmark = pytest.mark.integration
ROWS = 25
TABLE = "cloud_function_pipes_asset"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """This module's own stack, with the ``gs://`` lake as the function's default."""
    with local_stack(tmp_path_factory.mktemp("faults-stack"), gs_lake=True) as running_stack:
        yield running_stack


@pytest.fixture(scope="module")
def proxy(stack: LocalStack) -> Iterator[FaultProxy]:
    with running_proxy(stack.emulator_url) as server:
        yield server


@pytest.fixture(autouse=True)
def emulator_env(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The Dagster side (this process) reads its messages through the proxy too."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    requests.delete(f"{proxy.url}/_faults", timeout=10).raise_for_status()
    yield
    requests.delete(f"{proxy.url}/_faults", timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def function_url(
    stack: LocalStack, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The people function with the proxy as its GCS endpoint."""
    port = free_port()
    env = {
        "STORAGE_EMULATOR_HOST": proxy.url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.gs_lake_uri,
        "ALLOWED_DATA_LAKE_ROOTS": stack.gs_lake_uri,
    }
    log = tmp_path_factory.mktemp("faulty-function") / "function.log"
    with running("faulty function", function_command(port), port, env=env, log_path=log):
        yield f"http://127.0.0.1:{port}"


def data_commits(stack: LocalStack, table: str) -> tuple[list[int], int]:
    options = storage_options_for(stack.gs_lake_uri, stack.emulator_url)
    delta = deltalake.DeltaTable(table, storage_options=options)
    commits = [c["version"] for c in delta.history() if c["operation"] != "CREATE TABLE"]
    return sorted(commits), pl.read_delta(table, storage_options=options).height


@pytest.mark.parametrize(
    "fault",
    [
        {"class": "chunk_upload", "fault": "reset_after_upstream"},
        {"class": "cancel_read", "fault": "503"},
        {"class": "data_upload", "fault": "reset"},
        {"class": "commit", "fault": "reset_after_upstream", "after": 1},
        {"class": "list", "fault": "429"},
    ],
    ids=lambda fault: f"{fault['class']}-{fault['fault']}",
)
def test_a_fault_of_any_request_class_still_materializes_once(
    stack: LocalStack, proxy: FaultProxy, function_url: str, fault: dict[str, Any]
) -> None:
    requests.post(f"{proxy.url}/_faults", json=fault, timeout=10).raise_for_status()
    lake = f"{stack.gs_lake_uri}/{uuid.uuid4().hex[:8]}"

    run = materialize_people(stack, function_url=function_url, data_lake_uri=lake, num_rows=ROWS)

    injected = requests.get(f"{proxy.url}/_faults", timeout=10).json()["injected"]
    assert injected == {f"{fault['class']}:{fault['fault']}": 1}
    assert run.success, run.logs
    (materialization,) = run.materializations()
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == ROWS
    assert metadata["repeated_invocation"].value is False
    commits, rows = data_commits(stack, f"{lake}/{TABLE}")
    assert commits == [metadata["delta_version"].value] and rows == ROWS
