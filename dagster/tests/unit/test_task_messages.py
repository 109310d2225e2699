"""The Cloud Run task reader: merging the tasks' results, and a GCS outage that fails fast."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

from dagster._core.errors import DagsterPipesExecutionError
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from dagster_pipes_gcf import PipesCloudRunTaskMessageReader
from dagster_pipes_gcf.message_reader import NEVER, PollingPolicy
from dagster_pipes_gcf.task_messages import TASK_POLLING, TaskStreams, merge_results
from devstack.fake_gcs import FakeClient


def materialization(rows: int, version: int, preview: str) -> dict[str, Any]:
    metadata = {
        "rows_written": {"raw_value": rows, "type": "int"},
        "delta_version": {"raw_value": version, "type": "int"},
        "preview": {"raw_value": preview, "type": "md"},
    }
    params = {"asset_key": "people_job", "metadata": metadata, "data_version": str(version)}
    return {"method": "report_asset_materialization", "params": params}


def check(passed: bool, note: str) -> dict[str, Any]:
    params = {
        "asset_key": "people_job",
        "check_name": "emails_valid",
        "passed": passed,
        "severity": "ERROR",
        "metadata": {"note": {"raw_value": note, "type": "text"}},
    }
    return {"method": "report_asset_check", "params": params}


def test_one_materialization_whose_rows_add_up_and_version_is_the_latest() -> None:
    merged = merge_results([[materialization(5, 3, "a")], [materialization(5, 10, "b")]])
    [only] = merged
    metadata = only["params"]["metadata"]
    assert metadata["rows_written"]["raw_value"] == 10  # equal shares still add up
    assert metadata["delta_version"]["raw_value"] == 10
    assert metadata["preview"]["raw_value"] == "a"
    assert only["params"]["data_version"] == "10"


def test_a_check_fails_when_any_task_failed_it() -> None:
    [merged] = merge_results([[check(True, "t0")], [check(False, "t1")], [check(True, "t2")]])
    assert merged["params"]["passed"] is False
    assert merged["params"]["metadata"]["note"]["raw_value"] == "t1"


class Unavailable(BaseHTTPRequestHandler):
    """A GCS JSON API whose every request is answered 503 (a persistent outage)."""

    def do_GET(self) -> None:
        body = b'{"error": {"code": 503, "message": "Service Unavailable"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Handler:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self._context = SimpleNamespace(
            log=SimpleNamespace(log=lambda level, text: self.notes.append(text))
        )

    def handle_message(self, message: Any) -> None:
        pass


def test_a_persistent_list_outage_fails_within_the_list_deadline_naming_the_listing() -> None:
    """google-cloud-storage retries a listing for 120 s by default: the step would hang."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"http://127.0.0.1:{server.server_address[1]}"},
    )
    reader = PipesCloudRunTaskMessageReader(bucket="pipes", client=client)
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            with reader.read_messages(Handler()) as params:  # type: ignore[arg-type]
                reader.finish(params, {0: 0})
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    thread.join(30)
    server.shutdown()
    assert not thread.is_alive(), "the step was still waiting for GCS after 30 s"
    assert time.monotonic() - started < 20
    (error,) = errors
    assert isinstance(error, DagsterPipesExecutionError)
    assert "could not list the Pipes messages under gs://pipes/" in str(error)
    assert "retried for 10s" in str(error) and "503" in str(error)


class Delivered:
    """A message handler keeping what it is handed; ``on_first`` runs at the first one."""

    def __init__(self, on_first: Any = None) -> None:
        self.messages: list[Any] = []
        self._on_first = on_first

    def handle_message(self, message: Any) -> None:
        if not self.messages and self._on_first is not None:
            self._on_first()
        self.messages.append(message)


def log(text: str) -> str:
    return json.dumps({"method": "log", "params": {"message": text, "level": "INFO"}})


def task_streams(gcs: FakeClient, handler: Delivered) -> TaskStreams:
    reader = PipesCloudRunTaskMessageReader(
        bucket="pipes",
        client=gcs,  # type: ignore[arg-type]
        polling=PollingPolicy(),
        log_coalescing=None,
    )
    reader.new_key_prefix = lambda: "s"  # type: ignore[method-assign]
    return TaskStreams(reader, handler)  # type: ignore[arg-type]


def counting_downloads(gcs: FakeClient) -> list[str]:
    downloads: list[str] = []
    gcs.fault = lambda operation, key: downloads.append(key) if operation == "download" else None
    return downloads


def put(gcs: FakeClient, task: int, chunk: int, *lines: str) -> None:
    gcs.objects["pipes"][f"s/task-{task}/attempt-0/{chunk}.json"] = "\n".join(lines)


def test_a_poll_downloads_only_chunks_that_its_listing_shows() -> None:
    """12 running tasks cost a poll one listing, not 12 downloads of chunks not there yet."""
    gcs, handler = FakeClient(objects={"pipes": {}}), Delivered()
    streams = task_streams(gcs, handler)
    for task in range(12):
        put(gcs, task, 1, log(f"task {task} started"))
    streams.read_available(NEVER)
    downloads = counting_downloads(gcs)

    streams.read_available(NEVER)  # nothing new
    put(gcs, 3, 2, log("task 3 goes on"))
    streams.read_available(NEVER)

    assert downloads == ["s/task-3/attempt-0/2.json"]  # not 3.json: the listing had none
    assert [m["params"]["message"] for m in handler.messages][-1] == "[task 3] task 3 goes on"
    assert len(handler.messages) == 13


def test_messages_left_in_a_chunk_by_a_stopped_poll_are_read_without_a_new_chunk() -> None:
    stop = threading.Event()
    gcs, handler = FakeClient(objects={"pipes": {}}), Delivered(on_first=stop.set)
    streams = task_streams(gcs, handler)
    closed = json.dumps({"method": "closed", "params": {}})
    put(gcs, 0, 1, log("one"), log("two"), closed)

    streams.read_available(stop)  # stopped after the first message
    streams.read_available(NEVER)

    assert [m["params"].get("message") for m in handler.messages] == [
        "[task 0] one",
        "[task 0] two",
    ]
    assert streams.tasks[(0, 0)].stream.closed_seen


def test_the_task_reader_polls_at_a_pace_for_batch_tasks() -> None:
    assert PipesCloudRunTaskMessageReader(bucket="b").polling == TASK_POLLING
    assert TASK_POLLING.min_interval == 0.25
    custom = PollingPolicy(min_interval=0.1)
    assert PipesCloudRunTaskMessageReader(bucket="b", polling=custom).polling is custom
