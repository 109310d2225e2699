"""Cancellation by the orchestrator: the marker ``<key_prefix>/cancel``, its check on the
writer's cadence, the 409 answer, and the people job committing nothing once cancelled; and
the request's own deadline (the platform's timeout minus a margin), a cancellation answered 504.

Unit tests on the in-memory GCS fake, and the deadline through the real server; the real
stack with Dagster terminating a run is dagster/tests/integration/test_termination.py.
"""

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deltalake  # before polars
import flask
import pytest
import requests
from dagster_pipes import PipesContext
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.fake_gcs import FakeClient, always_fail, fail_first
from devstack.lakes import Lake
from devstack.stack import local_stack
from gcf_pipes import (
    Cancellation,
    CancellationPolicy,
    DeadlineExceeded,
    PipesMessageDeliveryError,
    RequestCancelled,
    WriterSettings,
    cancelled,
    current_cancellation,
    handle_pipes_request,
    raise_if_cancelled,
)
from gcf_pipes.cancel import cancel_marker_key
from gcf_pipes.writer import chunk_key
from people_lake import fake_people, job
from people_lake.job import write_people
from people_lake.settings import FunctionSettings

from .conftest import PIPES_BUCKET, pipes_body

app = flask.Flask(__name__)
FAST = WriterSettings(flush_interval=0.01, upload_attempts=2)
QUICK = CancellationPolicy(poll_interval=0.25)
MARKER = cancel_marker_key("t/1")


def cancel(gcs: FakeClient, key: str = MARKER) -> None:
    gcs.bucket(PIPES_BUCKET).blob(key).upload_from_string("{}", if_generation_match=0)


def call(
    gcs: FakeClient,
    job: Callable[[PipesContext, Any], Any],
    payload: dict[str, Any],
    policy: CancellationPolicy = QUICK,
    deadline_s: float | None = None,
) -> tuple[int, dict[str, Any]]:
    with app.test_request_context("/", method="POST", json=payload):
        response, status = handle_pipes_request(
            flask.request,
            job,
            storage_client=gcs,  # type: ignore[arg-type]
            pipes_bucket=PIPES_BUCKET,
            writer_settings=FAST,
            cancellation_policy=policy,
            deadline_s=deadline_s,
        )
    return status, json.loads(response.get_data())


def sent(gcs: FakeClient, prefix: str = "t/1") -> list[dict[str, Any]]:
    """The messages written under ``prefix`` (chunks 1, 2, ...; the marker is no chunk)."""
    objects, found, index = gcs.objects[PIPES_BUCKET], [], 1
    while (key := chunk_key(prefix, index)) in objects:
        found.extend(json.loads(line) for line in objects[key].splitlines())
        index += 1
    return found


def log_lines(gcs: FakeClient, prefix: str = "t/1") -> list[str]:
    return [m["params"]["message"] for m in sent(gcs, prefix) if m["method"] == "log"]


def closed_exception(gcs: FakeClient, prefix: str = "t/1") -> dict[str, Any] | None:
    closed = [m for m in sent(gcs, prefix) if m["method"] == "closed"]
    assert len(closed) == 1
    return closed[0]["params"].get("exception")


# --- the check itself ----------------------------------------------------------------------


def test_the_marker_is_one_get_of_a_known_name_and_stays_seen(gcs: FakeClient) -> None:
    looked: list[str] = []
    gcs.fault = lambda op, key: looked.append(f"{op} {key}")
    cancellation = Cancellation(gcs.bucket(PIPES_BUCKET), "t/1")  # type: ignore[arg-type]

    assert not cancellation.look()
    cancel(gcs)
    assert cancellation.look() and cancellation.is_set()
    del gcs.objects[PIPES_BUCKET][MARKER]
    assert cancellation.look()  # never unset, and not looked at again
    assert looked == ["download t/1/cancel", "upload t/1/cancel", "download t/1/cancel"]
    assert cancellation.location == "gs://pipes/t/1/cancel"


def test_looks_are_rate_limited_to_the_poll_interval(gcs: FakeClient) -> None:
    now = [100.0]
    cancellation = Cancellation(
        gcs.bucket(PIPES_BUCKET),  # type: ignore[arg-type]
        "t/1",
        CancellationPolicy(poll_interval=0.5),
        clock=lambda: now[0],
    )
    for _ in range(10):  # ten flushes within 0.2 s: one look
        cancellation.poll_if_due()
        now[0] += 0.02
    assert cancellation.looks == 1
    now[0] += 0.5
    cancellation.poll_if_due()
    cancellation.poll_if_due()
    assert cancellation.looks == 2


def test_a_failed_look_is_not_a_cancellation_and_is_reported_once(gcs: FakeClient) -> None:
    gcs.fault = always_fail(gexc.Forbidden("no storage.objects.get"))
    warnings: list[str] = []
    cancellation = Cancellation(gcs.bucket(PIPES_BUCKET), "t/1")  # type: ignore[arg-type]
    cancellation.warn = warnings.append

    assert not cancellation.look()
    assert not cancellation.look()
    assert not cancellation.is_set()
    assert len(warnings) == 1
    assert "gs://pipes/t/1/cancel" in warnings[0] and "Forbidden" in warnings[0]
    assert "cannot be cancelled" in warnings[0]


@pytest.mark.parametrize(
    "error",
    [gexc.ServiceUnavailable("busy"), gexc.TooManyRequests("slow"), requests.ConnectionError()],
)
def test_the_look_before_a_commit_sees_a_marker_behind_a_transient_error(
    gcs: FakeClient, error: Exception
) -> None:
    """One failed GET right before the commit must not let a cancelled request commit."""
    cancel(gcs)
    gcs.fault = fail_first("download", 2, error)
    cancellation = Cancellation(gcs.bucket(PIPES_BUCKET), "t/1")  # type: ignore[arg-type]

    with pytest.raises(RequestCancelled):
        cancellation.raise_if_cancelled(fresh=True)
    assert cancellation.looks == 3


def test_the_look_before_a_commit_gives_up_on_a_lasting_outage_and_says_so(
    gcs: FakeClient,
) -> None:
    gcs.fault = always_fail(gexc.ServiceUnavailable("down"))
    warnings: list[str] = []
    cancellation = Cancellation(gcs.bucket(PIPES_BUCKET), "t/1")  # type: ignore[arg-type]
    cancellation.warn = warnings.append

    cancellation.raise_if_cancelled(fresh=True)  # runs on, as documented
    assert cancellation.looks == CancellationPolicy().fresh_look_attempts
    assert len(warnings) == 1 and "cannot be cancelled" in warnings[0]


def test_raise_if_cancelled_and_surfacing_a_wrapped_cancellation(gcs: FakeClient) -> None:
    cancellation = Cancellation(gcs.bucket(PIPES_BUCKET), "t/1")  # type: ignore[arg-type]
    cancellation.raise_if_cancelled()  # not cancelled: nothing happens
    with pytest.raises(ValueError), cancellation.surfacing():
        raise ValueError("unrelated, and not cancelled")

    cancel(gcs)
    cancellation.raise_if_cancelled()  # not looked at yet
    with pytest.raises(RequestCancelled):
        cancellation.raise_if_cancelled(fresh=True)
    with pytest.raises(RequestCancelled) as raised, cancellation.surfacing():
        raise RuntimeError("Generic DeltaTable error: External error: RequestCancelled")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_a_request_without_a_bucket_is_never_cancelled() -> None:
    cancellation = Cancellation(None, "t/1")
    cancellation.poll_if_due()
    assert not cancellation.look() and cancellation.looks == 0


def test_the_policy_checks_itself() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        CancellationPolicy(poll_interval=0.1)
    with pytest.raises(ValueError, match="request_timeout"):
        CancellationPolicy(request_timeout=0)


def test_cancelled_outside_a_request_says_how_to_take_it_along() -> None:
    with pytest.raises(RuntimeError, match="pass the object to other threads"):
        cancelled()


# --- through the HTTP wrapper ---------------------------------------------------------------


def wait_for_cancel(pipes: PipesContext, event: Any) -> dict[str, Any]:
    pipes.log.info("working")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        raise_if_cancelled()
        time.sleep(0.01)
    return {"finished": True}


def test_a_cancelled_job_answers_409_after_sending_its_last_messages(gcs: FakeClient) -> None:
    threading.Timer(0.3, cancel, args=(gcs,)).start()
    started = time.monotonic()
    status, body = call(gcs, wait_for_cancel, pipes_body())

    assert status == 409, body
    assert time.monotonic() - started < 2  # seen within one poll interval (0.25 s) and a bit
    assert body["status"] == "cancelled"
    assert body["error"]["type"] == "RequestCancelled"
    assert "gs://pipes/t/1/cancel" in body["error"]["message"]
    assert "traceback" not in body["error"]
    assert log_lines(gcs) == ["working"]
    exception = closed_exception(gcs)
    assert exception is not None and exception["name"] == "RequestCancelled"


def test_the_writer_looks_at_most_once_per_interval(gcs: FakeClient) -> None:
    looks: list[float] = []

    def count(op: str, key: str) -> None:
        if op == "download" and key == MARKER:
            looks.append(time.monotonic())

    def busy(pipes: PipesContext, event: Any) -> None:
        for n in range(100):  # ~1.2 s of flushes every 0.01 s
            pipes.log.info(f"line {n}")
            time.sleep(0.012)

    gcs.fault = count
    started = time.monotonic()
    assert call(gcs, busy, pipes_body())[0] == 200
    elapsed = time.monotonic() - started
    assert 2 <= len(looks) <= elapsed / QUICK.poll_interval + 1  # ~120 flushes, a few looks
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(looks))


def test_a_job_that_never_checks_finishes_and_its_work_stands(gcs: FakeClient) -> None:
    cancel(gcs)

    def ignores(pipes: PipesContext, event: Any) -> dict[str, Any]:
        time.sleep(0.4)
        assert current_cancellation().is_set()
        return {"done": True}

    status, body = call(gcs, ignores, pipes_body())
    assert status == 200 and body["result"] == {"done": True}
    assert closed_exception(gcs) is None


def test_a_library_error_raised_after_the_cancellation_is_still_a_cancellation(
    gcs: FakeClient,
) -> None:
    cancel(gcs)

    def wrapped(pipes: PipesContext, event: Any) -> None:
        cancellation = current_cancellation()
        try:
            cancellation.raise_if_cancelled(fresh=True)
        except RequestCancelled as exc:
            raise OSError(f"native writer failed: {exc}") from None

    status, body = call(gcs, wrapped, pipes_body())
    assert status == 409 and body["status"] == "cancelled"


def test_an_unreadable_marker_is_reported_in_the_run_and_the_job_runs_on(gcs: FakeClient) -> None:
    def forbidden(op: str, key: str) -> None:
        if op == "download" and key == MARKER:
            raise gexc.Forbidden("caller does not have storage.objects.get access")

    def slow(pipes: PipesContext, event: Any) -> dict[str, Any]:
        time.sleep(0.3)
        return {"done": not cancelled()}

    gcs.fault = forbidden
    status, body = call(gcs, slow, pipes_body())
    assert status == 200 and body["result"] == {"done": True}
    warnings = [m["params"] for m in sent(gcs) if m["method"] == "log"]
    assert [w["level"] for w in warnings] == ["WARNING"]
    assert "cannot be cancelled by Dagster" in warnings[0]["message"]


# --- the people job --------------------------------------------------------------------------


def people(num_rows: int, invocation_id: str, key_prefix: str = "t/1") -> dict[str, Any]:
    return pipes_body(
        {"num_rows": num_rows, "seed": 1}, invocation_id=invocation_id, key_prefix=key_prefix
    )


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """Batches (and generated chunks) of 40 rows: a few hundred rows make many batches."""
    monkeypatch.setattr(job, "BATCH_ROWS", 40)
    monkeypatch.setattr(fake_people, "CHUNK_ROWS", 40)
    return 40


def version_of(lake: Path) -> int:
    return deltalake.DeltaTable(str(lake / "people")).version()


def cancel_at_batch(
    monkeypatch: pytest.MonkeyPatch, gcs: FakeClient, at: int, *, wait_until_seen: bool
) -> None:
    """Write the marker when the job has streamed batch ``at`` (as a terminate mid-way)."""
    original = job._between_batches

    def hook(pipes: PipesContext, plan: Any, batch: int, rows: int, c: Cancellation) -> None:
        if batch == at:
            cancel(gcs)
            assert not wait_until_seen or c.wait(timeout=5), "the writer never saw the marker"
        original(pipes, plan, batch, rows, c)

    monkeypatch.setattr(job, "_between_batches", hook)


def test_a_cancelled_people_job_stops_between_batches_and_commits_nothing(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch, small_batches: int
) -> None:
    assert call(gcs, write_people, people(50, "inv-0", key_prefix="t/0"))[0] == 200
    before = version_of(lake)
    cancel_at_batch(monkeypatch, gcs, 2, wait_until_seen=True)

    status, body = call(gcs, write_people, people(400, "inv-1"))

    assert status == 409, body
    assert body["status"] == "cancelled"
    progress = [line for line in log_lines(gcs) if line.startswith("batch ")]
    assert progress == ["batch 1: 40 of 400 rows streamed to Delta", "batch 2: 80 of 400 rows "
                        "streamed to Delta"]  # fmt: skip
    assert not any("is at version" in line for line in log_lines(gcs))
    exception = closed_exception(gcs)
    assert exception is not None and exception["name"] == "RequestCancelled"
    assert version_of(lake) == before
    assert not [m for m in sent(gcs) if m["method"] == "report_asset_materialization"]


def test_a_cancellation_after_the_last_batch_is_caught_right_before_the_commit(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch, small_batches: int
) -> None:
    assert call(gcs, write_people, people(50, "inv-0", key_prefix="t/0"))[0] == 200
    before = version_of(lake)
    cancel_at_batch(monkeypatch, gcs, 3, wait_until_seen=False)  # the last of 3 batches
    slow_polls = CancellationPolicy(poll_interval=60)  # only the check before the commit looks

    status, body = call(gcs, write_people, people(120, "inv-1"), policy=slow_polls)

    assert status == 409, body
    assert [line for line in log_lines(gcs) if line.startswith("batch ")][-1].startswith("batch 3")
    assert version_of(lake) == before


def test_a_people_job_cancelled_before_it_writes_creates_no_table(
    gcs: FakeClient, lake: Path
) -> None:
    cancel(gcs)
    status, body = call(gcs, write_people, people(50, "inv-1"))
    assert status == 409, body
    assert list(lake.iterdir()) == []


def test_a_people_job_whose_messages_cannot_be_delivered_stops_before_committing(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch, small_batches: int
) -> None:
    assert call(gcs, write_people, people(50, "inv-0", key_prefix="t/0"))[0] == 200
    before = version_of(lake)
    original = job._between_batches

    def hook(pipes: PipesContext, plan: Any, batch: int, rows: int, c: Cancellation) -> None:
        if batch == 2:  # from now on no chunk can be written: Dagster would never see a result
            gcs.fault = lambda op, key: _refuse_uploads(op)
            pipes.log.info("this line cannot be delivered")
            deadline = time.monotonic() + 5
            while not _stops(c) and time.monotonic() < deadline:
                time.sleep(0.01)
        original(pipes, plan, batch, rows, c)

    monkeypatch.setattr(job, "_between_batches", hook)

    status, body = call(gcs, write_people, people(400, "inv-1"))

    assert status == 502, body
    assert body["error"]["type"] == "PipesMessageDeliveryError"
    assert body["error"]["job_outcome"]["error"]["type"] == "PipesMessageDeliveryError"
    assert version_of(lake) == before  # nothing committed that Dagster could not be told of


def _refuse_uploads(op: str) -> None:
    if op == "upload":
        raise gexc.Forbidden("no storage.objects.create")


def _stops(cancellation: Cancellation) -> bool:
    try:
        cancellation.raise_if_cancelled()
    except PipesMessageDeliveryError:
        return True
    return False


# --- the request's own deadline ---------------------------------------------------------------


def test_a_passed_deadline_stops_the_next_check_like_a_cancellation() -> None:
    now = [100.0]
    cancellation = Cancellation(None, "t/1", deadline_s=9.5, clock=lambda: now[0])
    now[0] += 9.4
    cancellation.raise_if_cancelled(fresh=True)  # not yet
    assert not cancellation.deadline_passed() and cancellation.stopped_by is None

    now[0] += 0.1
    with pytest.raises(DeadlineExceeded, match=r"deadline passed \(9.5 s after it started"):
        cancellation.raise_if_cancelled()
    assert isinstance(cancellation.stopped_by, RequestCancelled)  # a cancellation, 504
    assert DeadlineExceeded.status == 504 and not cancellation.is_set()
    with pytest.raises(DeadlineExceeded) as raised, cancellation.surfacing():
        raise RuntimeError("Generic DeltaTable error: External error: DeadlineExceeded")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_without_a_deadline_the_clock_never_stops_a_job() -> None:
    now = [0.0]
    cancellation = Cancellation(None, "t/1", clock=lambda: now[0])
    now[0] += 1e9
    cancellation.raise_if_cancelled(fresh=True)
    assert not cancellation.deadline_passed()


def test_a_job_past_its_deadline_answers_504_naming_it(gcs: FakeClient) -> None:
    def checks(pipes: PipesContext, event: Any) -> None:
        pipes.log.info("working")
        while not cancelled():
            time.sleep(0.01)
        raise_if_cancelled()

    started = time.monotonic()
    status, body = call(gcs, checks, pipes_body(), deadline_s=0.3)

    assert status == 504, body
    assert 0.3 <= time.monotonic() - started < 2
    assert body["status"] == "error" and body["error"]["type"] == "DeadlineExceeded"
    assert "deadline passed (0.3 s after it started" in body["error"]["message"]
    exception = closed_exception(gcs)
    assert exception is not None and exception["name"] == "DeadlineExceeded"
    assert log_lines(gcs) == ["working"]


def test_a_job_that_finishes_after_its_deadline_stands_and_says_so(
    gcs: FakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    def never_checks(pipes: PipesContext, event: Any) -> dict[str, Any]:
        time.sleep(0.2)
        return {"done": True}

    status, body = call(gcs, never_checks, pipes_body(), deadline_s=0.1)
    assert status == 200 and body["result"] == {"done": True}
    assert "finished after its deadline (0.1 s)" in caplog.text


def test_a_people_job_past_its_deadline_stops_between_batches_and_commits_nothing(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch, small_batches: int
) -> None:
    assert call(gcs, write_people, people(50, "inv-0", key_prefix="t/0"))[0] == 200
    before = version_of(lake)
    original = job._between_batches

    def slow_second_batch(pipes: PipesContext, plan: Any, batch: int, rows: int, c: Any) -> None:
        while batch == 2 and not c.deadline_passed():
            time.sleep(0.01)
        original(pipes, plan, batch, rows, c)

    monkeypatch.setattr(job, "_between_batches", slow_second_batch)

    status, body = call(gcs, write_people, people(400, "inv-1"), deadline_s=1.0)

    assert status == 504, body
    assert body["error"]["type"] == "DeadlineExceeded"
    progress = [line for line in log_lines(gcs) if line.startswith("batch ")]
    assert [line.split(":")[0] for line in progress] == ["batch 1", "batch 2"]
    assert version_of(lake) == before
    assert not [m for m in sent(gcs) if m["method"] == "report_asset_materialization"]


def test_the_deadline_is_the_platform_timeout_minus_a_margin() -> None:
    def deadline(**env: str) -> float | None:
        return FunctionSettings.from_env(env).request_deadline_s

    assert deadline() is None  # no timeout configured (local development): no deadline
    assert deadline(FUNCTION_TIMEOUT_S="540") == 510  # 10%, at most 30 s
    assert deadline(FUNCTION_TIMEOUT_S="60") == 54
    assert deadline(FUNCTION_TIMEOUT_S=" 60 ", FUNCTION_DEADLINE_MARGIN_S="5") == 55
    assert deadline(FUNCTION_TIMEOUT_S="2", FUNCTION_DEADLINE_MARGIN_S="0") == 2


@pytest.mark.parametrize(
    ("timeout", "margin", "named"),
    [("0", "", "FUNCTION_TIMEOUT_S"), ("-5", "", "FUNCTION_TIMEOUT_S"),
     ("ten", "", "FUNCTION_TIMEOUT_S"), ("nan", "", "FUNCTION_TIMEOUT_S"),
     ("inf", "", "FUNCTION_TIMEOUT_S"), ("60", "60", "FUNCTION_DEADLINE_MARGIN_S"),
     ("60", "-1", "FUNCTION_DEADLINE_MARGIN_S"), ("", "5", "FUNCTION_DEADLINE_MARGIN_S")],
)  # fmt: skip
def test_a_bad_timeout_setting_stops_the_instance_naming_it(
    timeout: str, margin: str, named: str
) -> None:
    env = {"FUNCTION_TIMEOUT_S": timeout, "FUNCTION_DEADLINE_MARGIN_S": margin}
    with pytest.raises(ValueError, match=named):
        FunctionSettings.from_env(env)


@pytest.mark.integration
def test_through_the_real_server_a_request_past_its_deadline_is_504_and_commits_nothing(
    tmp_path: Path,
) -> None:
    timeouts = {"FUNCTION_TIMEOUT_S": "2", "FUNCTION_DEADLINE_MARGIN_S": "1.5"}  # 0.5 s
    with local_stack(tmp_path, pipes_bucket=PIPES_BUCKET, function_env=timeouts) as stack:
        answer = requests.post(stack.function_url, json=people(2_000_000, "inv-late"), timeout=120)
        gcs = storage.Client(
            project="local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": stack.emulator_url},
        )
        closed = json.loads(
            gcs.bucket(PIPES_BUCKET).blob(last_chunk(gcs)).download_as_text().splitlines()[-1]
        )
        lake = Lake(stack.data_lake_uri, stack.emulator_url)  # gs:// in the emulator
        # (the table was created empty before the data, maybe)
        committed = 0 if lake.version("people") is None else lake.delta("people").count()

    assert answer.status_code == 504, answer.text
    error = answer.json()["error"]
    assert error["type"] == "DeadlineExceeded" and "deadline passed (0.5 s" in error["message"]
    assert closed["method"] == "closed"
    assert closed["params"]["exception"]["name"] == "DeadlineExceeded"
    assert committed == 0


def last_chunk(gcs: storage.Client) -> str:
    names = [blob.name for blob in gcs.list_blobs(PIPES_BUCKET, prefix="t/1/")]
    chunks = [name for name in names if name.removeprefix("t/1/").removesuffix(".json").isdigit()]
    return max(chunks, key=lambda name: int(name.removeprefix("t/1/").removesuffix(".json")))
