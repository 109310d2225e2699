"""Unit tests of the GCS message reader against an in-memory bucket."""

import json
import threading
import time
from typing import Any

import pytest
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesGCSMessageWriter
from google.api_core import exceptions as gexc

from dagster_pipes_gcf import LogCoalescing, PipesCloudStorageMessageReader, PollingPolicy
from dagster_pipes_gcf.message_reader import coalesce_logs
from devstack.fake_gcs import FakeClient, always_fail, fail_first

BUCKET = "pipes"
FAST = PollingPolicy(min_interval=0.01, max_interval=0.05, drain_timeout=1.0, download_attempts=3)


class RecordingHandler:
    """Stands in for Dagster's PipesMessageHandler: records what the reader hands over."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def handle_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def logs(self) -> list[str]:
        return [m["params"]["message"] for m in self.messages if m["method"] == "log"]


def message(method: str, **params: Any) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


def put_chunk(client: FakeClient, prefix: str, index: int, *lines: str) -> None:
    client.objects[BUCKET][f"{prefix}/{index}.json"] = "\n".join(lines)


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket(BUCKET)
    return fake


def reader_for(client: FakeClient, policy: PollingPolicy = FAST) -> PipesCloudStorageMessageReader:
    return PipesCloudStorageMessageReader(bucket=BUCKET, client=client, polling=policy)  # type: ignore[arg-type]


def test_one_poll_reads_every_available_chunk(client: FakeClient) -> None:
    # The chunks are there before the session starts; polls are 60 s apart, so within the
    # first seconds only the poll at start can have read them.
    reader = reader_for(client, PollingPolicy(min_interval=60, max_interval=60))
    reader.new_key_prefix = lambda: "fixed"  # type: ignore[method-assign]
    for i in range(1, 6):
        put_chunk(client, "fixed", i, message("log", message=f"m{i}"))
    handler = RecordingHandler()
    with reader.read_messages(handler):  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while len(handler.logs) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.logs == [f"m{i}" for i in range(1, 6)], "one poll left chunks unread"
        put_chunk(client, "fixed", 6, message("closed"))
    assert handler.messages[-1]["method"] == "closed"


def test_messages_written_after_the_call_returned_are_drained_until_closed(
    client: FakeClient,
) -> None:
    reader = reader_for(
        client, PollingPolicy(min_interval=0.01, max_interval=0.05, drain_timeout=5)
    )
    handler = RecordingHandler()
    with reader.read_messages(handler) as params:  # type: ignore[arg-type]
        prefix = params["key_prefix"]

        def late_writer() -> None:
            time.sleep(0.3)
            put_chunk(client, prefix, 1, message("opened"), message("log", message="late"))
            time.sleep(0.3)
            put_chunk(client, prefix, 2, message("closed"))

        threading.Thread(target=late_writer).start()
    assert handler.logs == ["late"]
    assert handler.messages[-1]["method"] == "closed"


def test_each_session_starts_at_chunk_one(client: FakeClient) -> None:
    reader = reader_for(client)
    for run in range(2):
        handler = RecordingHandler()
        with reader.read_messages(handler) as params:  # type: ignore[arg-type]
            put_chunk(
                client,
                params["key_prefix"],
                1,
                message("log", message=f"run{run}"),
                message("closed"),
            )
        assert handler.logs == [f"run{run}"]


def test_missing_closed_fails_and_says_what_was_read(client: FakeClient) -> None:
    reader = reader_for(client)
    with pytest.raises(DagsterPipesExecutionError, match=r"`closed` message not received.*chunk 2"):
        with reader.read_messages(RecordingHandler()) as params:  # type: ignore[arg-type]
            put_chunk(client, params["key_prefix"], 1, message("opened"))


def test_a_gap_in_chunk_indexes_names_the_missing_chunk(client: FakeClient) -> None:
    reader = reader_for(client)
    with pytest.raises(
        DagsterPipesExecutionError, match=r"chunk 2 is missing while chunk\(s\) \[3\]"
    ):
        with reader.read_messages(RecordingHandler()) as params:  # type: ignore[arg-type]
            put_chunk(client, params["key_prefix"], 1, message("opened"))
            put_chunk(client, params["key_prefix"], 3, message("closed"))


def test_transient_download_errors_are_retried(client: FakeClient) -> None:
    client.fault = fail_first("download", 2, gexc.ServiceUnavailable("503"))
    handler = RecordingHandler()
    with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
        put_chunk(client, params["key_prefix"], 1, message("log", message="ok"), message("closed"))
    assert handler.logs == ["ok"]


def test_forbidden_is_a_clear_permission_error(client: FakeClient) -> None:
    client.fault = always_fail(gexc.Forbidden("caller lacks storage.objects.get"))
    with pytest.raises(DagsterPipesExecutionError, match="no permission to read Pipes messages"):
        with reader_for(client).read_messages(RecordingHandler()):
            pass


def test_a_missing_bucket_is_named(client: FakeClient) -> None:
    reader = PipesCloudStorageMessageReader(bucket="nope", client=client, polling=FAST)  # type: ignore[arg-type]
    with pytest.raises(DagsterPipesExecutionError, match="gs://nope does not exist"):
        with reader.read_messages(RecordingHandler()):
            pass


def test_a_failed_call_keeps_its_own_error_and_still_delivers_logs(client: FakeClient) -> None:
    handler = RecordingHandler()
    with pytest.raises(RuntimeError, match="HTTP 500"):
        with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
            put_chunk(
                client,
                params["key_prefix"],
                1,
                message("log", message="before crash"),
                message("closed"),
            )
            raise RuntimeError("HTTP 500")
    assert handler.logs == ["before crash"]


def test_reads_chunks_written_by_the_stock_dagster_pipes_gcs_writer(client: FakeClient) -> None:
    handler = RecordingHandler()
    reader = reader_for(
        client, PollingPolicy(min_interval=0.01, max_interval=0.05, drain_timeout=10)
    )
    with reader.read_messages(handler) as params:  # type: ignore[arg-type]
        writer = PipesGCSMessageWriter(client, interval=0.1)  # type: ignore[arg-type]
        with writer.open(params) as channel:
            channel.write_message(json.loads(message("opened")))
            for i in range(3):
                channel.write_message(json.loads(message("log", message=f"stock{i}")))
            channel.write_message(json.loads(message("closed")))
    assert handler.logs == ["stock0", "stock1", "stock2"]


def test_a_flood_of_logs_is_delivered_as_few_entries_with_every_line_in_order(
    client: FakeClient,
) -> None:
    handler = RecordingHandler()
    reader = PipesCloudStorageMessageReader(
        bucket=BUCKET,
        client=client,
        polling=FAST,
        log_coalescing=LogCoalescing(threshold=10, max_lines=50),
    )  # type: ignore[arg-type]
    with reader.read_messages(handler) as params:  # type: ignore[arg-type]
        lines = [message("log", message=f"l{i}", level="INFO") for i in range(120)]
        lines.insert(60, message("report_custom_message", payload="between"))
        put_chunk(client, params["key_prefix"], 1, *lines, message("closed"))
    entries = [m for m in handler.messages if m["method"] == "log"]
    delivered = [line for entry in entries for line in entry["params"]["message"].split("\n")]
    assert delivered == [f"l{i}" for i in range(120)]
    assert len(entries) == 4  # 50 + 10 | custom message | 50 + 10
    assert [m["method"] for m in handler.messages][2] == "report_custom_message"


def test_normal_rate_logs_and_mixed_levels_stay_separate(client: FakeClient) -> None:
    handler = RecordingHandler()
    with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
        put_chunk(
            client,
            params["key_prefix"],
            1,
            *(message("log", message=f"l{i}", level="INFO") for i in range(5)),
            message("closed"),
        )
    assert handler.logs == [f"l{i}" for i in range(5)]


def test_coalescing_never_merges_across_levels() -> None:
    msgs = [json.loads(message("log", message=f"l{i}", level=("INFO" if i < 3 else "WARNING")))
            for i in range(6)]  # fmt: skip
    merged = coalesce_logs(msgs, LogCoalescing(threshold=1, max_lines=10))
    assert [(m["params"]["level"], m["params"]["message"]) for m in merged] == [
        ("INFO", "l0\nl1\nl2"),
        ("WARNING", "l3\nl4\nl5"),
    ]


def test_impersonation_makes_the_reader_read_as_the_orchestrator_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.auth.credentials import AnonymousCredentials

    from dagster_pipes_gcf import message_reader

    minted: list[str] = []
    credentials = AnonymousCredentials()

    def fake_mint(target: str) -> AnonymousCredentials:
        minted.append(target)
        return credentials

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(message_reader, "impersonated_storage_credentials", fake_mint)
    reader = PipesCloudStorageMessageReader(
        bucket=BUCKET, impersonate_service_account="orchestrator@p.iam.gserviceaccount.com"
    )
    assert minted == [], "credentials must be minted lazily, not when definitions load"
    assert reader.client._credentials is credentials
    assert minted == ["orchestrator@p.iam.gserviceaccount.com"]
