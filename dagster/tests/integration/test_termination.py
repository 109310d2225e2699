"""Terminating a run reaches the function: the real stack, terminated as the UI does it.

``dagster dev`` (webserver, daemon, code server, a run worker per run) on the local stack: a
large materialization is launched over GraphQL, terminated over GraphQL once the function has
streamed a batch, and then the run must be CANCELED within 5 s, the function must have
answered 409 ("cancelled"), and the Delta table's version must not move afterwards.
"""

import json
import time
from pathlib import Path
from typing import Any

import pytest
from google.cloud import storage

from devstack.dagster_api import DagsterApi, dagster_dev
from devstack.lakes import Lake
from devstack.stack import LocalStack

from .conftest import fresh_lake

ASSET = "cloud_function_pipes_asset"
ROWS = 4_000_000  # many batches: the function works for several seconds
CANCELED_WITHIN_S = 5.0

TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId, terminatePolicy: SAFE_TERMINATE) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}"""


def function_lines(stack: LocalStack, run_id: str) -> list[str]:
    """The function's structured log lines (stdout) labelled with ``run_id``."""
    lines = []
    for raw in stack.function_log().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        labels = entry.get("logging.googleapis.com/labels") or {}
        if isinstance(entry, dict) and labels.get("dagster_run_id") == run_id:
            lines.append(str(entry.get("message")))
    return lines


def wait_for_line(stack: LocalStack, run_id: str, start: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in function_lines(stack, run_id) if line.startswith(start)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(
        f"the function never logged {start!r} for run {run_id}: {function_lines(stack, run_id)}"
    )


def wait_for_status(api: DagsterApi, run_id: str, status: str, timeout: float) -> float:
    """Seconds until the run had ``status`` (as the UI would show it)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        (run,) = api.runs(runIds=[run_id])
        if run.status == status:
            return time.monotonic() - started
        time.sleep(0.05)
    (run,) = api.runs(runIds=[run_id])
    raise AssertionError(f"run {run_id} is {run.status}, not {status}, after {timeout:g} s")


def delta_version(lake: Lake) -> int | None:
    return lake.version(ASSET)


@pytest.fixture
def dagster(stack: LocalStack, tmp_path: Path) -> Any:
    lake = fresh_lake(stack)
    with dagster_dev(stack, tmp_path, extra_env={"DATA_LAKE_URI": str(lake)}) as api:
        yield api, lake


def test_a_terminated_run_is_canceled_at_once_and_the_function_commits_nothing(
    stack: LocalStack, dagster: tuple[DagsterApi, Lake]
) -> None:
    api, lake = dagster
    run_id = api.launch_run(ASSET, run_config={"ops": {ASSET: {"config": {"num_rows": ROWS}}}})
    wait_for_line(stack, run_id, "batch 1:", timeout=120)
    version_before = delta_version(lake)  # the table was created empty before batch 1

    result = api.query(TERMINATE, runId=run_id)["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    canceled_after = wait_for_status(api, run_id, "CANCELED", timeout=30)

    assert canceled_after <= CANCELED_WITHIN_S, f"CANCELED only {canceled_after:.1f} s after"
    answer = wait_for_line(stack, run_id, "answered HTTP", timeout=30)
    assert answer.startswith("answered HTTP 409"), function_lines(stack, run_id)
    last_batch = [line for line in function_lines(stack, run_id) if line.startswith("batch ")][-1]
    assert f" of {ROWS} rows" in last_batch and f": {ROWS} of" not in last_batch, last_batch
    # The request has ended (it answered), so nothing of it can commit any more; look again
    # a little later all the same.
    time.sleep(2)
    assert delta_version(lake) == version_before

    messages = api.run_messages(run_id)
    (forwarded,) = [m for m in messages if "run terminated while the function was working" in m]
    assert "asked the function to cancel (gs://" in forwarded, forwarded
    marker = forwarded.split("(gs://", 1)[1].rstrip(")").split("/", 1)
    bucket = storage.Client(project="test").bucket(marker[0])
    assert marker[1].endswith("/cancel") and bucket.blob(marker[1]).exists()
