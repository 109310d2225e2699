"""Unit tests of the GCS message reader against an in-memory bucket."""

import json
import re
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesGCSMessageWriter
from google.api_core import exceptions as gexc

from dagster_pipes_gcf import (
    LogCoalescing,
    PipesCloudFunctionEventContextInjector,
    PipesCloudStorageMessageReader,
    PollingPolicy,
)
from dagster_pipes_gcf import message_reader as reader_module
from dagster_pipes_gcf.message_reader import PipesHandlerError, coalesce_logs
from devstack.fake_gcs import FakeClient, always_fail, fail_first

BUCKET = "pipes"
FAST = PollingPolicy(min_interval=0.01, max_interval=0.05, drain_timeout=1.0, download_attempts=3)


class RecordingHandler:
    """Stands in for Dagster's PipesMessageHandler: records what the reader hands over, and
    the lines the reader writes to the run's log (through the handler's step context)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._context = SimpleNamespace(
            log=SimpleNamespace(log=lambda level, text: self.notes.append(text))
        )

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
        put_chunk(client, "fixed/1", i, message("log", message=f"m{i}"))  # attempt 1
    handler = RecordingHandler()
    with reader.read_messages(handler):  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while len(handler.logs) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.logs == [f"m{i}" for i in range(1, 6)], "one poll left chunks unread"
        put_chunk(client, "fixed/1", 6, message("closed"))
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
    with pytest.raises(
        DagsterPipesExecutionError, match="no permission to read Pipes messages"
    ) as error:
        with reader_for(client).read_messages(RecordingHandler()):
            pass
    assert_printed_once(error.value, "caller lacks storage.objects.get")


def test_a_missing_bucket_is_named(client: FakeClient) -> None:
    reader = PipesCloudStorageMessageReader(bucket="nope", client=client, polling=FAST)  # type: ignore[arg-type]
    with pytest.raises(DagsterPipesExecutionError, match="gs://nope does not exist") as error:
        with reader.read_messages(RecordingHandler()):
            pass
    assert error.value.__cause__ is None and error.value.__suppress_context__


def assert_printed_once(error: BaseException, text: str) -> None:
    """``text`` is in the message of ``error`` and not again in a chained cause or context."""
    printed = "".join(traceback.format_exception(error))
    assert printed.count(text) == 1, printed


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

    from dagster_pipes_gcf import auth

    minted: list[str] = []
    credentials = AnonymousCredentials()

    def fake_mint(target: str, scope: str) -> AnonymousCredentials:
        minted.append(target)
        assert scope == auth.DEVSTORAGE_READ_ONLY_SCOPE
        return credentials

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(auth, "impersonated", fake_mint)
    reader = PipesCloudStorageMessageReader(
        bucket=BUCKET, impersonate_service_account="orchestrator@p.iam.gserviceaccount.com"
    )
    assert minted == [], "credentials must be minted lazily, not when definitions load"
    assert reader.client._credentials is credentials
    assert minted == ["orchestrator@p.iam.gserviceaccount.com"]


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_session_params_are_attempt_scoped(client: FakeClient) -> None:
    reader = reader_for(client)
    with reader.read_messages(RecordingHandler()) as params:  # type: ignore[arg-type]
        assert re.fullmatch(r"dagster-pipes/[0-9a-f]{32}/1", params["key_prefix"])
        attempts = reader.attempts(params)
        assert attempts.begin_attempt(1) == params
        second = attempts.begin_attempt(2, "HTTP 503 from the platform")
        assert second == {"bucket": BUCKET, "key_prefix": params["key_prefix"][:-1] + "2"}
        put_chunk(client, second["key_prefix"], 1, message("closed"))


def test_an_attempt_has_started_once_its_first_chunk_exists(client: FakeClient) -> None:
    reader = reader_for(client)
    with reader.read_messages(RecordingHandler()) as params:  # type: ignore[arg-type]
        attempts = reader.attempts(params)
        assert attempts.handler_started(1) is False
        put_chunk(client, params["key_prefix"], 1, message("opened"))
        assert attempts.handler_started(1) is True
        second = attempts.begin_attempt(2, "HTTP 503 from the platform")
        assert attempts.handler_started(2) is False
        client.fault = fail_first("exists", 1, gexc.ServiceUnavailable("503"))
        assert attempts.handler_started(2) is True, "unknown must count as started"
        assert attempts.handler_started(2) is False
        client.fault = None
        put_chunk(client, second["key_prefix"], 1, message("closed"))


def test_only_the_answering_attempt_contributes_results(client: FakeClient) -> None:
    reader = reader_for(client)
    handler = RecordingHandler()
    with reader.read_messages(handler) as params:  # type: ignore[arg-type]
        attempts = reader.attempts(params)
        put_chunk(client, params["key_prefix"], 1,
                  message("opened"), message("log", message="first try working"),
                  message("report_asset_materialization", asset_key="a", metadata={"try": 1}),
                  message("closed"))  # fmt: skip
        wait_until(lambda: handler.logs == ["first try working"])
        assert [m["method"] for m in handler.messages] == ["opened", "log"], "results held back"
        second = attempts.begin_attempt(2, "connection lost after the request was sent")
        put_chunk(client, second["key_prefix"], 1,
                  message("opened"), message("log", message="second try"),
                  message("report_asset_materialization", asset_key="a", metadata={"try": 2}),
                  message("report_asset_check", asset_key="a", check_name="c", passed=True),
                  message("closed"))  # fmt: skip
        wait_until(lambda: "second try" in handler.logs)
        assert not any(m["method"] == "closed" for m in handler.messages)
        attempts.answered()
    methods = [m["method"] for m in handler.messages]
    assert methods == ["opened", "log", "log", "report_asset_materialization",
                       "report_asset_check", "closed"]  # fmt: skip
    assert handler.messages[3]["params"]["metadata"] == {"try": 2}
    assert handler.notes == [
        "[pipes] attempt 1 abandoned (connection lost after the request was sent); following "
        f"attempt 2 under gs://{BUCKET}/{second['key_prefix']}"
    ]


def test_a_handler_exception_never_delivers_a_message_twice_and_fails_at_the_end(
    client: FakeClient,
) -> None:
    class FailingOnce(RecordingHandler):
        failed = False

        def handle_message(self, message: dict[str, Any]) -> None:
            self.messages.append(message)
            if message["params"].get("message") == "m2" and not self.failed:
                self.failed = True
                raise ValueError("handler broke")

    handler = FailingOnce()
    with pytest.raises(PipesHandlerError, match="handler broke"):
        with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
            lines = [message("log", message=f"m{i}") for i in range(1, 5)]
            put_chunk(client, params["key_prefix"], 1, *lines)
            put_chunk(client, params["key_prefix"], 2, message("closed"))
            wait_until(lambda: len(handler.messages) == 4)  # `closed`: once the call answered
            time.sleep(0.1)  # a re-read would deliver again within a few polls
    assert handler.logs == ["m1", "m2", "m3", "m4"]
    assert [m["method"] for m in handler.messages].count("closed") == 1
    assert any("handler broke" in note and "fails after the call" in note for note in handler.notes)


def test_a_background_read_error_is_reported_in_the_run(client: FakeClient) -> None:
    handler = RecordingHandler()
    # More failures than one poll's download attempts: the poller sees the error.
    client.fault = fail_first("download", FAST.download_attempts, gexc.ServiceUnavailable("503"))
    with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
        wait_until(lambda: handler.notes)
        put_chunk(client, params["key_prefix"], 1, message("log", message="ok"), message("closed"))
    assert (
        "failed in the background" in handler.notes[0] and "ServiceUnavailable" in handler.notes[0]
    )
    assert handler.logs == ["ok"], "the error was transient: everything is delivered once"


class SlowHandler(RecordingHandler):
    def handle_message(self, message: dict[str, Any]) -> None:
        time.sleep(0.005)  # Dagster's SQLite event log: a few ms per log event
        super().handle_message(message)


def test_a_terminated_run_stops_within_two_seconds_despite_a_backlog(client: FakeClient) -> None:
    handler = SlowHandler()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with reader_for(client).read_messages(handler) as params:  # type: ignore[arg-type]
            for index in range(1, 201):  # 4,000 messages: ~20 s of handling
                lines = [message("log", message=f"{index}.{i}") for i in range(20)]
                put_chunk(client, params["key_prefix"], index, *lines)
            wait_until(lambda: len(handler.messages) > 10)
            interrupted = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - interrupted < 2.0
    delivered = len(handler.messages)
    time.sleep(0.3)
    assert len(handler.messages) == delivered < 4000, "the reader kept going after the stop"
    assert time.monotonic() - started < 10


def test_a_terminated_run_stops_within_two_seconds_on_a_slow_bucket(client: FakeClient) -> None:
    def slow(operation: str, key: str) -> None:
        time.sleep(5)  # a hung GCS request (within its request timeout)

    client.fault = slow
    with pytest.raises(KeyboardInterrupt):
        with reader_for(client).read_messages(RecordingHandler()):  # type: ignore[arg-type]
            time.sleep(0.2)  # the poller is now inside a download
            interrupted = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - interrupted < 2.0


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "with space", "x" * 500, "a/./b", "é"])
def test_a_prefix_the_function_would_refuse_is_refused_up_front(prefix: str) -> None:
    with pytest.raises(ValueError, match="Pipes message prefix"):
        PipesCloudStorageMessageReader(bucket=BUCKET, prefix=prefix)


def test_a_custom_prefix_leads_each_session(client: FakeClient) -> None:
    reader = PipesCloudStorageMessageReader(
        bucket=BUCKET, client=client, prefix="/team-a/pipes.v1/", polling=FAST
    )  # type: ignore[arg-type]
    with reader.read_messages(RecordingHandler()) as params:  # type: ignore[arg-type]
        assert re.fullmatch(r"team-a/pipes\.v1/[0-9a-f]{32}/1", params["key_prefix"])
        put_chunk(client, params["key_prefix"], 1, message("closed"))


def test_with_dagsters_handler_a_bad_message_is_reported_and_fails_the_step_at_the_end(
    client: FakeClient,
) -> None:
    reader = reader_for(client)

    @dg.asset
    def bad_message(context: dg.AssetExecutionContext) -> dg.MaterializeResult[None]:
        with dg.open_pipes_session(
            context=context,
            context_injector=PipesCloudFunctionEventContextInjector(),
            message_reader=reader,
        ) as session:
            put_chunk(client, session.message_reader_params["key_prefix"], 1,
                      message("opened"), message("no_such_method"),
                      message("log", message="after the bad one", level="INFO"),
                      message("closed"))  # fmt: skip
        return dg.MaterializeResult()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([bad_message], instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert "Unknown message method: no_such_method" in failure.step_failure_data.error.to_string()
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("fails after the call" in m for m in messages), "no warning in the run"
    assert any("framework exception occurred" in m for m in messages)
    assert sum("after the bad one" in m for m in messages) == 1


def test_a_handler_error_while_the_poller_stops_still_fails_the_step(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller downloads a chunk, the call answers and the session stops the poller, then
    Dagster's handler refuses the chunk's first message: that message is consumed, so the
    step must fail as for any other handler error (it used to succeed)."""
    stopping = threading.Event()
    stop_polling = reader_module.MessageStreams.stop_polling

    def stop_polling_and_note(streams: Any) -> None:
        stop_polling(streams)
        stopping.set()

    def download_once_stopping(operation: str, key: str) -> None:
        if operation == "download" and key.endswith("/1/1.json"):
            stopping.wait(5)  # the download in flight when the stop is asked for

    monkeypatch.setattr(reader_module.MessageStreams, "stop_polling", stop_polling_and_note)
    client.fault = download_once_stopping
    reader = reader_for(client)

    @dg.asset
    def refused_while_stopping(context: dg.AssetExecutionContext) -> dg.MaterializeResult[None]:
        with dg.open_pipes_session(
            context=context,
            context_injector=PipesCloudFunctionEventContextInjector(),
            message_reader=reader,
        ) as session:
            put_chunk(client, session.message_reader_params["key_prefix"], 1,
                      message("no_such_method"), message("closed"))  # fmt: skip
        return dg.MaterializeResult()

    result = dg.materialize([refused_while_stopping], raise_on_error=False)
    assert stopping.is_set(), "the handler must have run while the poller was being stopped"
    assert not result.success, "a consumed message the handler refused must fail the step"
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert "Unknown message method: no_such_method" in failure.step_failure_data.error.to_string()


def test_a_failed_call_whose_attempt_wrote_nothing_fails_at_once(client: FakeClient) -> None:
    """Nothing was written (refused, unreachable, 429s exhausted): no `closed` can come."""
    reader = reader_for(client, PollingPolicy(min_interval=0.01, drain_timeout=30))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="connection refused"):
        with reader.read_messages(RecordingHandler()):  # type: ignore[arg-type]
            raise RuntimeError("connection refused")
    assert time.monotonic() - started < 1.5


def test_a_failed_call_whose_attempt_wrote_waits_for_its_last_messages(
    client: FakeClient,
) -> None:
    handler = RecordingHandler()
    reader = reader_for(client, PollingPolicy(min_interval=0.01, drain_timeout=5))
    with pytest.raises(RuntimeError, match="HTTP 500"):
        with reader.read_messages(handler) as params:  # type: ignore[arg-type]
            prefix = params["key_prefix"]
            put_chunk(client, prefix, 1, message("log", message="crashing"))
            threading.Timer(
                0.5, put_chunk, (client, prefix, 2, message("log", message="last words"))
            ).start()
            raise RuntimeError("HTTP 500")
    assert handler.logs == ["crashing", "last words"]
