"""Retries through the real stack: lost answers after the work was done, attempt-scoped
messages, one Delta commit per invocation, and one invocation id per ``run()`` call."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from google.cloud import storage

from dagster_pipes_gcf import InvocationPolicy, PipesCloudFunctionClient
from devstack.lakes import Lake
from devstack.net import free_port
from devstack.services import REPO_ROOT, function_command, running
from devstack.stack import LocalStack
from gcf_demo.defs.assets import CHECKS

from .conftest import TABLE, PeopleRun, fresh_lake, materialize_people, pipes_client

pytestmark = pytest.mark.integration
ANSWER_LOST = REPO_ROOT / "cloud_function" / "tests" / "functions" / "answer_lost.py"
CALL_LINE = "answer_lost.py: request for invocation"  # printed per request by the double


@dataclass(frozen=True)
class Served:
    url: str
    log: Path

    def calls(self) -> int:
        return self.log.read_text(errors="replace").count(CALL_LINE)


@pytest.fixture(scope="module")
def answer_lost(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``answer_lost.py`` served against the stack's emulator and lake (one server for the
    module: it loses the first answer of each invocation id, and every run has new ids)."""
    port = free_port()
    served = Served(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("answer_lost") / "log")
    env = {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.data_lake_uri,
    }
    command = function_command(port, source=ANSWER_LOST)
    with running("answer_lost", command, port, env=env, log_path=served.log):
        yield served


def data_commits(lake: Lake) -> list[int]:
    """Versions of the commits that wrote rows (not the creation of the empty table)."""
    history = lake.delta(TABLE).history()
    return sorted(h["version"] for h in history if h["operation"] != "CREATE TABLE")


def run_with_lost_answer(
    stack: LocalStack, served: Served, how: str, *, retry_ambiguous: bool
) -> tuple[PeopleRun, Lake, int]:
    """Materialize 9 rows, the first answer lost ``how``: the run, its lake, calls served."""
    lake = fresh_lake(stack)
    policy = InvocationPolicy(attempts=3, initial_backoff=0.1, retry_ambiguous=retry_ambiguous)
    calls_before = served.calls()
    run = materialize_people(
        stack,
        num_rows=9,
        client=pipes_client(stack, invocation=policy),
        function_url=f"{served.url}/{how}",
        data_lake_uri=lake,
    )
    return run, lake, served.calls() - calls_before


LOST_ANSWERS = {
    "drop_connection": "connection lost after the request was sent",
    "bare_500": "HTTP 500 without an answer from the handler",
    "bare_503": "HTTP 503 without an answer from the handler after the handler had started",
}


@pytest.mark.parametrize("how", LOST_ANSWERS)
def test_with_the_opt_in_a_lost_answer_is_retried_and_committed_once(
    stack: LocalStack, answer_lost: Served, how: str
) -> None:
    run, table, calls = run_with_lost_answer(stack, answer_lost, how, retry_ambiguous=True)

    assert run.success, run.failure_message()
    assert calls == 2
    (version,) = data_commits(table)  # the retry of a committed invocation wrote nothing
    assert pl_height(table) == 9
    (materialization,) = run.materializations()
    metadata = materialization.metadata
    # The answering attempt's results only: attempt 2 found the commit of attempt 1.
    assert metadata["repeated_invocation"].value is True
    assert metadata["delta_version"].value == version
    assert metadata["http_attempts"].value == 2
    checks = run.result.get_asset_check_evaluations()
    assert sorted(c.check_name for c in checks) == sorted(CHECKS)
    # The client's call metadata belongs to the materialization, not to the checks.
    assert {"function_url", "invocation_id", "function_call_s"} <= set(metadata)
    assert not any({"function_url", "function_call_s"} & set(c.metadata) for c in checks)
    abandoned = [line for line in run.logs if "attempt 1 abandoned" in line]
    assert len(abandoned) == 1 and LOST_ANSWERS[how] in abandoned[0], run.logs
    assert "following attempt 2 under" in abandoned[0] and abandoned[0].endswith("/2")
    # Before the retry, attempt 1 was asked to stop in case it was still working.
    (asked,) = [line for line in run.logs if "asked the function to cancel" in line]
    marker = re.search(r"\(gs://([^/]+)/(\S+/1/cancel)\)", asked)
    assert marker and marker.group(1) == stack.pipes_bucket, asked
    blob = storage.Client(project="local").bucket(marker.group(1)).blob(marker.group(2))
    reason = json.loads(blob.download_as_text())
    assert reason["invocation_id"] == metadata["invocation_id"].value
    assert reason["reason"].startswith("attempt 1 abandoned")


@pytest.mark.parametrize("how", LOST_ANSWERS)
def test_without_the_opt_in_a_lost_answer_fails_naming_the_ambiguity(
    stack: LocalStack, answer_lost: Served, how: str
) -> None:
    run, table, calls = run_with_lost_answer(stack, answer_lost, how, retry_ambiguous=False)

    assert not run.success
    message = run.failure_message()
    assert "ambiguous outcome" in message and LOST_ANSWERS[how] in message
    assert "InvocationPolicy(retry_ambiguous=True)" in message
    assert calls == 1
    assert len(data_commits(table)) == 1  # done once; the step says it cannot tell


def test_two_run_calls_in_one_step_are_two_invocations_that_both_write(
    stack: LocalStack,
) -> None:
    lake = fresh_lake(stack)

    @dg.asset(name="cloud_function_pipes_asset")
    def two_batches(
        context: dg.AssetExecutionContext, pipes_function_client: PipesCloudFunctionClient
    ) -> dg.MaterializeResult[None]:
        ids, versions = [], []
        for rows in (3, 4):
            call = pipes_function_client.run(
                context=context,
                function_url=stack.function_url,
                event={"dl_bucket": str(lake), "num_rows": rows},
            )
            (result,) = [r for r in call.get_results() if isinstance(r, dg.MaterializeResult)]
            metadata = result.metadata or {}
            assert metadata["repeated_invocation"].value is False  # type: ignore[union-attr]
            ids.append(call.metadata["invocation_id"].value)
            versions.append(metadata["delta_version"].value)  # type: ignore[union-attr]
        return dg.MaterializeResult(metadata={"ids": ids, "versions": versions})

    result = dg.materialize(
        [two_batches],
        resources={"pipes_function_client": pipes_client(stack)},
        instance=dg.DagsterInstance.ephemeral(),
    )
    (materialization,) = result.asset_materializations_for_node("cloud_function_pipes_asset")
    ids = materialization.metadata["ids"].value
    assert len(set(ids)) == 2, ids
    assert materialization.metadata["versions"].value == data_commits(lake)
    assert len(data_commits(lake)) == 2 and pl_height(lake) == 7


def pl_height(lake: Lake) -> int:
    return lake.read(TABLE).height
