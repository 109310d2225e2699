"""Pipes message reader for chunks written to GCS by the function's message writer.

The writer uploads JSON-lines chunks ``<key_prefix>/1.json``, ``2.json``, ... in order. Each
HTTP attempt of one call writes under its own prefix ``<reader prefix>/<session>/<attempt>``
(see :class:`PipesAttemptStreams`), so a retried call never meets the chunks of an earlier
attempt. This reader streams the live attempt into Dagster while the function runs and, once
the call has returned, reads the attempt that answered to the end: up to the ``closed``
message, within a bounded wait. Unlike the stock ``PipesBlobStoreMessageReader`` it reads
every available chunk per poll, adapts its polling rate, keeps its position per message,
reports background errors in the run, and fails the step when ``closed`` is missing or a chunk
index is skipped instead of reporting success.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import google.auth.exceptions
from dagster import PipesMessageHandler, PipesMessageReader
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesParams
from google.api_core import exceptions as gexc
from google.cloud import storage
from requests import exceptions as rexc
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from dagster_pipes_gcf.auth import (
    impersonated_marker_credentials,
    impersonated_storage_credentials,
    missing_credentials_hint,
)
from dagster_pipes_gcf.cancellation import CancelOutcome, write_cancel_markers

logger = logging.getLogger(__name__)

TRANSIENT_GCS_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    rexc.ConnectionError,
    rexc.Timeout,
)
# Messages that carry results: delivered only from the attempt that answered the call.
# Logs stream live from whichever attempt is running.
RESULT_METHODS = frozenset(
    {"report_asset_materialization", "report_asset_check", "report_custom_message", "closed"}
)
# How long stopping the background poller may block the step (a terminated run must end fast).
STOP_JOIN_TIMEOUT_S = 1.0
_CHUNK_NAME = re.compile(r"/?(\d+)\.json$")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# The function accepts key prefixes up to 512 characters; the reader's prefix leaves room for
# "/<32 hex session>/<attempt>".
MAX_READER_PREFIX = 512 - 1 - 32 - 1 - 6


@dataclass(frozen=True)
class PollingPolicy:
    """How often the reader looks for new chunks, and how long it waits for the end.

    Attributes:
        min_interval: seconds between polls right after start and while chunks arrive.
        max_interval: upper bound the interval backs off to while no chunk arrives.
        backoff: factor applied to the interval after each empty poll.
        drain_timeout: seconds to wait for the ``closed`` message after the call returned.
        download_attempts: attempts per chunk download on transient GCS errors.
        request_timeout: seconds one GCS request may take (a slow bucket cannot hold the
            reader, or a terminated run, for longer).
    """

    min_interval: float = 0.05
    max_interval: float = 1.0
    backoff: float = 1.5
    drain_timeout: float = 30.0
    download_attempts: int = 5
    request_timeout: float = 10.0

    def next_interval(self, interval: float, found: int) -> float:
        """Back to ``min_interval`` when chunks arrived, else back off up to ``max_interval``."""
        return self.min_interval if found else min(interval * self.backoff, self.max_interval)


@dataclass(frozen=True)
class LogCoalescing:
    """Delivery of log floods: Dagster stores one event per log call (~0.4 ms in memory,
    ~6 ms on the SQLite storage of ``dagster dev``), so 10,000 lines would stall the step.

    When one chunk holds more than ``threshold`` log messages, consecutive lines of the same
    level are delivered as one multi-line entry of at most ``max_lines`` lines. Nothing is
    dropped and the order is kept; normal-rate logging stays one entry per line.
    """

    threshold: int = 100
    max_lines: int = 200


def coalesce_logs(messages: list[Any], rule: LogCoalescing | None) -> list[Any]:
    """``messages`` with runs of same-level log messages joined, if the chunk is a flood."""
    logs = sum(1 for message in messages if message.get("method") == "log")
    if rule is None or logs <= rule.threshold:
        return messages
    out: list[Any] = []
    lines: list[str] = []
    level: str | None = None
    template: Any = None

    def flush() -> None:
        if lines:
            out.append({**template, "params": {**template["params"], "message": "\n".join(lines)}})
            lines.clear()

    for message in messages:
        params = message.get("params") or {}
        this_level = params.get("level")
        if message.get("method") != "log":
            flush()
            out.append(message)
            continue
        if this_level != level or len(lines) >= rule.max_lines:
            flush()
            level, template = this_level, message
        lines.append(str(params.get("message", "")))
    flush()
    return out


def note_in_run(handler: PipesMessageHandler, level: int, text: str) -> None:
    """A line in the run's log, or in this module's logger outside a step."""
    # PipesMessageHandler keeps the step context privately; Dagster's own threaded readers
    # report their background errors through it the same way.
    context = getattr(handler, "_context", None)
    if context is not None:
        context.log.log(level, text)
    else:
        logger.log(level, text)


def _sleep_until(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that a stop request cuts short (for retry backoffs)."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


class PipesHandlerError(DagsterPipesExecutionError):
    """Dagster's message handler raised on a message (which is not delivered again)."""


@dataclass
class ChunkStream:
    """The chunks of one attempt, read message by message: a message is handed over once.

    The parsed messages of the chunk being read are kept with an offset, so an exception
    while handling message k neither re-reads the chunk nor re-delivers messages 1..k.
    """

    bucket: storage.Bucket
    key_prefix: str
    policy: PollingPolicy
    coalescing: LogCoalescing | None = None
    next_index: int = 1
    messages_read: int = 0
    closed_seen: bool = False
    _messages: list[Any] | None = None
    _offset: int = 0

    @property
    def location(self) -> str:
        return f"gs://{self.bucket.name}/{self.key_prefix}"

    def key(self, index: int) -> str:
        return f"{self.key_prefix}/{index}.json"

    def next_message(self, stop: threading.Event) -> Any | None:
        """The next message, or None when the next chunk is not there (yet) or after ``closed``."""
        while not self.closed_seen and self._messages is None:
            text = self._download(self.next_index, stop)
            if text is None:
                return None
            self._messages, self._offset = self._parse(self.next_index, text), 0
            self._finish_chunk_if_read()
        if self.closed_seen and self._messages is None:
            return None
        assert self._messages is not None
        message = self._messages[self._offset]
        self._offset += 1
        if message.get("method") == "closed":
            self.closed_seen = True
        self._finish_chunk_if_read()
        return message

    def _finish_chunk_if_read(self) -> None:
        if self._messages is not None and self._offset >= len(self._messages):
            self._messages = None
            self.next_index += 1

    def _parse(self, index: int, text: str) -> list[Any]:
        messages: list[Any] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DagsterPipesExecutionError(
                    f"malformed Pipes message in {self.key(index)} line {line_number}: {exc}"
                ) from None
        self.messages_read += len(messages)
        return coalesce_logs(messages, self.coalescing)

    def _download(self, index: int, stop: threading.Event) -> str | None:
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.download_attempts) | stop_when_event_set(stop),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            sleep=_sleep_until(stop),
            retry=retry_if_exception_type(TRANSIENT_GCS_ERRORS),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    blob = self.bucket.blob(self.key(index))
                    return str(
                        blob.download_as_text(retry=None, timeout=self.policy.request_timeout)
                    )
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
        except (gexc.GoogleAPICallError, rexc.RequestException) as exc:
            raise DagsterPipesExecutionError(
                f"could not read Pipes messages from {self.location} after "
                f"{self.policy.download_attempts} attempt(s): {type(exc).__name__}: {exc}"
            ) from None  # quoted above: chained, it would be printed twice
        return None  # pragma: no cover - Retrying either returns or raises

    def written(self) -> bool:
        """Whether the writer stored any chunk (the first is always chunk 1). A check that
        fails counts as yes: callers use it to decide that work may have started."""
        if self.next_index > 1 or self._messages is not None:
            return True
        try:
            return bool(self.bucket.blob(self.key(1)).exists(timeout=self.policy.request_timeout))
        except (gexc.GoogleAPICallError, rexc.RequestException):
            return True

    def present_chunk_indexes(self) -> list[int]:
        """Indexes of the chunks stored under the prefix (for diagnosing a gap)."""
        try:
            blobs = self.bucket.client.list_blobs(self.bucket, prefix=f"{self.key_prefix}/")
            names = [blob.name for blob in blobs]
        except (gexc.GoogleAPICallError, rexc.RequestException):
            return []
        return sorted(int(m.group(1)) for name in names if (m := _CHUNK_NAME.search(name)))


@dataclass
class _Attempt:
    number: int
    stream: ChunkStream
    answered: bool = False
    abandoned: bool = False
    deferred: deque[Any] = field(default_factory=deque)


class PipesAttemptStreams:
    """The attempt-scoped message streams of one Pipes session.

    Attempt ``n`` writes under ``<session prefix>/<n>``. A client calls :meth:`begin_attempt`
    before each HTTP attempt (it returns the ``DAGSTER_PIPES_MESSAGES`` params to send) and
    :meth:`answered` when an attempt answered. Log messages stream live from the running
    attempt; result messages (materializations, checks, custom messages, ``closed``) are held
    back and delivered only once their attempt answered. Starting attempt ``n + 1`` abandons
    attempt ``n``: it is no longer read, its held-back results are dropped, and a line in the
    run says so, so lines it streamed are visibly attributed. A client that never calls these
    methods gets attempt 1, taken as the answering one when the call returns.
    """

    def __init__(
        self,
        *,
        bucket: storage.Bucket,
        session_prefix: str,
        handler: PipesMessageHandler,
        policy: PollingPolicy,
        coalescing: LogCoalescing | None,
        marker_bucket: Callable[[], storage.Bucket] | None = None,
    ):
        self.bucket = bucket
        self.marker_bucket = marker_bucket or (lambda: bucket)
        self.session_prefix = session_prefix
        self.handler = handler
        self.policy = policy
        self.coalescing = coalescing
        self._attempts = [self._new_attempt(1)]
        self._opened_delivered = False
        self._state = threading.Lock()  # attempt switches vs. delivery of one message
        self._reading = threading.Lock()  # one reader at a time: poller or drain
        self.background_error: BaseException | None = None
        self.handler_error: PipesHandlerError | None = None
        # The answering attempt's `closed` carried the function's exception: Dagster showed
        # it (with its remote stack) in the run's "pipes closed with exception" event.
        self.closed_with_exception = False
        # Tells the background poller to stop (set while it runs): a terminated run lets it
        # wind down while the cancel marker is written, not after.
        self.stop_polling: Callable[[], None] = lambda: None

    def _new_attempt(self, number: int) -> _Attempt:
        stream = ChunkStream(
            bucket=self.bucket,
            key_prefix=f"{self.session_prefix}/{number}",
            policy=self.policy,
            coalescing=self.coalescing,
        )
        return _Attempt(number, stream)

    @property
    def live(self) -> _Attempt:
        return self._attempts[-1]

    @property
    def stream(self) -> ChunkStream:
        """The chunk stream of the live attempt."""
        return self.live.stream

    def params(self) -> PipesParams:
        """``DAGSTER_PIPES_MESSAGES`` params of the live attempt."""
        return {"bucket": self.bucket.name, "key_prefix": self.live.stream.key_prefix}

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        """Make attempt ``number`` the live one and return the params it must be sent.

        Attempt 1 is live from the start; attempt ``n + 1`` abandons attempt ``n``.
        """
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
            self._attempts.append(self._new_attempt(number))
        self._note(
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

    def unanswered_prefixes(self, *, abandoned_only: bool = False) -> list[str]:
        """Key prefixes of the attempts that may still be running, the live one first
        (with ``abandoned_only``, those given up for a retry, newest first)."""
        with self._state:
            return [
                a.stream.key_prefix
                for a in reversed(self._attempts)
                if not a.answered and (a.abandoned or not abandoned_only)
            ]

    def cancel(self, reason: Mapping[str, str], *, abandoned_only: bool = False) -> CancelOutcome:
        """Ask the function to stop: write ``<prefix>/cancel`` for every attempt that may still
        be running, and stop reading. With ``abandoned_only``, stop only the attempts given up
        for a retry; the live attempt is read on. Bounded in time; never raises."""
        if not abandoned_only:
            self.stop_polling()  # it winds down while the markers are written
        prefixes = self.unanswered_prefixes(abandoned_only=abandoned_only)
        return write_cancel_markers(self.marker_bucket, prefixes, reason=reason)

    def answered(self) -> None:
        """The live attempt answered the call: its results are the call's results."""
        with self._state:
            self.live.answered = True

    def read_available(self, stop: threading.Event) -> int:
        """Deliver what the live attempt has now; return how many messages were delivered.

        A handler error is recorded (:attr:`handler_error`, the step fails after the call) and
        reading goes on: the message is not delivered again."""
        delivered = 0
        with self._reading:
            attempt = self.live
            while not stop.is_set() and not attempt.abandoned:
                if attempt.answered and attempt.deferred:
                    message = attempt.deferred.popleft()
                else:
                    message = attempt.stream.next_message(stop)
                    if message is None:
                        break
                try:
                    delivered += self._deliver(attempt, message)
                except PipesHandlerError as exc:
                    # Recorded before the lock is released, whoever reads (the poller being
                    # stopped, or the drain): the message is consumed, so the step must fail.
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
                if method == "closed" and (message.get("params") or {}).get("exception"):
                    self.closed_with_exception = True
            except Exception as exc:
                raise PipesHandlerError(
                    f"Dagster could not handle the Pipes message {method!r} of attempt "
                    f"{attempt.number} ({attempt.stream.location}): {type(exc).__name__}: {exc}"
                ) from exc
        return 1

    @property
    def done(self) -> bool:
        """The answering attempt's ``closed`` was read and every held-back result delivered."""
        live = self.live
        return live.answered and live.stream.closed_seen and not live.deferred

    def record_background_error(self, exc: BaseException) -> None:
        """Report an error of the background poller in the run (once per kind of error)."""
        report = getattr(self.handler, "report_pipes_framework_exception", None)
        if report is not None and self.background_error is None and self.handler_error is None:
            # The structured error (an engine event), as Dagster's threaded readers report it.
            report(f"{type(self).__name__} background reader", (type(exc), exc, exc.__traceback__))
        if isinstance(exc, PipesHandlerError):
            if self.handler_error is None:
                self.handler_error = exc
                self._note(logging.WARNING, f"[pipes] {exc}; the step fails after the call")
            return
        if self.background_error is None:
            self._note(
                logging.WARNING,
                f"[pipes] reading messages from {self.stream.location} failed in the "
                f"background: {type(exc).__name__}: {exc}; retrying, and again after the call",
            )
        self.background_error = exc

    def _note(self, level: int, text: str) -> None:
        note_in_run(self.handler, level, text)


@dataclass(frozen=True)
class SharedMessages:
    """The attempts of a session read by another reader (e.g. Dagster's own): all share the
    session's one message location, and no cancel marker can be written."""

    session_params: PipesParams
    closed_with_exception = False
    handler_started = None

    def params(self) -> PipesParams:
        return self.session_params

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        return self.session_params

    def cancel(self, reason: Mapping[str, str], *, abandoned_only: bool = False) -> None:
        return None

    def answered(self) -> None:
        pass


def attempt_streams(
    reader: PipesMessageReader, params: PipesParams
) -> PipesAttemptStreams | SharedMessages:
    """The per-attempt streams of the session ``reader`` opened with ``params``: its own with
    :class:`PipesCloudStorageMessageReader`, one shared location with any other reader."""
    if isinstance(reader, PipesCloudStorageMessageReader):
        return reader.attempts(params)
    return SharedMessages(params)


class _Poller:
    """Background thread that streams the live attempt while the function runs."""

    def __init__(self, streams: PipesAttemptStreams):
        self._streams = streams
        self._stop = threading.Event()
        self._stop_asked: float | None = None
        self._thread = threading.Thread(target=self._run, name="pipes-gcs-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to stop, without waiting for it."""
        if self._stop_asked is None:
            self._stop_asked = time.monotonic()
        self._stop.set()

    def stop(self) -> None:
        """Stop and wait at most :data:`STOP_JOIN_TIMEOUT_S` since the stop was first asked
        for: a download in flight ends on its own timeout."""
        self.signal_stop()
        assert self._stop_asked is not None
        waited = time.monotonic() - self._stop_asked
        self._thread.join(timeout=max(0.0, STOP_JOIN_TIMEOUT_S - waited))

    def _run(self) -> None:
        policy = self._streams.policy
        interval = policy.min_interval
        while not self._stop.is_set():
            try:
                found = self._streams.read_available(self._stop)
            except Exception as exc:  # noqa: BLE001 - reported in the run, retried by the drain
                if self._stop.is_set():
                    return
                self._streams.record_background_error(exc)
                found, interval = 0, policy.max_interval
            interval = policy.next_interval(interval, found)
            self._stop.wait(interval)


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
    """What this package's GCS readers share: the bucket, its client, and a unique key
    prefix per session under ``prefix`` (arguments: see
    :class:`PipesCloudStorageMessageReader`).
    """

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
            self._client = self._new_client(impersonated_storage_credentials)
        return self._client

    @property
    def marker_client(self) -> storage.Client:
        """The client that writes cancellation markers: one that may create objects."""
        if self._marker_client is None:
            if self.impersonate_service_account:
                self._marker_client = self._new_client(impersonated_marker_credentials)
            else:
                self._marker_client = self.client  # default scopes include read-write
        return self._marker_client

    def _new_client(self, impersonated: Callable[[str], Any]) -> storage.Client:
        try:
            if not self.impersonate_service_account:
                return storage.Client()
            # project=None: objects need no project (and ADC may name none).
            credentials = impersonated(self.impersonate_service_account)
            return storage.Client(credentials=credentials, project=None)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise DagsterPipesExecutionError(
                f"cannot read Pipes messages from gs://{self.bucket}: "
                f"{missing_credentials_hint(exc)}"
            ) from None

    def new_key_prefix(self) -> str:
        """A new session prefix ``<prefix>/<32 hex>``; attempts or tasks write below it."""
        return f"{self.prefix}/{uuid.uuid4().hex}" if self.prefix else uuid.uuid4().hex


class PipesCloudStorageMessageReader(GcsMessageReader):
    """Reads Pipes messages that the Cloud Function writes to a GCS bucket.

    Each session yields the params of its attempt 1; a client that retries HTTP calls gets
    the session's :class:`PipesAttemptStreams` with :meth:`attempts` and sends each attempt
    the params :meth:`PipesAttemptStreams.begin_attempt` returns.

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

    _sessions: dict[str, PipesAttemptStreams]

    def _marker_bucket(self) -> storage.Bucket:
        return self.marker_client.bucket(self.bucket)

    def request_cancellation(
        self, params: PipesParams, reason: dict[str, str], *, abandoned_only: bool = False
    ) -> CancelOutcome:
        """:meth:`PipesAttemptStreams.cancel` of the open session that yielded ``params``."""
        try:
            return self.attempts(params).cancel(reason, abandoned_only=abandoned_only)
        except DagsterPipesExecutionError as exc:
            return CancelOutcome((), (str(exc),))

    def attempts(self, params: PipesParams) -> PipesAttemptStreams:
        """The attempt streams of the open session that yielded ``params``."""
        with self._sessions_lock:
            streams = self._sessions.get(str(params.get("key_prefix")))
        if streams is None:
            raise DagsterPipesExecutionError(
                f"no open Pipes session of this reader has the params {dict(params)}"
            )
        return streams

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        # client.bucket() makes no request: reading objects needs no bucket-level permission.
        streams = PipesAttemptStreams(
            bucket=self.client.bucket(self.bucket),
            session_prefix=self.new_key_prefix(),
            handler=handler,
            policy=self.polling,
            coalescing=self.log_coalescing,
            marker_bucket=self._marker_bucket,
        )
        params = streams.params()
        with self._registered(params, streams):
            yield from self._stream(streams, params)

    @contextmanager
    def _registered(self, params: PipesParams, streams: PipesAttemptStreams) -> Iterator[None]:
        key = str(params["key_prefix"])
        with self._sessions_lock:
            self._sessions[key] = streams
        try:
            yield
        finally:
            with self._sessions_lock:
                self._sessions.pop(key, None)

    def _stream(self, streams: PipesAttemptStreams, params: PipesParams) -> Iterator[PipesParams]:
        poller = _Poller(streams)
        streams.stop_polling = poller.signal_stop
        poller.start()
        try:
            yield params
        except Exception:
            # The call failed: deliver what its last attempt wrote, keep the call's error. An
            # attempt that wrote no chunk never ran Pipes (refused, unreachable, 429s): no
            # `closed` can come, so there is nothing to wait for.
            poller.stop()
            streams.answered()
            if streams.stream.written():
                self._drain(streams, timeout=min(self.polling.drain_timeout, 5.0), strict=False)
            raise
        except BaseException:
            poller.stop()  # run terminated (KeyboardInterrupt, Dagster interrupt): stop waiting
            raise
        poller.stop()
        streams.answered()  # a client that does not drive attempts: attempt 1 answered
        self._drain(streams, timeout=self.polling.drain_timeout, strict=True)
        if streams.handler_error is not None:
            raise streams.handler_error

    def _drain(self, streams: PipesAttemptStreams, *, timeout: float, strict: bool) -> None:
        """Read until ``closed`` or ``timeout``; if ``strict``, a missing end is an error."""
        deadline = time.monotonic() + timeout
        interval = self.polling.min_interval
        never = threading.Event()
        while True:
            try:
                found = streams.read_available(never)
            except Exception:
                if strict:
                    raise
                return  # best effort: the error that ended the call is the one to report
            if streams.done or time.monotonic() >= deadline:
                break
            interval = self.polling.next_interval(interval, found)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        if strict and not streams.done:
            raise DagsterPipesExecutionError(self._incomplete_message(streams.stream, timeout))

    @staticmethod
    def _incomplete_message(stream: ChunkStream, timeout: float) -> str:
        present = stream.present_chunk_indexes()
        later = [index for index in present if index > stream.next_index]
        if later:
            return (
                f"Pipes messages are incomplete at {stream.location}: chunk {stream.next_index} "
                f"is missing while chunk(s) {later[:10]} exist; {stream.messages_read} "
                "message(s) were read and the `closed` message never arrived."
            )
        return (
            f"Pipes `closed` message not received within {timeout:g}s after the function "
            f"returned: read chunks 1..{stream.next_index - 1} ({stream.messages_read} "
            f"message(s)) from {stream.location}; chunk {stream.next_index} never appeared. "
            "The function may have crashed, timed out or failed to upload its last messages."
        )

    def no_messages_debug_text(self) -> str:
        return (
            f"Attempted to read messages from GCS bucket {self.bucket}. Expected the function "
            "to write them with PipesCloudStorageMessageWriter to the bucket and key_prefix "
            "from its DAGSTER_PIPES_MESSAGES parameter."
        )
