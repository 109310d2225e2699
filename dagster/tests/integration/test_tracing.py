"""Through the real stack: the trace id Dagster records is the one on the function's log lines."""

import json
from typing import Any

import pytest

from devstack.stack import LocalStack

from .conftest import fresh_lake, materialize_people

pytestmark = pytest.mark.integration
TRACE_KEY = "logging.googleapis.com/trace"
LABELS_KEY = "logging.googleapis.com/labels"


def structured_lines(stack: LocalStack) -> list[dict[str, Any]]:
    entries = []
    for line in stack.function_log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_the_materialization_names_the_trace_of_the_function_s_log_lines(
    stack: LocalStack,
) -> None:
    run = materialize_people(stack, num_rows=7, data_lake_uri=str(fresh_lake(stack)))

    assert run.success
    metadata = run.materializations()[0].metadata
    trace_id = metadata["trace_id"].value
    assert "cloud_logging_url" not in metadata, "a local function has no Cloud Logging"
    lines = [e for e in structured_lines(stack) if e.get(TRACE_KEY) == trace_id]
    messages = [line["message"] for line in lines]
    assert messages[0] == "request received"
    assert any("writing 7 rows" in message for message in messages), messages
    assert messages[-1].startswith("answered HTTP 200")
    for line in lines:
        assert line[LABELS_KEY] == {
            "dagster_run_id": run.result.run_id,
            "dagster_asset_key": "cloud_function_pipes_asset",
            "dagster_invocation_id": metadata["invocation_id"].value,
        }
    assert any(f"trace {trace_id}" in log for log in run.logs), "the run's log names the trace"


def test_a_refused_call_fails_with_the_trace_of_the_function_s_log_lines(
    stack: LocalStack,
) -> None:
    run = materialize_people(stack, num_rows=0, data_lake_uri=str(fresh_lake(stack)))

    assert not run.success
    failures = [event for event in run.result.all_events if event.is_step_failure]
    user_failure = failures[0].step_failure_data.user_failure_data
    assert user_failure is not None, "the failure carries metadata"
    trace_id = user_failure.metadata["trace_id"].value
    lines = [e for e in structured_lines(stack) if e.get(TRACE_KEY) == trace_id]
    assert lines and lines[0]["message"] == "request received"
    assert lines[-1]["message"].startswith("answered HTTP 400")
    assert lines[-1]["severity"] == "WARNING"
