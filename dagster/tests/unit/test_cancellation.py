"""Forwarding a run's termination: the cancel marker, bounded in time, never masking the
interrupt (in-memory GCS). The real stack (``dagster dev`` terminating a run) is
dagster/tests/integration/test_termination.py."""

import json
import time
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from google.api_core import exceptions as gexc

from dagster_pipes_gcf import (
    CloudFunctionError,
    CloudFunctionInvoker,
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
    auth,
)
from dagster_pipes_gcf import message_reader as reader_module
from dagster_pipes_gcf.cancellation import (
    CancelOutcome,
    forwarding_termination,
    write_cancel_markers,
)
from dagster_pipes_gcf.invocation import Call
from devstack.fake_gcs import FakeClient, always_fail
from devstack.net import free_port

BUCKET = "pipes"
REASON = {"reason": "run terminated"}


@pytest.fixture
def gcs() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket(BUCKET)
    return fake


def markers(gcs: FakeClient) -> list[str]:
    return sorted(key for key in gcs.objects[BUCKET] if key.endswith("/cancel"))


def test_markers_are_created_once_per_prefix_in_order(gcs: FakeClient) -> None:
    gcs.objects[BUCKET]["p/s/1/cancel"] = "{}"  # cancelled before: still fine
    outcome = write_cancel_markers(
        lambda: gcs.bucket(BUCKET),  # type: ignore[arg-type,return-value]
        ["p/s/2", "p/s/1"],
        reason=REASON,
    )
    assert outcome == CancelOutcome(("gs://pipes/p/s/2/cancel", "gs://pipes/p/s/1/cancel"), ())
    assert outcome.ok and "asked the function to cancel" in outcome.describe()
    assert json.loads(gcs.objects[BUCKET]["p/s/2/cancel"]) == REASON
    assert gcs.objects[BUCKET]["p/s/1/cancel"] == "{}"  # never overwritten


def test_a_refused_marker_is_reported_not_raised(gcs: FakeClient) -> None:
    gcs.fault = always_fail(gexc.Forbidden("storage.objects.create denied"))
    outcome = write_cancel_markers(lambda: gcs.bucket(BUCKET), ["p/s/1"], reason=REASON)  # type: ignore[arg-type,return-value]
    assert not outcome.ok
    assert "gs://pipes/p/s/1/cancel: Forbidden" in outcome.describe()
    assert "may run to its end and commit" in outcome.describe()


def test_a_client_that_cannot_be_made_is_reported_not_raised() -> None:
    def no_client() -> Any:
        raise RuntimeError("no credentials")

    outcome = write_cancel_markers(no_client, ["p/s/1"], reason=REASON)
    assert outcome.problems == ("no client for the Pipes bucket (RuntimeError: no credentials)",)


def test_a_hanging_gcs_holds_the_step_no_longer_than_the_timeout(gcs: FakeClient) -> None:
    gcs.fault = lambda op, key: time.sleep(3)
    started = time.monotonic()
    outcome = write_cancel_markers(
        lambda: gcs.bucket(BUCKET),  # type: ignore[arg-type,return-value]
        ["p/s/1"],
        reason=REASON,
        timeout=0.3,
    )
    assert time.monotonic() - started < 1.0
    assert outcome.problems == ("GCS did not confirm within 0.3s",)


@pytest.mark.parametrize("interrupt", [DagsterExecutionInterruptedError, KeyboardInterrupt])
def test_termination_is_forwarded_and_the_interrupt_goes_on(
    interrupt: type[BaseException],
) -> None:
    reports: list[str] = []
    calls: list[str] = []

    def cancel(why: str) -> CancelOutcome:
        calls.append(why)
        return CancelOutcome(("gs://pipes/p/s/1/cancel",), ())

    with pytest.raises(interrupt), forwarding_termination(cancel, reports.append):
        raise interrupt()
    assert calls == ["run terminated while the function was working"]
    assert reports == [
        "[pipes] run terminated while the function was working: asked the function to "
        "cancel (gs://pipes/p/s/1/cancel)"
    ]


def test_a_failing_cancel_never_masks_the_interrupt() -> None:
    def cancel(why: str) -> CancelOutcome:
        raise OSError("broken")

    with pytest.raises(KeyboardInterrupt), forwarding_termination(cancel, print):
        raise KeyboardInterrupt


@pytest.mark.parametrize("may_still_run", [True, False])
def test_a_call_that_failed_while_the_function_may_still_work_is_cancelled(
    may_still_run: bool,
) -> None:
    reports: list[str] = []
    calls: list[str] = []

    def cancel(why: str) -> CancelOutcome:
        calls.append(why)
        return CancelOutcome(("gs://pipes/p/s/1/cancel",), ())

    failure = CloudFunctionError(description="did not answer within 1s")
    failure.function_may_still_run = may_still_run
    with (
        pytest.raises(CloudFunctionError) as raised,
        forwarding_termination(cancel, reports.append),
    ):
        raise failure
    assert raised.value is failure  # the call's own error goes on
    why = "the call failed while the function may still be working"
    assert calls == ([why] if may_still_run else [])
    assert reports == (
        [f"[pipes] {why}: asked the function to cancel (gs://pipes/p/s/1/cancel)"]
        if may_still_run
        else []
    )


def test_an_ordinary_failure_is_no_termination() -> None:
    calls: list[str] = []
    with pytest.raises(ValueError), forwarding_termination(calls.append, print):  # type: ignore[arg-type]
        raise ValueError("the call failed")
    assert calls == []


# --- the reader: which prefixes, which client -------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self._context = SimpleNamespace(
            log=SimpleNamespace(log=lambda level, text: self.notes.append(text))
        )

    def handle_message(self, message: dict[str, Any]) -> None:
        pass


def test_every_attempt_that_may_still_run_gets_a_marker_the_live_one_first(
    gcs: FakeClient,
) -> None:
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    reader.new_key_prefix = lambda: "p/s"  # type: ignore[method-assign]
    with reader.read_messages(Handler()) as params:  # type: ignore[arg-type]
        attempts = reader.attempts(params)
        attempts.begin_attempt(2, "connection reset after sending")
        outcome = attempts.cancel(REASON)
        attempts.answered()  # (the drain then ends the session quickly)
        gcs.objects[BUCKET]["p/s/2/1.json"] = json.dumps({"method": "closed", "params": {}})
    assert outcome.written == ("gs://pipes/p/s/2/cancel", "gs://pipes/p/s/1/cancel")
    assert markers(gcs) == ["p/s/1/cancel", "p/s/2/cancel"]


def test_a_retry_cancels_only_the_abandoned_attempts_and_reading_goes_on(
    gcs: FakeClient,
) -> None:
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    reader.new_key_prefix = lambda: "p/s"  # type: ignore[method-assign]
    handler = Handler()
    with reader.read_messages(handler) as params:  # type: ignore[arg-type]
        attempts = reader.attempts(params)
        attempts.begin_attempt(2, "connection reset after sending")
        attempts.begin_attempt(3, "HTTP 502 from the platform")
        outcome = attempts.cancel(REASON, abandoned_only=True)
        gcs.objects[BUCKET]["p/s/3/1.json"] = json.dumps({"method": "closed", "params": {}})
        deadline = time.monotonic() + 5
        while not attempts.live.closed_seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert attempts.live.closed_seen, "the poller must go on reading the live attempt"
        attempts.answered()
    assert outcome.written == ("gs://pipes/p/s/2/cancel", "gs://pipes/p/s/1/cancel")
    assert markers(gcs) == ["p/s/1/cancel", "p/s/2/cancel"]


def test_an_unknown_session_has_no_attempts_to_cancel(gcs: FakeClient) -> None:
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    with pytest.raises(DagsterPipesExecutionError, match="no open Pipes session"):
        reader.attempts({"bucket": BUCKET, "key_prefix": "nope"})
    assert markers(gcs) == []


ORCHESTRATOR = "orchestrator@p.iam.gserviceaccount.com"


def test_under_impersonation_the_session_reads_read_only_and_the_marker_is_written_read_write(
    gcs: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the real order (the session opens, then the run is terminated), against a bucket
    that refuses a write made with a read-only token, as GCS does."""
    minted: list[tuple[str, str]] = []

    def impersonated(principal: str, scope: str) -> SimpleNamespace:
        minted.append((principal, scope))
        return SimpleNamespace(scope=scope)

    def client_for(credentials: SimpleNamespace, project: str | None) -> FakeClient:
        scoped = FakeClient(objects=gcs.objects)
        if credentials.scope == auth.DEVSTORAGE_READ_ONLY_SCOPE:
            scoped.fault = refuse_writes
        return scoped

    def refuse_writes(operation: str, key: str) -> None:
        if operation == "upload":
            raise gexc.Forbidden("insufficient scope: the token is read-only")

    monkeypatch.setattr(auth, "impersonated", impersonated)
    monkeypatch.setattr(reader_module.storage, "Client", client_for)
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, impersonate_service_account=ORCHESTRATOR)
    reader.new_key_prefix = lambda: "p/s"  # type: ignore[method-assign]
    with reader.read_messages(Handler()) as params:  # type: ignore[arg-type]
        attempts = reader.attempts(params)
        outcome = attempts.cancel(REASON)
        attempts.answered()
        gcs.objects[BUCKET]["p/s/1/1.json"] = json.dumps({"method": "closed", "params": {}})
    assert outcome == CancelOutcome(("gs://pipes/p/s/1/cancel",), ())
    assert markers(gcs) == ["p/s/1/cancel"]
    assert minted == [
        (ORCHESTRATOR, auth.DEVSTORAGE_READ_ONLY_SCOPE),  # when the session opened
        (ORCHESTRATOR, auth.DEVSTORAGE_READ_WRITE_SCOPE),  # when the run was terminated
    ]


# --- the client: a run terminated while the call waits ---------------------------------------


class InterruptedInvoker:
    """Starts attempt 1 (as the real invoker does), then the run is terminated."""

    policy = InvocationPolicy()

    def __init__(self, interrupt: type[BaseException]) -> None:
        self.interrupt = interrupt

    def start(self, url: str, **kwargs: Any) -> Call:
        interrupt = self.interrupt

        class InterruptedCall(Call):
            def post(self, payload: Any, handler_started: Any = None) -> None:
                raise interrupt()

        return InterruptedCall(CloudFunctionInvoker(), url, kwargs["headers"], 1.0)


def run_with(
    client: PipesCloudFunctionClient, url: str = "http://127.0.0.1:1/"
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    @dg.asset
    def called(context: dg.AssetExecutionContext, pipes: PipesCloudFunctionClient) -> Any:
        return pipes.run(context=context, function_url=url).get_results()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [called], resources={"pipes": client}, instance=instance, raise_on_error=False
    )
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, logs


@pytest.mark.parametrize("forward", [True, False])
def test_a_terminated_run_writes_the_marker_of_its_attempt(gcs: FakeClient, forward: bool) -> None:
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    client = PipesCloudFunctionClient(
        message_reader=reader,
        invoker=InterruptedInvoker(DagsterExecutionInterruptedError),  # type: ignore[arg-type]
        forward_termination=forward,
    )
    started = time.monotonic()
    result, logs = run_with(client)

    assert time.monotonic() - started < 30
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "DagsterExecutionInterruptedError" in str(failure.step_failure_data.error)
    forwarded = [line for line in logs if "run terminated while the function" in line]
    if forward:
        (marker,) = markers(gcs)
        assert marker.endswith("/1/cancel") and marker.startswith("dagster-pipes/")
        assert json.loads(gcs.objects[BUCKET][marker])["run_id"] == result.run_id
        assert forwarded == [
            "[pipes] run terminated while the function was working: asked the function to "
            f"cancel (gs://{BUCKET}/{marker})"
        ]
    else:
        assert markers(gcs) == [] and forwarded == []


def test_a_terminated_run_on_a_hung_bucket_stops_waiting_within_two_seconds(
    gcs: FakeClient,
) -> None:
    """The marker write and the poller's stop both meet the hung bucket: they overlap."""
    times: dict[str, float] = {}

    class LateInterrupt:
        policy = InvocationPolicy()

        def start(self, url: str, **kwargs: Any) -> Call:
            class LateCall(Call):
                def post(self, payload: Any, handler_started: Any = None) -> None:
                    time.sleep(0.3)  # the poller is now inside a download that hangs
                    times["interrupted"] = time.monotonic()
                    raise DagsterExecutionInterruptedError()

            return LateCall(CloudFunctionInvoker(), url, kwargs["headers"], 1.0)

    def hung(operation: str, key: str) -> None:
        time.sleep(5)

    gcs.fault = hung
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    client = PipesCloudFunctionClient(message_reader=reader, invoker=LateInterrupt())  # type: ignore[arg-type]

    @dg.asset
    def called(context: dg.AssetExecutionContext, pipes: PipesCloudFunctionClient) -> Any:
        try:
            return pipes.run(context=context, function_url="http://127.0.0.1:1/").get_results()
        finally:
            times["returned"] = time.monotonic()

    result = dg.materialize([called], resources={"pipes": client}, raise_on_error=False)
    assert not result.success
    assert times["returned"] - times["interrupted"] < 2.0, times


@pytest.mark.parametrize("retry_ambiguous", [False, True])
def test_a_call_that_never_reached_a_function_fails_at_once_and_writes_no_marker(
    gcs: FakeClient, retry_ambiguous: bool
) -> None:
    """Connection refused on every attempt: no message can come and nothing runs to cancel,
    whether or not ambiguous outcomes would be retried."""
    reader = PipesCloudStorageMessageReader(bucket=BUCKET, client=gcs)  # type: ignore[arg-type]
    policy = InvocationPolicy(
        attempts=3, initial_backoff=0.01, max_backoff=0.01, retry_ambiguous=retry_ambiguous
    )
    client = PipesCloudFunctionClient(
        message_reader=reader, invoker=CloudFunctionInvoker(policy=policy)
    )
    times: dict[str, float] = {}

    @dg.asset
    def unreachable(context: dg.AssetExecutionContext, pipes: PipesCloudFunctionClient) -> Any:
        times["called"] = time.monotonic()
        try:
            url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
            return pipes.run(context=context, function_url=url).get_results()
        finally:
            times["failed"] = time.monotonic()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [unreachable], resources={"pipes": client}, instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "could not reach the Cloud Function" in str(failure.step_failure_data.error)
    assert "after 3 attempt(s)" in str(failure.step_failure_data.error)
    assert times["failed"] - times["called"] < 1.5, "it waited for messages that cannot come"
    assert markers(gcs) == []
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert not any("cancel" in line for line in logs), logs
