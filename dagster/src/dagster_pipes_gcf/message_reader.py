"""Pipes message readers for the JSON-lines chunks ``<key_prefix>/1.json``, ``2.json``, ...
that the function's (or task's) message writer uploads to GCS.

Unlike the stock ``PipesBlobStoreMessageReader``, these read every available chunk per
poll, adapt their polling rate, hand each message over once, report background errors in
the run, and fail the step when ``closed`` is missing or a chunk is skipped.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import google.auth.exceptions
from dagster import PipesLaunchedData, PipesMessageHandler, PipesMessageReader
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesOpenedData, PipesParams
from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from requests import exceptions as rexc
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from dagster_pipes_gcf.auth import (
    DEVSTORAGE_READ_ONLY_SCOPE,
    DEVSTORAGE_READ_WRITE_SCOPE,
    impersonated,
    missing_credentials_hint,
)
from dagster_pipes_gcf.cancellation import CancelOutcome, write_cancel_markers
from dagster_pipes_gcf.invocation import HandlerStarted

logger = logging.getLogger(__name__)

TRANSIENT_GCS_ERRORS = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    rexc.ConnectionError,
    rexc.Timeout,
)
GCS_ERRORS = (gexc.GoogleAPIError, rexc.RequestException)
# Delivered only from the attempt that answered the call; logs stream live from any attempt.
RESULT_METHODS = frozenset(
    {"report_asset_materialization", "report_asset_check", "report_custom_message", "closed"}
)
# How long stopping the background poller may block the step (a terminated run must end fast).
STOP_JOIN_TIMEOUT_S = 1.0
_CHUNK_NAME = re.compile(r"/?(\d+)\.json$")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# The function accepts key prefixes up to 512 characters: room for "/<32 hex>/<attempt>".
MAX_READER_PREFIX = 512 - 1 - 32 - 1 - 6
NEVER = threading.Event()  # a stop that is never asked for (reads after the call)


@dataclass(frozen=True)
class PollingPolicy:
    """How often the reader looks for new chunks, and how long it waits for the end.

    Attributes:
        min_interval: seconds between polls right after start and while chunks arrive.
        max_interval: upper bound the interval backs off to while no chunk arrives.
        backoff: factor applied to the interval after each empty poll.
        drain_timeout: seconds to wait for the ``closed`` message after the call returned.
        download_attempts: attempts per chunk download on transient GCS errors.
        request_timeout: seconds one GCS request may take.
        list_deadline: seconds a listing of chunks is retried on transient GCS errors
            (google-cloud-storage's own default, 120 s, would hold a failing step for two
            minutes); then the step fails naming the listing.
    """

    min_interval: float = 0.05
    max_interval: float = 1.0
    backoff: float = 1.5
    drain_timeout: float = 30.0
    download_attempts: int = 5
    request_timeout: float = 10.0
    list_deadline: float = 10.0

    def next_interval(self, interval: float, found: int) -> float:
        return self.min_interval if found else min(interval * self.backoff, self.max_interval)


@dataclass(frozen=True)
class LogCoalescing:
    """Delivery of log floods: Dagster stores one event per log call (~6 ms on the SQLite
    storage of ``dagster dev``), so 10,000 lines would stall the step.

    When one chunk holds more than ``threshold`` log messages, consecutive lines of the same
    level are delivered as one multi-line entry of at most ``max_lines`` lines, in order.
    """

    threshold: int = 100
    max_lines: int = 200


def coalesce_logs(messages: list[Any], rule: LogCoalescing | None) -> list[Any]:
    """``messages`` with runs of same-level log messages joined, if the chunk is a flood."""
    if rule is None or sum(m.get("method") == "log" for m in messages) <= rule.threshold:
        return messages
    out: list[Any] = []
    run: list[Any] = []

    def flush() -> None:
        if run:
            lines = "\n".join(str(m["params"].get("message", "")) for m in run)
            out.append({**run[0], "params": {**run[0]["params"], "message": lines}})
            run.clear()

    for message in messages:
        if message.get("method") != "log":
            flush()
            out.append(message)
            continue
        level = (message.get("params") or {}).get("level")
        if run and (run[0]["params"].get("level") != level or len(run) >= rule.max_lines):
            flush()
        run.append({**message, "params": message.get("params") or {}})
    flush()
    return out


class PipesHandlerError(DagsterPipesExecutionError):
    """Dagster's message handler raised on a message (which is not delivered again)."""


@dataclass
class ChunkStream:
    """The chunks under one key prefix, read message by message: each is handed over once,
    even when handling one raises (the chunk is neither re-read nor re-delivered)."""

    bucket: storage.Bucket
    key_prefix: str
    policy: PollingPolicy
    coalescing: LogCoalescing | None = None
    next_index: int = 1
    messages_read: int = 0
    closed_seen: bool = False
    _messages: deque[Any] | None = None

    @property
    def location(self) -> str:
        return f"gs://{self.bucket.name}/{self.key_prefix}"

    def key(self, index: int) -> str:
        return f"{self.key_prefix}/{index}.json"

    def next_message(
        self, stop: threading.Event, listed: Container[str] | None = None
    ) -> Any | None:
        """The next message, or None when the next chunk is not there (yet) or after ``closed``;
        with ``listed`` (the names a listing showed), a chunk not among them is not looked for."""
        while not self._messages:
            if self.closed_seen or (listed is not None and self.key(self.next_index) not in listed):
                return None
            if (text := self._download(stop)) is None:
                return None
            self._messages = deque(self._parse(text))
            self.next_index += 1
        message = self._messages.popleft()
        self.closed_seen = self.closed_seen or message.get("method") == "closed"
        return message

    def _parse(self, text: str) -> list[Any]:
        messages: list[Any] = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                messages += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as exc:
                raise DagsterPipesExecutionError(
                    f"malformed Pipes message in {self.key(self.next_index)} line {number}: {exc}"
                ) from None
        self.messages_read += len(messages)
        return coalesce_logs(messages, self.coalescing)

    def _download(self, stop: threading.Event) -> str | None:
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.download_attempts) | stop_when_event_set(stop),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            sleep=stop.wait,  # type: ignore[arg-type]  # (its bool is unused)
            retry=retry_if_exception_type(TRANSIENT_GCS_ERRORS),
            reraise=True,
        )
        blob = self.bucket.blob(self.key(self.next_index))
        try:
            text = retrying(blob.download_as_text, retry=None, timeout=self.policy.request_timeout)
            return str(text)
        except gexc.NotFound as exc:
            if "bucket" in str(exc).lower() and "does not exist" in str(exc).lower():
                raise DagsterPipesExecutionError(
                    f"Pipes bucket gs://{self.bucket.name} does not exist: {exc}"
                ) from None
            return None
        except gexc.Forbidden as exc:
            raise DagsterPipesExecutionError(
                f"no permission to read Pipes messages at {self.location}: the orchestrator "
                f"needs storage.objects.get on bucket {self.bucket.name} ({exc})"
            ) from None
        except GCS_ERRORS as exc:  # quoted below: chained, it would be printed twice
            raise DagsterPipesExecutionError(
                f"could not read Pipes messages from {self.location} after "
                f"{self.policy.download_attempts} attempt(s): {type(exc).__name__}: {exc}"
            ) from None

    def written(self) -> bool:
        """Whether the writer stored any chunk; an unknown answer counts as yes (callers
        use it to decide that work may have started)."""
        if self.next_index > 1 or self._messages:
            return True
        try:
            return bool(self.bucket.blob(self.key(1)).exists(timeout=self.policy.request_timeout))
        except GCS_ERRORS:
            return True

    def incomplete(self, timeout: float) -> str:
        """Why the stream ended without ``closed``: a gap, or a last chunk that never came."""
        try:
            blobs = self.bucket.client.list_blobs(
                self.bucket,
                prefix=f"{self.key_prefix}/",
                timeout=self.policy.request_timeout,
                retry=DEFAULT_RETRY.with_timeout(self.policy.list_deadline),
            )
            present = [int(m.group(1)) for b in blobs if (m := _CHUNK_NAME.search(b.name))]
        except Exception:  # noqa: BLE001 - a diagnosis: it never replaces the error it explains
            present = []
        if later := sorted(i for i in present if i > self.next_index):
            return (
                f"chunk {self.next_index} is missing while chunk(s) {later[:10]} exist at "
                f"{self.location} ({self.messages_read} message(s) read)"
            )
        return (
            f"`closed` message not received within {timeout:g}s after the end: read chunks "
            f"1..{self.next_index - 1} ({self.messages_read} message(s)) from {self.location}; "
            f"chunk {self.next_index} never appeared. The writer may have crashed, timed out or "
            "failed to upload its last messages."
        )


class MessageStreams:
    """The chunk streams of one Pipes session, read by a background poller while the call
    runs, then read to the end."""

    def __init__(
        self,
        *,
        bucket: storage.Bucket,
        session_prefix: str,
        handler: PipesMessageHandler,
        policy: PollingPolicy,
        coalescing: LogCoalescing | None,
    ):
        self.bucket, self.session_prefix, self.handler = bucket, session_prefix, handler
        self.policy, self.coalescing = policy, coalescing
        self.background_error: BaseException | None = None
        self.handler_error: PipesHandlerError | None = None
        self._reading = threading.Lock()  # one reader at a time: poller or final read
        self._stop = threading.Event()
        self._stop_asked: float | None = None
        self.poller = threading.Thread(target=self._poll, name="pipes-gcs-reader", daemon=True)

    def chunks(self, key_prefix: str) -> ChunkStream:
        return ChunkStream(self.bucket, key_prefix, self.policy, self.coalescing)

    def params(self) -> PipesParams:
        return {"bucket": self.bucket.name, "key_prefix": self.session_prefix}

    def read_available(self, stop: threading.Event) -> int:
        """Deliver what is there now; return how many messages were delivered."""
        raise NotImplementedError

    def read_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        interval = self.policy.min_interval
        while True:
            found = self.read_available(NEVER)
            if done() or time.monotonic() >= deadline:
                return
            interval = self.policy.next_interval(interval, found)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def after_success(self) -> None:
        """The call returned: read what it wrote to the end."""

    def after_failure(self) -> None:
        """The call failed: deliver what is left, best effort (the call's error wins)."""

    def record_background_error(self, exc: BaseException) -> None:
        """Report an error of the background poller in the run (once per kind of error)."""
        report = getattr(self.handler, "report_pipes_framework_exception", None)
        if report is not None and self.background_error is None and self.handler_error is None:
            report(f"{type(self).__name__} background reader", (type(exc), exc, exc.__traceback__))
        if isinstance(exc, PipesHandlerError):
            if self.handler_error is None:
                self.handler_error = exc
                self.note(logging.WARNING, f"[pipes] {exc}; the step fails after the call")
            return
        if self.background_error is None:
            self.note(
                logging.WARNING,
                f"[pipes] reading messages from gs://{self.bucket.name}/{self.session_prefix} "
                f"failed in the background: {type(exc).__name__}: {exc}; retrying, and again "
                "after the call",
            )
        self.background_error = exc

    def stop_polling(self) -> None:
        """Ask the poller to stop, without waiting for it."""
        self._stop_asked = self._stop_asked or time.monotonic()
        self._stop.set()

    def join_poller(self) -> None:
        """Stop polling, waiting at most :data:`STOP_JOIN_TIMEOUT_S` since the stop was first
        asked for: a request in flight ends on its own timeout."""
        self.stop_polling()
        waited = time.monotonic() - (self._stop_asked or 0.0)
        self.poller.join(timeout=max(0.0, STOP_JOIN_TIMEOUT_S - waited))

    def _poll(self) -> None:
        interval = self.policy.min_interval
        while not self._stop.is_set():
            try:
                found = self.read_available(self._stop)
            except Exception as exc:  # noqa: BLE001 - reported in the run, read again after
                if self._stop.is_set():
                    return
                self.record_background_error(exc)
                found, interval = 0, self.policy.max_interval
            interval = self.policy.next_interval(interval, found)
            self._stop.wait(interval)

    def note(self, level: int, text: str) -> None:
        """A line in the run's log, or in this module's logger outside a step."""
        # PipesMessageHandler keeps the step context privately; Dagster's threaded readers
        # report their background errors through it the same way.
        context = getattr(self.handler, "_context", None)
        (context.log if context is not None else logger).log(level, text)


@dataclass
class _Attempt:
    number: int
    stream: ChunkStream
    answered: bool = False
    abandoned: bool = False
    deferred: deque[Any] = field(default_factory=deque)


class PipesAttemptStreams(MessageStreams):
    """The attempt-scoped message streams of one Pipes session.

    Attempt ``n`` writes under ``<session prefix>/<n>``. Logs stream live from the running
    attempt; results (materializations, checks, custom messages, ``closed``) are held back
    until their attempt :meth:`answered`. :meth:`begin_attempt` abandons the live attempt:
    it is no longer read, its held-back results are dropped, and a line in the run says so.
    A client that never calls these methods gets attempt 1, answering when the call returns.
    """

    def __init__(self, *, marker_bucket: Callable[[], storage.Bucket], **streams: Any):
        super().__init__(**streams)
        self.marker_bucket = marker_bucket
        self._attempts = [_Attempt(1, self.chunks(f"{self.session_prefix}/1"))]
        self._opened_delivered = False
        self._state = threading.Lock()  # attempt switches vs. delivery of one message
        # The answering attempt's `closed` carried the function's exception: Dagster showed
        # it (with its remote stack) in the run's "pipes closed with exception" event.
        self.closed_with_exception = False

    @property
    def live(self) -> _Attempt:
        return self._attempts[-1]

    @property
    def stream(self) -> ChunkStream:
        """The chunk stream of the live attempt."""
        return self.live.stream

    def params(self) -> PipesParams:
        """``DAGSTER_PIPES_MESSAGES`` params of the live attempt."""
        return {"bucket": self.bucket.name, "key_prefix": self.stream.key_prefix}

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        """Make attempt ``number`` the live one (abandoning attempt ``number - 1``) and
        return the params it must be sent."""
        with self._state:
            live = self.live
            if number == live.number:
                return self.params()
            if number != live.number + 1 or live.answered:
                raise DagsterPipesExecutionError(
                    f"attempt {number} cannot follow attempt {live.number}"
                    + (" (it answered)" if live.answered else "")
                )
            live.abandoned = True
            live.deferred.clear()
            self._attempts.append(_Attempt(number, self.chunks(f"{self.session_prefix}/{number}")))
        self.note(
            logging.WARNING,
            f"[pipes] attempt {live.number} abandoned ({abandoned_because or 'retried'}); "
            f"following attempt {number} under {self.stream.location}",
        )
        return self.params()

    def handler_started(self, number: int) -> bool:
        """Whether attempt ``number``'s handler ran: it wrote Pipes messages."""
        with self._state:
            attempt = next(a for a in self._attempts if a.number == number)
        return attempt.stream.written()

    def cancel(self, reason: Mapping[str, str], *, abandoned_only: bool = False) -> CancelOutcome:
        """Write ``<prefix>/cancel`` for every attempt that may still be running (the live one
        first) and stop reading; with ``abandoned_only``, only for the attempts given up for
        a retry (newest first), reading on. Bounded in time; never raises."""
        if not abandoned_only:
            self.stop_polling()  # it winds down while the markers are written
        with self._state:
            prefixes = [
                a.stream.key_prefix
                for a in reversed(self._attempts)
                if not a.answered and (a.abandoned or not abandoned_only)
            ]
        return write_cancel_markers(self.marker_bucket, prefixes, reason=reason)

    def answered(self) -> None:
        """The live attempt answered the call: its results are the call's results."""
        with self._state:
            self.live.answered = True

    @property
    def done(self) -> bool:
        """The answering attempt's ``closed`` was read and every held-back result delivered."""
        live = self.live
        return live.answered and live.stream.closed_seen and not live.deferred

    def read_available(self, stop: threading.Event) -> int:
        """A handler error is recorded (the step fails after the call) and reading goes on:
        the message is consumed and not delivered again."""
        delivered = 0
        with self._reading:
            attempt = self.live
            while not stop.is_set() and not attempt.abandoned:
                if attempt.answered and attempt.deferred:
                    message = attempt.deferred.popleft()
                elif (message := attempt.stream.next_message(stop)) is None:
                    break
                try:
                    delivered += self._deliver(attempt, message)
                except PipesHandlerError as exc:  # recorded whoever reads: the step must fail
                    self.record_background_error(exc)
        return delivered

    def _deliver(self, attempt: _Attempt, message: Any) -> int:
        method = message.get("method")
        with self._state:
            if attempt.abandoned:
                return 0
            if method in RESULT_METHODS and not attempt.answered:
                attempt.deferred.append(message)
                return 0
            if method == "opened":
                if self._opened_delivered:  # a retry opens again; Dagster needs it once
                    return 0
                self._opened_delivered = True
            try:
                self.handler.handle_message(message)
            except Exception as exc:
                raise PipesHandlerError(
                    f"Dagster could not handle the Pipes message {method!r} of attempt "
                    f"{attempt.number} ({attempt.stream.location}): {type(exc).__name__}: {exc}"
                ) from exc
            if method == "closed" and (message.get("params") or {}).get("exception"):
                self.closed_with_exception = True
        return 1

    def after_success(self) -> None:
        self.answered()  # a client that does not drive attempts: attempt 1 answered
        timeout = self.policy.drain_timeout
        self.read_until(lambda: self.done, timeout)
        if not self.done:
            raise DagsterPipesExecutionError(
                f"Pipes messages are incomplete: {self.stream.incomplete(timeout)}"
            )
        if self.handler_error is not None:
            raise self.handler_error

    def after_failure(self) -> None:
        # An attempt that wrote no chunk never ran Pipes (refused, unreachable, 429s): no
        # `closed` can come, so there is nothing to wait for.
        self.answered()
        if self.stream.written():
            with suppress(Exception):
                self.read_until(lambda: self.done, min(self.policy.drain_timeout, 5.0))


class AttemptStreams(Protocol):
    """The HTTP attempts of one open Pipes session, as the function client drives them: the
    params to send attempt ``number`` (after the first, its predecessor was abandoned),
    whether an attempt's handler ran (None: cannot tell), asking the attempts that may still
    run to stop (None: cannot ask), and that the live attempt answered. After the answer,
    ``closed_with_exception`` says whether its ``closed`` carried the function's exception
    (Dagster showed it in the run)."""

    @property
    def closed_with_exception(self) -> bool: ...

    @property
    def handler_started(self) -> HandlerStarted | None: ...

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams: ...

    def cancel(
        self, reason: Mapping[str, str], *, abandoned_only: bool = False
    ) -> CancelOutcome | None: ...

    def answered(self) -> None: ...


class PipesAttemptMessageReader(PipesMessageReader):
    """A message reader that tells :class:`~dagster_pipes_gcf.PipesCloudFunctionClient`
    where each HTTP attempt of a session writes its messages."""

    @abstractmethod
    def attempts(self, params: PipesParams) -> AttemptStreams:
        """The attempts of the open session that yielded ``params``."""


def validated_prefix(prefix: str) -> str:
    """``prefix`` without outer slashes, if the function accepts it as the start of a key
    prefix (segments of ``[A-Za-z0-9._-]``, not ``.`` or ``..``; room for session and attempt)."""
    stripped = prefix.strip("/")
    segments = stripped.split("/") if stripped else []
    if len(stripped) > MAX_READER_PREFIX or not all(
        _PREFIX_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in segments
    ):
        raise ValueError(
            f"Pipes message prefix {prefix!r} must be at most {MAX_READER_PREFIX} characters "
            "of '/'-separated segments of letters, digits, '.', '_' or '-' (not '.' or '..')"
        )
    return stripped


class GcsMessageReader(PipesMessageReader):
    """What this package's GCS readers share: the bucket and its clients, a unique key
    prefix per session under ``prefix``, and the session's poller (arguments: see
    :class:`PipesCloudStorageMessageReader`)."""

    default_prefix = "dagster-pipes"

    def __init__(
        self,
        *,
        bucket: str,
        client: storage.Client | None = None,
        prefix: str | None = None,
        polling: PollingPolicy | None = None,
        log_coalescing: LogCoalescing | None = LogCoalescing(),
        impersonate_service_account: str | None = None,
    ):
        self.bucket = bucket
        self.prefix = validated_prefix(self.default_prefix if prefix is None else prefix)
        self.polling = polling or PollingPolicy()
        self.log_coalescing = log_coalescing
        self.impersonate_service_account = impersonate_service_account
        self._client = client
        # A given client reads and writes markers; one created here under impersonation reads
        # with a read-only token, so markers then need a read-write client of their own.
        self._marker_client = client
        self._sessions: dict[str, Any] = {}  # open sessions by key prefix
        self._sessions_lock = threading.Lock()

    @property
    def client(self) -> storage.Client:
        """The client that reads messages (read-only scoped under impersonation)."""
        if self._client is None:
            self._client = self._new_client(DEVSTORAGE_READ_ONLY_SCOPE)
        return self._client

    @property
    def marker_client(self) -> storage.Client:
        """The client that writes cancellation markers: one that may create objects (IAM lets
        the orchestrator create objects named ``*/cancel`` and nothing else)."""
        if self._marker_client is None:
            if self.impersonate_service_account:
                self._marker_client = self._new_client(DEVSTORAGE_READ_WRITE_SCOPE)
            else:
                self._marker_client = self.client  # default scopes include read-write
        return self._marker_client

    def _new_client(self, scope: str) -> storage.Client:
        try:
            if not self.impersonate_service_account:
                return storage.Client()
            # project=None: objects need no project (and ADC may name none).
            credentials = impersonated(self.impersonate_service_account, scope)
            return storage.Client(credentials=credentials, project=None)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise DagsterPipesExecutionError(
                f"cannot read Pipes messages from gs://{self.bucket}: "
                f"{missing_credentials_hint(exc)}"
            ) from None

    def new_key_prefix(self) -> str:
        """A new session prefix ``<prefix>/<32 hex>``; attempts or tasks write below it."""
        return f"{self.prefix}/{uuid.uuid4().hex}" if self.prefix else uuid.uuid4().hex

    def _streams(self, handler: PipesMessageHandler) -> MessageStreams:
        raise NotImplementedError

    def _session(self, params: PipesParams) -> Any:
        with self._sessions_lock:
            streams = self._sessions.get(str(params.get("key_prefix")))
        if streams is None:
            raise DagsterPipesExecutionError(
                f"no open Pipes session of this reader has the params {dict(params)}"
            )
        return streams

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        streams = self._streams(handler)
        params = streams.params()
        key = str(params["key_prefix"])
        with self._sessions_lock:
            self._sessions[key] = streams
        streams.poller.start()
        try:
            yield params
        except Exception:
            streams.join_poller()
            streams.after_failure()
            raise
        except BaseException:  # run terminated (KeyboardInterrupt, Dagster's interrupt)
            streams.join_poller()
            raise
        else:
            streams.join_poller()
            streams.after_success()
        finally:
            with self._sessions_lock:
                self._sessions.pop(key, None)


class PipesCloudStorageMessageReader(GcsMessageReader, PipesAttemptMessageReader):
    """Reads Pipes messages that the Cloud Function writes to a GCS bucket.

    Each session yields the params of its attempt 1; a client that retries HTTP calls gets
    the session's :class:`PipesAttemptStreams` with :meth:`attempts`.

    Args:
        bucket: name of the Pipes bucket (the orchestrator needs object read on it; list too
            for :class:`~dagster_pipes_gcf.PipesCloudRunTaskMessageReader`).
        client: a ``google.cloud.storage.Client``; created on first use when omitted.
        impersonate_service_account: when the client is created here, read as this service
            account (the orchestrator's), minted from the caller's credentials. Cancellation
            markers are then written with a read-write-scoped client of the same account
            (created when a run is terminated; IAM limits it to objects named ``*/cancel``).
        prefix: folder under which each session gets a unique key prefix (by default
            ``dagster-pipes``).
        polling: polling and drain settings.
        log_coalescing: how log floods are delivered (``None``: one entry per line always).
    """

    def _streams(self, handler: PipesMessageHandler) -> PipesAttemptStreams:
        # client.bucket() makes no request: reading objects needs no bucket-level permission.
        return PipesAttemptStreams(
            bucket=self.client.bucket(self.bucket),
            session_prefix=self.new_key_prefix(),
            handler=handler,
            policy=self.polling,
            coalescing=self.log_coalescing,
            marker_bucket=lambda: self.marker_client.bucket(self.bucket),
        )

    def attempts(self, params: PipesParams) -> PipesAttemptStreams:
        """The attempt streams of the open session that yielded ``params``."""
        streams: PipesAttemptStreams = self._session(params)
        return streams

    def no_messages_debug_text(self) -> str:
        return (
            f"Attempted to read messages from GCS bucket {self.bucket}. Expected the function "
            "to write them with PipesCloudStorageMessageWriter to the bucket and key_prefix "
            "from its DAGSTER_PIPES_MESSAGES parameter."
        )


class PipesSharedLocationReader(PipesAttemptMessageReader):
    """Any Pipes message reader (e.g. dagster-gcp's ``PipesGCSMessageReader``), made usable
    by :class:`~dagster_pipes_gcf.PipesCloudFunctionClient`.

    Every HTTP attempt of a call is sent the session's one message location, so the messages
    of a retried call's attempts are not told apart, and no cancellation marker can be
    written (the client forwards no termination).
    """

    def __init__(self, reader: PipesMessageReader):
        self.reader = reader

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        with self.reader.read_messages(handler) as params:
            yield params

    def on_opened(self, opened_payload: PipesOpenedData) -> None:
        self.reader.on_opened(opened_payload)

    def on_launched(self, launched_payload: PipesLaunchedData) -> None:
        self.reader.on_launched(launched_payload)

    def no_messages_debug_text(self) -> str:
        return self.reader.no_messages_debug_text()

    def attempts(self, params: PipesParams) -> AttemptStreams:
        return _SharedLocation(params)


@dataclass(frozen=True)
class _SharedLocation:
    """The attempts of a session read by another reader: one location, nothing to cancel."""

    session_params: PipesParams
    closed_with_exception = False
    handler_started = None

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        return self.session_params

    def cancel(self, reason: Mapping[str, str], *, abandoned_only: bool = False) -> None:
        return None

    def answered(self) -> None:
        pass
