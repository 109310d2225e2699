"""Faults of the store on demand, through the real local stack: the function
(functions-framework) writes its Pipes chunks and a ``gs://`` Delta table through the fault
proxy (devstack/fault_proxy.py) in front of the XML-API adapter and fake-gcs-server.

Whatever fails (a 503, a 429, a connection reset after the request was sent, a stall), a run
ends in exactly one commit with every Pipes message delivered, or in a clear error that
committed nothing: never a silent loss, never a second commit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltalake  # before polars (crash at exit otherwise)
import polars as pl
import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.fault_proxy import FaultProxy, running_proxy
from devstack.net import free_port
from devstack.services import function_command, running
from devstack.stack import LocalStack, local_stack
from gcf_pipes.writer import chunk_key
from people_lake.storage import storage_options_for

PIPES_BUCKET = "pipes-faults-test"
ROWS = 25

pytestmark = pytest.mark.integration


@dataclass
class FaultyFunction:
    """A function server whose GCS endpoint is the fault proxy."""

    url: str
    process: Any  # subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory.mktemp("faults"), pipes_bucket=PIPES_BUCKET,
                     gs_lake=True) as running_stack:  # fmt: skip
        yield running_stack


@pytest.fixture(scope="module")
def proxy(stack: LocalStack) -> Iterator[FaultProxy]:
    """The fault proxy in front of the stack's GCS endpoint, served from a thread here."""
    with running_proxy(stack.emulator_url) as server:
        yield server


@pytest.fixture(autouse=True)
def no_faults_left(proxy: FaultProxy) -> Iterator[None]:
    control(proxy, "DELETE")
    yield
    control(proxy, "DELETE")


@contextmanager
def faulty_function(stack: LocalStack, proxy: FaultProxy, log: Path) -> Iterator[FaultyFunction]:
    """The people function served with the fault proxy as its GCS endpoint."""
    port = free_port()
    env = {
        "STORAGE_EMULATOR_HOST": proxy.url,
        "PIPES_BUCKET": PIPES_BUCKET,
        "DATA_LAKE_URI": stack.gs_lake_uri,
        "ALLOWED_DATA_LAKE_ROOTS": stack.gs_lake_uri,
        "THREADS": "4",
    }
    with running("faulty function", function_command(port), port, env=env, log_path=log) as process:
        yield FaultyFunction(f"http://127.0.0.1:{port}", process, log)


@pytest.fixture(scope="module")
def function(
    stack: LocalStack, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultyFunction]:
    log = tmp_path_factory.mktemp("faulty-function") / "function.log"
    with faulty_function(stack, proxy, log) as served:
        yield served


def control(proxy: FaultProxy, method: str, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call the proxy's control endpoint (``/_faults``) as a test would over HTTP."""
    answer = requests.request(method, f"{proxy.url}/_faults", json=fault, timeout=10)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def request_body(lake: str, invocation_id: str | None, key_prefix: str) -> dict[str, Any]:
    context = {
        "asset_keys": ["people"],
        "code_version_by_asset_key": {"people": None},
        "provenance_by_asset_key": {"people": None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "faults-run",
        "job_name": "faults_job",
        "retry_number": 0,
        "extras": {"invocation_id": invocation_id} if invocation_id else {},
    }
    return {
        "dl_bucket": lake,
        "num_rows": ROWS,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": PIPES_BUCKET, "key_prefix": key_prefix}
        ),
    }


@dataclass
class Invocation:
    """One request for ``ROWS`` people into a new ``gs://`` lake."""

    lake: str
    invocation_id: str | None  # None: a caller that sends none (writes are not deduplicated)
    key_prefix: str

    @classmethod
    def new(cls, stack: LocalStack) -> Invocation:
        run = uuid.uuid4().hex
        return cls(f"{stack.gs_lake_uri}/{run[:8]}", run, f"runs/{run}/1")

    @property
    def table(self) -> str:
        return f"{self.lake}/people"

    def send(self, function: FaultyFunction, timeout: float = 120) -> requests.Response:
        body = request_body(self.lake, self.invocation_id, self.key_prefix)
        return requests.post(function.url, json=body, timeout=timeout)


def gcs(stack: LocalStack) -> storage.Client:
    """A client of the stack's GCS endpoint itself (no faults on what the test reads)."""
    return storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.emulator_url},
    )


def pipes_messages(stack: LocalStack, key_prefix: str) -> list[dict[str, Any]]:
    """Every message under ``key_prefix``, chunk 1, 2, ... in order; no chunk after a gap."""
    bucket = gcs(stack).bucket(PIPES_BUCKET)
    names = {blob.name for blob in bucket.list_blobs(prefix=f"{key_prefix}/")}
    found: list[dict[str, Any]] = []
    index = 1
    while (key := chunk_key(key_prefix, index)) in names:
        found.extend(json.loads(line) for line in bucket.blob(key).download_as_text().splitlines())
        names.discard(key)
        index += 1
    assert not names - {f"{key_prefix}/cancel"}, f"chunks after a gap: {sorted(names)}"
    return found


def options(stack: LocalStack) -> dict[str, str]:
    found = storage_options_for(stack.gs_lake_uri, stack.emulator_url)
    assert found is not None
    return found


def table_state(stack: LocalStack, table: str) -> tuple[int, list[int], int]:
    """The table's version, the versions of its data commits, and its rows (-1, [], 0: none)."""
    if not deltalake.DeltaTable.is_deltatable(table, storage_options=options(stack)):
        return -1, [], 0
    delta = deltalake.DeltaTable(table, storage_options=options(stack))
    commits = [c["version"] for c in delta.history() if c["operation"] != "CREATE TABLE"]
    return (
        delta.version(),
        sorted(commits),
        pl.read_delta(table, storage_options=options(stack)).height,
    )


def assert_committed_once_and_delivered(
    stack: LocalStack, run: Invocation, answer: requests.Response
) -> None:
    """The run's one commit holds its rows, and Dagster got every message, closed cleanly."""
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["rows_written"] == ROWS and result["repeated"] is False, result
    version, commits, rows = table_state(stack, run.table)
    assert commits == [result["delta_version"]] and rows == ROWS, (version, commits, rows)
    sent = pipes_messages(stack, run.key_prefix)
    methods = [m["method"] for m in sent]
    assert methods[0] == "opened" and methods.count("report_asset_materialization") == 1
    closed = [m for m in sent if m["method"] == "closed"]
    assert len(closed) == 1 and not closed[0]["params"].get("exception"), closed
    assert sent[-1]["method"] == "closed"


def assert_clear_error_and_at_most_one_commit(
    stack: LocalStack, run: Invocation, answer: requests.Response
) -> None:
    """An error answer that says what failed; a commit made before the failure was known is
    the only one, and the answer reports it as the job's outcome."""
    assert answer.status_code >= 400, answer.text
    error = answer.json()["error"]
    assert error["type"] and error["message"], error
    _, commits, rows = table_state(stack, run.table)
    assert (commits, rows) in (([], 0), (commits[:1], ROWS)), (commits, rows)
    if commits:
        assert error["job_outcome"]["result"]["delta_version"] == commits[0], error


CLASSES = ("chunk_upload", "cancel_read", "data_upload", "commit", "list")
FAULTS = ("503", "429", "reset", "reset_after_upstream", "delay")


def fault_spec(request_class: str, fault: str, **more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"class": request_class, "fault": fault, **more}
    if fault == "delay":
        spec["delay_s"] = 3.0 if request_class == "cancel_read" else 1.0
    return spec


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("request_class", CLASSES)
def test_one_fault_of_any_class_ends_in_one_commit_with_every_message_delivered(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction, request_class: str, fault: str
) -> None:
    control(proxy, "POST", fault_spec(request_class, fault))
    run = Invocation.new(stack)

    answer = run.send(function)

    state = control(proxy, "GET")
    assert state["injected"] == {f"{request_class}:{fault}": 1}, state
    assert_committed_once_and_delivered(stack, run, answer)  # one fault is absorbed


@pytest.mark.parametrize("fault", ["503", "reset", "reset_after_upstream"])
def test_a_fault_on_the_data_commit_itself_commits_once(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction, fault: str
) -> None:
    """The first commit request creates the empty table; the second is the data's. A reset
    after it landed makes the store client retry it into a 412, which delta-rs takes for a
    conflict: the write finds its own commit, and reports it as its own (not a repeat)."""
    control(proxy, "POST", fault_spec("commit", fault, after=1))
    run = Invocation.new(stack)

    answer = run.send(function)

    assert control(proxy, "GET")["injected"] == {f"commit:{fault}": 1}
    assert_committed_once_and_delivered(stack, run, answer)


def test_a_lost_answer_to_the_commit_of_a_write_without_invocation_id_commits_once(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction
) -> None:
    """Without an invocation id there is no txn to find: the store client's retry of the
    landed commit must still not become a second commit of the same files."""
    control(proxy, "POST", fault_spec("commit", "reset_after_upstream", after=1))
    run = dataclasses.replace(Invocation.new(stack), invocation_id=None)

    answer = run.send(function)

    assert control(proxy, "GET")["injected"] == {"commit:reset_after_upstream": 1}
    assert_committed_once_and_delivered(stack, run, answer)


def test_chunks_that_cannot_be_written_end_in_a_clear_error_and_a_retry_commits_nothing_more(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction
) -> None:
    control(proxy, "POST", fault_spec("chunk_upload", "503", times=1000))
    run = Invocation.new(stack)

    answer = run.send(function)

    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] == "PipesMessageDeliveryError"
    assert_clear_error_and_at_most_one_commit(stack, run, answer)
    control(proxy, "DELETE")
    retry = Invocation(run.lake, run.invocation_id, f"runs/{uuid.uuid4().hex}/2")
    again = retry.send(function)
    assert again.status_code == 200, again.text
    _, commits, rows = table_state(stack, run.table)
    assert len(commits) == 1 and rows == ROWS
    assert pipes_messages(stack, retry.key_prefix)[-1]["method"] == "closed"


def test_a_cancel_marker_that_cannot_be_read_is_reported_and_the_run_commits_once(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction
) -> None:
    control(proxy, "POST", fault_spec("cancel_read", "503", times=1000))
    run = Invocation.new(stack)

    answer = run.send(function)

    assert_committed_once_and_delivered(stack, run, answer)
    warnings = [m["params"]["message"] for m in pipes_messages(stack, run.key_prefix)
                if m["method"] == "log" and m["params"]["level"] == "WARNING"]  # fmt: skip
    assert any("cannot look for the cancellation marker" in w for w in warnings), warnings


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_function_killed_mid_write_leaves_the_table_unchanged_and_a_retry_commits_once(
    stack: LocalStack, proxy: FaultProxy, tmp_path: Path
) -> None:
    first = Invocation.new(stack)
    killed = Invocation(first.lake, uuid.uuid4().hex, f"runs/{uuid.uuid4().hex}/1")
    with faulty_function(stack, proxy, tmp_path / "killed.log") as doomed:
        assert_committed_once_and_delivered(stack, first, first.send(doomed))
        before = table_state(stack, first.table)
        control(proxy, "POST", fault_spec("data_upload", "delay", delay_s=20.0))
        sender = threading.Thread(target=lambda: with_suppressed(killed.send, doomed))
        sender.start()
        wait_for(lambda: control(proxy, "GET")["injected"].get("data_upload:delay") == 1)
        os.killpg(doomed.process.pid, signal.SIGKILL)  # the whole server: arbiter and worker
        doomed.process.wait(timeout=10)
        sender.join(timeout=30)

    assert table_state(stack, first.table) == before
    retry = Invocation(first.lake, killed.invocation_id, f"runs/{uuid.uuid4().hex}/2")
    with faulty_function(stack, proxy, tmp_path / "restarted.log") as restarted:
        answer = retry.send(restarted)
        repeat = Invocation(first.lake, killed.invocation_id, f"runs/{uuid.uuid4().hex}/3")
        again = repeat.send(restarted)

    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["repeated"] is False and result["delta_version"] == before[0] + 1
    assert again.status_code == 200 and again.json()["result"]["repeated"] is True, again.text
    version, commits, rows = table_state(stack, first.table)
    assert (version, commits, rows) == (before[0] + 1, [*before[1], before[0] + 1], 2 * ROWS)


def with_suppressed(send: Any, function: FaultyFunction) -> None:
    with suppress(requests.ConnectionError):  # the server was killed: no answer
        send(function)


@pytest.mark.parametrize("request_class", ["data_upload", "commit"])
def test_a_lake_that_keeps_failing_ends_in_a_clear_error_and_no_commit(
    stack: LocalStack, proxy: FaultProxy, function: FaultyFunction, request_class: str
) -> None:
    """delta-rs retries each request 10 times (within seconds here), then the job fails."""
    after = 1 if request_class == "commit" else 0  # the first commit creates the empty table
    control(proxy, "POST", fault_spec(request_class, "503", times=1000, after=after))
    run = Invocation.new(stack)

    answer = run.send(function)

    assert answer.status_code == 500, answer.text
    assert "503" in answer.json()["error"]["message"]
    assert "\x1b" not in answer.json()["error"]["message"]  # not delta-rs's colour codes
    assert control(proxy, "GET")["injected"][f"{request_class}:503"] > 1
    assert_clear_error_and_at_most_one_commit(stack, run, answer)
    _, commits, _ = table_state(stack, run.table)
    assert commits == []
