"""Pipes transport through the real stack: isolation, retries, timeouts, termination, failures."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesGCSMessageWriter
from google.cloud import storage

from dagster_pipes_gcf import (
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
    PollingPolicy,
)
from devstack.net import free_port
from devstack.services import REPO_ROOT, function_command, running
from devstack.stack import LocalStack

from .conftest import TABLE, PeopleRun, fresh_lake, materialize_people, pipes_client
from .test_termination import wait_for_line as wait_for_function_line

pytestmark = pytest.mark.integration
TEST_FUNCTIONS = REPO_ROOT / "cloud_function" / "tests" / "functions"
SLOW_CALL_LINE = "slow.py: request for invocation"  # printed by functions/slow.py per request


@contextmanager
def serve(stack: LocalStack, source: str, tmp_path: Path) -> Iterator[str]:
    """Serve a test function (``cloud_function/tests/functions``) against the stack's emulator."""
    port = free_port()
    command = function_command(port, source=TEST_FUNCTIONS / source)
    env = {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.data_lake_uri,
    }
    with running(source, command, port, env=env, log_path=server_log(tmp_path, source)):
        yield f"http://127.0.0.1:{port}"


def server_log(tmp_path: Path, source: str) -> Path:
    """Where :func:`serve` keeps the output of the function server for ``source``."""
    return tmp_path / f"{source}.log"


def wait_for_line(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)


def run_event(
    stack: LocalStack, client: PipesCloudFunctionClient, function_url: str, event: dict[str, Any]
) -> PeopleRun:
    """Materialize an asset that sends ``event`` as-is (to exercise invalid input)."""

    @dg.asset(name="cloud_function_pipes_asset")
    def raw_event_asset(
        context: dg.AssetExecutionContext, pipes_function_client: PipesCloudFunctionClient
    ) -> dg.MaterializeResult[None]:
        return pipes_function_client.run(
            context=context, function_url=function_url, event=event
        ).get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [raw_event_asset],
        resources={"pipes_function_client": client},
        instance=instance,
        raise_on_error=False,
    )
    return PeopleRun(result, instance)


def test_one_client_instance_serves_consecutive_materializations(stack: LocalStack) -> None:
    client = pipes_client(stack)
    first = materialize_people(
        stack, num_rows=3, client=client, data_lake_uri=str(fresh_lake(stack))
    )
    second = materialize_people(
        stack, num_rows=4, client=client, data_lake_uri=str(fresh_lake(stack))
    )
    assert first.success and second.success
    assert any("writing 3 rows" in line for line in first.logs)
    assert any("writing 4 rows" in line for line in second.logs)
    assert not any("writing 3 rows" in line for line in second.logs)


def test_concurrent_materializations_only_see_their_own_messages(stack: LocalStack) -> None:
    client = pipes_client(stack)  # one resource instance shared by every run
    sizes = [11, 12, 13, 14, 15, 16]
    outcomes: dict[int, tuple[bool, list[str], Any]] = {}

    def materialize(n: int) -> None:
        run = materialize_people(
            stack, num_rows=n, client=client, data_lake_uri=str(fresh_lake(stack))
        )
        rows = (
            run.materializations()[0].metadata["dagster/row_count"].value if run.success else None
        )
        outcomes[n] = (run.success, run.logs, rows)
        run.instance.dispose()  # its SQLite connections belong to this thread

    threads = [threading.Thread(target=materialize, args=(n,)) for n in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == sizes
    for n, (success, logs, rows) in outcomes.items():
        assert success, n
        mine = [line for line in logs if "rows to" in line or "fake people" in line]
        assert f"generated {n} fake people" in mine, mine  # Python logging, per request
        others = [m for m in sizes if m != n]
        leaked = [line for line in mine for m in others if f" {m} " in line]
        assert not leaked, f"run {n} received another request's messages: {leaked}"
        assert rows == n


def test_a_platform_503_is_retried_and_the_work_is_done_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    lake = fresh_lake(stack)
    with serve(stack, "flaky.py", tmp_path) as url:
        run = materialize_people(stack, num_rows=9, function_url=url, data_lake_uri=str(lake))
    assert run.success, run.failure_message()
    assert any("answered HTTP 200" in line and "2 attempt(s)" in line for line in run.logs)
    assert lake.read(TABLE).height == 9


def test_a_slow_function_times_out_with_a_clear_error_and_is_not_retried(
    stack: LocalStack, tmp_path: Path
) -> None:
    client = pipes_client(stack, invocation=InvocationPolicy(timeout=1.5, attempts=3))
    with serve(stack, "slow.py", tmp_path) as url:
        started = time.monotonic()
        run = run_event(stack, client, url, {"sleep_s": 20})
        elapsed = time.monotonic() - started
    assert not run.success
    assert "did not answer within 1.5s" in run.failure_message()
    assert any("slow function started" in line for line in run.logs)
    calls = server_log(tmp_path, "slow.py").read_text().count(SLOW_CALL_LINE)
    assert calls == 1, f"a read timeout must not be retried: the server got {calls} requests"
    assert elapsed < 15, f"read timeouts must not be retried (took {elapsed:.1f}s)"


def test_a_call_that_times_out_is_cancelled_and_commits_nothing_afterwards(
    stack: LocalStack,
) -> None:
    lake = fresh_lake(stack)
    assert materialize_people(stack, data_lake_uri=str(lake)).success
    version_before = lake.version(TABLE)
    rows = 4_000_000  # the function works for many seconds: far longer than the timeout
    client = pipes_client(stack, invocation=InvocationPolicy(timeout=2.0, attempts=3))

    run = materialize_people(stack, data_lake_uri=str(lake), client=client, num_rows=rows)

    assert not run.success and "did not answer within 2s" in run.failure_message()
    (asked,) = [line for line in run.logs if "may still be working" in line]
    assert "asked the function to cancel (gs://" in asked, asked
    answer = wait_for_function_line(stack, run.result.run_id, "answered HTTP", timeout=60)
    assert answer.startswith("answered HTTP 409"), answer
    time.sleep(1)  # the request has ended; look again a little later all the same
    assert lake.version(TABLE) == version_before


def test_invalid_input_fails_with_the_http_status_and_the_field(stack: LocalStack) -> None:
    run = run_event(stack, pipes_client(stack), stack.function_url, {"num_rows": "many"})
    assert not run.success
    message = run.failure_message()
    assert "HTTP 400" in message and "num_rows" in message


def test_an_unreachable_function_fails_after_the_configured_attempts(stack: LocalStack) -> None:
    client = pipes_client(stack, invocation=InvocationPolicy(attempts=2, initial_backoff=0.05))
    run = run_event(stack, client, f"http://127.0.0.1:{free_port()}", {})
    assert not run.success
    assert "could not reach the Cloud Function" in run.failure_message()
    assert "after 2 attempt(s)" in run.failure_message()


def test_a_reader_bucket_that_is_not_the_functions_pipes_bucket_is_http_403(
    stack: LocalStack,
) -> None:
    client = PipesCloudFunctionClient(
        message_reader=PipesCloudStorageMessageReader(
            bucket="no-such-bucket", polling=PollingPolicy(drain_timeout=2)
        )
    )
    run = materialize_people(stack, client=client, data_lake_uri=str(fresh_lake(stack)))
    assert not run.success
    message = run.failure_message()
    assert "HTTP 403" in message and "DAGSTER_PIPES_MESSAGES.bucket" in message


def test_reads_chunks_the_stock_gcs_writer_puts_in_the_emulator(stack: LocalStack) -> None:
    reader = PipesCloudStorageMessageReader(
        bucket=stack.pipes_bucket, polling=PollingPolicy(min_interval=0.02, drain_timeout=10)
    )
    received: list[dict[str, Any]] = []

    class Recorder:
        def handle_message(self, message: dict[str, Any]) -> None:
            received.append(message)

    with reader.read_messages(Recorder()) as params:  # type: ignore[arg-type]
        with PipesGCSMessageWriter(storage.Client(), interval=0.1).open(params) as channel:
            for message in ({"method": "opened", "params": {}},
                            {"method": "log", "params": {"message": "stock", "level": "INFO"}},
                            {"method": "closed", "params": {}}):  # fmt: skip
                channel.write_message({"__dagster_pipes_version": "0.1", **message})  # type: ignore[typeddict-item]
    assert [m["method"] for m in received] == ["opened", "log", "closed"]


def test_a_gap_in_the_chunks_in_the_emulator_fails_naming_the_missing_chunk(
    stack: LocalStack,
) -> None:
    reader = PipesCloudStorageMessageReader(
        bucket=stack.pipes_bucket, polling=PollingPolicy(min_interval=0.02, drain_timeout=1)
    )
    received: list[str] = []

    class Recorder:
        def handle_message(self, message: dict[str, Any]) -> None:
            received.append(message["method"])

    bucket = storage.Client().bucket(stack.pipes_bucket)
    with pytest.raises(DagsterPipesExecutionError) as failure:
        with reader.read_messages(Recorder()) as params:  # type: ignore[arg-type]
            for index, method in [(1, "opened"), (3, "closed")]:  # chunk 2 never written
                line = json.dumps({"__dagster_pipes_version": "0.1", "method": method})
                bucket.blob(f"{params['key_prefix']}/{index}.json").upload_from_string(line)
    assert "chunk 2 is missing while chunk(s) [3] exist" in str(failure.value)
    assert received == ["opened"]


TERMINATION_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import dagster as dg
    from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader

    url, bucket = sys.argv[1], sys.argv[2]

    @dg.asset
    def slow(context: dg.AssetExecutionContext, client: PipesCloudFunctionClient):
        invocation = client.run(context=context, function_url=url, event={"sleep_s": 60})
        return invocation.get_materialize_result()

    print("starting", flush=True)
    started = time.monotonic()
    try:
        dg.materialize([slow], resources={"client": PipesCloudFunctionClient(
            message_reader=PipesCloudStorageMessageReader(bucket=bucket))}, raise_on_error=False)
    finally:
        print(json.dumps({"elapsed": time.monotonic() - started}), flush=True)
    """
)


def test_terminating_the_run_stops_waiting_promptly(stack: LocalStack, tmp_path: Path) -> None:
    script = tmp_path / "terminate.py"
    script.write_text(TERMINATION_SCRIPT)
    with serve(stack, "slow.py", tmp_path) as url:
        process = subprocess.Popen(
            [sys.executable, str(script), url, stack.pipes_bucket],
            env={**os.environ, "STORAGE_EMULATOR_HOST": stack.emulator_url,
                 "DAGSTER_HOME": str(tmp_path)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_for_line(server_log(tmp_path, "slow.py"), SLOW_CALL_LINE)
        time.sleep(2)  # the client now waits for the answer, its log line read (function: 60 s)
        assert process.poll() is None, process.communicate()[0][-3000:]
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        stopped_after = time.monotonic() - sent
    assert stopped_after < 10, f"took {stopped_after:.1f}s to stop:\n{output[-3000:]}"
    assert "slow function started" in output, output[-3000:]
    assert json.loads(output.strip().splitlines()[-1])["elapsed"] < 20


BACKLOG_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import dagster as dg
    from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader

    url, bucket, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])

    @dg.asset
    def flood(context: dg.AssetExecutionContext, client: PipesCloudFunctionClient):
        event = {"lines": lines, "sleep_s": 60}
        return client.run(context=context, function_url=url, event=event).get_results()

    # One event per line (no coalescing) on the SQLite event log: a backlog of many seconds.
    reader = PipesCloudStorageMessageReader(bucket=bucket, log_coalescing=None)
    instance = dg.DagsterInstance.get()
    try:
        result = dg.materialize([flood], resources={"client": PipesCloudFunctionClient(
            message_reader=reader)}, instance=instance, raise_on_error=False)
    finally:
        ended = time.monotonic()  # CLOCK_MONOTONIC: comparable with the test's clock
    delivered = sum("flood line" in (e.user_message or "") for e in instance.all_logs(
        result.run_id))
    print(json.dumps({"ended": ended, "delivered": delivered}), flush=True)
    """
)


def test_a_terminated_run_with_a_backlog_of_messages_ends_within_two_seconds(
    stack: LocalStack, tmp_path: Path
) -> None:
    script, lines = tmp_path / "backlog.py", 10_000
    script.write_text(BACKLOG_SCRIPT)
    with serve(stack, "flood.py", tmp_path) as url:
        process = subprocess.Popen(
            [sys.executable, str(script), url, stack.pipes_bucket, str(lines)],
            env={**os.environ, "STORAGE_EMULATOR_HOST": stack.emulator_url,
                 "DAGSTER_HOME": str(tmp_path)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_for_line(server_log(tmp_path, "flood.py"), "flood.py: every line is in the Pipes")
        time.sleep(1)  # the reader is busy delivering the backlog
        assert process.poll() is None, process.communicate()[0][-3000:]
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    report = json.loads(output.strip().splitlines()[-1])
    assert report["ended"] - sent < 2.0, f"ended {report['ended'] - sent:.2f}s after the signal"
    assert 0 < report["delivered"] < lines, report  # a backlog was there, and was left
