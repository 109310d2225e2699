"""Pipes message readers for the JSON-lines chunks ``<key_prefix>/1.json``, ``2.json``, ... in
GCS: every available chunk per poll, each message handed over once, background errors shown in
the run, and the step fails when ``closed`` is missing or a chunk is skipped."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from itertools import groupby
from typing import Any, cast

import google.auth.exceptions
import tenacity
from dagster import PipesLaunchedData, PipesMessageHandler, PipesMessageReader
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesOpenedData, PipesParams
from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from requests import exceptions as rexc

from dagster_pipes_gcf import auth
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
# What the function accepts: '/'-separated segments of [A-Za-z0-9._-]+, none '.' or '..'.
_PREFIX = re.compile(r"((?!\.\.?(/|$))[A-Za-z0-9._-]+(/|$))*")
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
        list_deadline: seconds a listing of chunks is retried on transient GCS errors (not
            google-cloud-storage's 120 s); then the step fails naming the listing.
    """

    min_interval: float = 0.05
    max_interval: float = 1.0
    backoff: float = 1.5
    drain_timeout: float = 30.0
    download_attempts: int = 5
    request_timeout: float = 10.0
    list_deadline: float = 10.0


@dataclass(frozen=True)
class LogCoalescing:
    """Delivery of log floods (Dagster stores one event per log call, ~6 ms each on SQLite).

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
    for is_log, group in groupby(messages, key=lambda m: m.get("method") == "log"):
        if not is_log:
            out += group
            continue
        for _, same_level in groupby(group, key=lambda m: (m.get("params") or {}).get("level")):
            run = list(same_level)
            for batch in (run[i : i + rule.max_lines] for i in range(0, len(run), rule.max_lines)):
                params = [m.get("params") or {} for m in batch]
                lines = "\n".join(str(p.get("message", "")) for p in params)
                out.append({**batch[0], "params": {**params[0], "message": lines}})
    return out


class PipesHandlerError(DagsterPipesExecutionError):
    """Dagster's message handler raised on a message (which is not delivered again)."""


def list_names(
    bucket: storage.Bucket, prefix: str, policy: PollingPolicy, deadline: float
) -> list[str]:
    """The names of the objects under ``prefix``, a failing listing retried for ``deadline``."""
    retry = DEFAULT_RETRY.with_timeout(deadline)
    blobs = bucket.client.list_blobs(
        bucket, prefix=prefix, timeout=policy.request_timeout, retry=retry
    )
    return [blob.name for blob in blobs]


@dataclass
class ChunkStream:
    """The chunks under one key prefix, read message by message, each handed over once."""

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
        """The next message, or None (no next chunk yet, or not in ``listed``, or ``closed``)."""
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
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.download_attempts)
            | tenacity.stop_when_event_set(stop),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            sleep=stop.wait,  # type: ignore[arg-type]  # (its bool is unused)
            retry=tenacity.retry_if_exception_type(TRANSIENT_GCS_ERRORS),
            reraise=True,
        )
        download = self.bucket.blob(self.key(self.next_index)).download_as_text
        try:
            return str(retrying(download, retry=None, timeout=self.policy.request_timeout))
        except GCS_ERRORS as exc:  # quoted below: chained, it would be printed twice
            if isinstance(exc, gexc.NotFound):
                if "bucket" not in str(exc).lower() or "does not exist" not in str(exc).lower():
                    return None  # not written yet
                problem = f"Pipes bucket gs://{self.bucket.name} does not exist"
            elif isinstance(exc, gexc.Forbidden):
                problem = (
                    f"no permission to read Pipes messages at {self.location}: the orchestrator "
                    f"needs storage.objects.get on bucket {self.bucket.name}"
                )
            else:
                problem = (
                    f"could not read Pipes messages from {self.location} after "
                    f"{self.policy.download_attempts} attempt(s)"
                )
            raise DagsterPipesExecutionError(f"{problem}: {type(exc).__name__}: {exc}") from None

    def written(self) -> bool:
        """Whether the writer stored any chunk (unknown counts as yes: work may have started)."""
        if self.next_index > 1 or self._messages:
            return True
        try:
            return bool(self.bucket.blob(self.key(1)).exists(timeout=self.policy.request_timeout))
        except GCS_ERRORS:
            return True

    def incomplete(self, timeout: float) -> str:
        """Why the stream ended without ``closed``: a gap, or a last chunk that never came."""
        try:
            names = list_names(
                self.bucket, f"{self.key_prefix}/", self.policy, self.policy.list_deadline
            )
        except Exception:  # noqa: BLE001 - a diagnosis: it never replaces the error it explains
            names = []
        present = [int(match.group(1)) for match in filter(None, map(_CHUNK_NAME.search, names))]
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


class MessageStreams(ABC):
    """One Pipes session's chunk streams: polled while the call runs, then read to the end."""

    def __init__(self, reader: GcsMessageReader, handler: PipesMessageHandler):
        self.reader, self.handler, self.policy = reader, handler, reader.polling
        # client.bucket() makes no request: reading objects needs no bucket-level permission.
        self.bucket = reader.client.bucket(reader.bucket)
        self.session_prefix = reader.new_key_prefix()
        self.background_error: BaseException | None = None
        self.handler_error: PipesHandlerError | None = None
        self._reading = threading.Lock()  # one reader at a time: poller or final read
        self._stop = threading.Event()
        self._stop_asked: float | None = None
        self.poller = threading.Thread(target=self._poll, name="pipes-gcs-reader", daemon=True)

    def chunks(self, key_prefix: str) -> ChunkStream:
        return ChunkStream(self.bucket, key_prefix, self.policy, self.reader.log_coalescing)

    def params(self) -> PipesParams:
        return {"bucket": self.bucket.name, "key_prefix": self.session_prefix}

    @abstractmethod
    def read_available(self, stop: threading.Event) -> int:
        """Deliver what is there now; return how many messages were delivered."""

    @abstractmethod
    def read_to_end(self, failed: bool) -> None:
        """The call returned (or ``failed``: best effort, the call's error wins)."""

    def read_until(
        self, done: Callable[[], bool], timeout: float, stop: threading.Event = NEVER
    ) -> None:
        """Poll until ``done()``, ``timeout`` or ``stop`` (the poller's: it reports errors)."""
        deadline, interval = time.monotonic() + timeout, self.policy.min_interval
        while not stop.is_set():
            try:
                found = self.read_available(stop)
            except Exception as exc:
                if stop is NEVER:
                    raise
                if stop.is_set():
                    return
                self.record_background_error(exc)
                found, interval = 0, self.policy.max_interval
            if done() or time.monotonic() >= deadline:
                return
            backoff = min(interval * self.policy.backoff, self.policy.max_interval)
            interval = self.policy.min_interval if found else backoff
            stop.wait(min(interval, max(0.0, deadline - time.monotonic())))

    def record_background_error(self, exc: BaseException) -> None:
        """Report an error of the background poller in the run (once per kind of error)."""
        report = getattr(self.handler, "report_pipes_framework_exception", None)
        if report is not None and self.background_error is None and self.handler_error is None:
            report(f"{type(self).__name__} background reader", (type(exc), exc, exc.__traceback__))
        if isinstance(exc, PipesHandlerError):
            if self.handler_error is None:
                self.handler_error = exc
                self.note(logging.WARNING, f"[pipes] {exc}; the step fails after the call")
        elif self.background_error is None:
            self.background_error = exc
            self.note(
                logging.WARNING,
                f"[pipes] reading messages from gs://{self.bucket.name}/{self.session_prefix} "
                f"failed in the background: {type(exc).__name__}: {exc}; retrying, and again "
                "after the call",
            )

    def stop_polling(self) -> None:
        """Ask the poller to stop, without waiting for it."""
        self._stop_asked = self._stop_asked or time.monotonic()
        self._stop.set()

    def join_poller(self) -> None:
        # A request in flight ends on its own timeout: the step waits for it only so long.
        self.stop_polling()
        waited = time.monotonic() - (self._stop_asked or 0.0)
        self.poller.join(timeout=max(0.0, STOP_JOIN_TIMEOUT_S - waited))

    def _poll(self) -> None:
        self.read_until(lambda: False, math.inf, self._stop)

    def note(self, level: int, text: str) -> None:
        """A line in the run's log, or in this module's logger outside a step."""
        # PipesMessageHandler keeps the step context privately; Dagster's threaded readers
        # report their background errors through it the same way.
        context = getattr(self.handler, "_context", None)
        (context.log if context is not None else logger).log(level, text)


class AttemptStreams:
    """The HTTP attempts of one open Pipes session, as the function client drives them; this
    base sends each the session's params, and can neither tell a handler ran nor cancel."""

    closed_with_exception = False  # the answer's `closed` carried an exception Dagster showed
    handler_started: HandlerStarted | None = None

    def __init__(self, session_params: PipesParams):
        self.session_params = session_params

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        """The params to send attempt ``number`` (abandoning attempt ``number - 1``)."""
        return self.session_params

    def cancel(
        self, reason: Mapping[str, str], *, abandoned_only: bool = False
    ) -> CancelOutcome | None:
        """Ask the attempts that may still run (only abandoned ones: ``abandoned_only``) to stop."""
        return None

    def answered(self) -> None:
        """The live attempt answered the call: its results are the call's results."""


class PipesAttemptStreams(MessageStreams, AttemptStreams):
    """Attempt ``n`` of a session writes under ``<session prefix>/<n>``. Logs stream live;
    results (:data:`RESULT_METHODS`) wait until the live attempt :meth:`answered`, and are
    dropped if it is abandoned. Undriven, attempt 1 answers when the call returns."""

    def __init__(self, reader: GcsMessageReader, handler: PipesMessageHandler):
        super().__init__(reader, handler)
        self._attempts = [self.chunks(f"{self.session_prefix}/1")]  # attempt n at [n - 1]
        self._answered = False
        self._deferred: deque[Any] = deque()  # the live attempt's results until it answered
        self._opened_delivered = False
        self._state = threading.Lock()  # attempt switches vs. delivery of one message

    @property
    def live(self) -> ChunkStream:
        return self._attempts[-1]

    def params(self) -> PipesParams:
        return {"bucket": self.bucket.name, "key_prefix": self.live.key_prefix}

    def begin_attempt(self, number: int, abandoned_because: str | None = None) -> PipesParams:
        with self._state:
            if number == len(self._attempts):
                return self.params()
            if number != len(self._attempts) + 1 or self._answered:
                raise DagsterPipesExecutionError(f"attempt {number} cannot follow the live one")
            self._deferred.clear()
            self._attempts.append(self.chunks(f"{self.session_prefix}/{number}"))
        self.note(
            logging.WARNING,
            f"[pipes] attempt {number - 1} abandoned ({abandoned_because or 'retried'}); "
            f"following attempt {number} under {self.live.location}",
        )
        return self.params()

    def handler_started(self, number: int) -> bool:
        """Whether attempt ``number``'s handler ran: it wrote Pipes messages."""
        return self._attempts[number - 1].written()

    def cancel(self, reason: Mapping[str, str], *, abandoned_only: bool = False) -> CancelOutcome:
        """Mark the attempts that may still run (or only the abandoned ones), newest first."""
        if not abandoned_only:
            self.stop_polling()  # reading ends; the poller winds down while markers are written
        with self._state:
            running = self._attempts[:-1] if abandoned_only or self._answered else self._attempts
        bucket = lambda: self.reader.marker_client.bucket(self.reader.bucket)  # noqa: E731
        prefixes = [stream.key_prefix for stream in reversed(running)]
        return write_cancel_markers(bucket, prefixes, reason=reason)

    def answered(self) -> None:
        with self._state:
            self._answered = True

    @property
    def done(self) -> bool:
        """The answering attempt's ``closed`` was read and every held-back result delivered."""
        return self._answered and self.live.closed_seen and not self._deferred

    def read_available(self, stop: threading.Event) -> int:
        # A handler error is recorded (the step fails after the call) and reading goes on.
        delivered = 0
        with self._reading:
            stream = self.live
            while not stop.is_set() and stream is self.live:
                if self._answered and self._deferred:  # (then no attempt follows)
                    message = self._deferred.popleft()
                elif (message := stream.next_message(stop)) is None:
                    break
                try:
                    delivered += self._deliver(stream, message)
                except PipesHandlerError as exc:  # recorded whoever reads: the step must fail
                    self.record_background_error(exc)
        return delivered

    def _deliver(self, stream: ChunkStream, message: Any) -> int:
        method = message.get("method")
        with self._state:
            if stream is not self.live:  # abandoned
                return 0
            if method in RESULT_METHODS and not self._answered:
                self._deferred.append(message)
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
                    f"{len(self._attempts)} ({stream.location}): {type(exc).__name__}: {exc}"
                ) from exc
            if method == "closed" and (message.get("params") or {}).get("exception"):
                self.closed_with_exception = True
        return 1

    def read_to_end(self, failed: bool) -> None:
        self.answered()
        stream, timeout = self.live, self.policy.drain_timeout
        if failed:
            # An attempt that wrote no chunk never ran Pipes: no `closed` can come.
            if stream.written():
                with suppress(Exception):
                    self.read_until(lambda: self.done, min(timeout, 5.0))
            return
        self.read_until(lambda: self.done, timeout)
        if not self.done:
            raise DagsterPipesExecutionError(
                f"Pipes messages are incomplete: {stream.incomplete(timeout)}"
            )
        if self.handler_error is not None:
            raise self.handler_error


class PipesAttemptMessageReader(PipesMessageReader):
    """A message reader that gives each HTTP attempt of a session its message location."""

    @abstractmethod
    def attempts(self, params: PipesParams) -> AttemptStreams:
        """The attempts of the open session that yielded ``params``."""


class GcsMessageReader(PipesMessageReader):
    """The bucket, its clients and a key prefix per session under ``prefix`` (arguments: see
    :class:`PipesCloudStorageMessageReader`)."""

    default_prefix = "dagster-pipes"
    streams_type: type[MessageStreams]

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
        self.prefix = (self.default_prefix if prefix is None else prefix).strip("/")
        if len(self.prefix) > MAX_READER_PREFIX or not _PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"Pipes message prefix {prefix!r} must be at most {MAX_READER_PREFIX} characters "
                "of '/'-separated segments of letters, digits, '.', '_' or '-' (not '.' or '..')"
            )
        self.polling = polling or PollingPolicy()
        self.log_coalescing = log_coalescing
        self.impersonate_service_account = impersonate_service_account
        self._given_client = client
        self._sessions: dict[str, MessageStreams] = {}  # open sessions by key prefix

    @cached_property
    def client(self) -> storage.Client:
        """The client that reads messages (read-only scoped under impersonation)."""
        if self._given_client is not None:
            return self._given_client
        return self._new_client(auth.DEVSTORAGE_READ_ONLY_SCOPE)

    @cached_property
    def marker_client(self) -> storage.Client:
        """The client that writes cancel markers: read-write scoped under impersonation."""
        if self._given_client is not None or not self.impersonate_service_account:
            return self.client
        return self._new_client(auth.DEVSTORAGE_READ_WRITE_SCOPE)

    def _new_client(self, scope: str) -> storage.Client:
        try:
            if not self.impersonate_service_account:
                return storage.Client()
            # project=None: objects need no project (and ADC may name none).
            credentials = auth.impersonated(self.impersonate_service_account, scope)
            return storage.Client(credentials=credentials, project=None)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise DagsterPipesExecutionError(
                f"cannot read Pipes messages from gs://{self.bucket}: "
                f"{auth.missing_credentials_hint(exc)}"
            ) from None

    def new_key_prefix(self) -> str:
        """A new session prefix ``<prefix>/<32 hex>``; attempts or tasks write below it."""
        return f"{self.prefix}/{uuid.uuid4().hex}" if self.prefix else uuid.uuid4().hex

    def _session(self, params: PipesParams) -> MessageStreams:
        if streams := self._sessions.get(str(params.get("key_prefix"))):
            return streams
        raise DagsterPipesExecutionError(f"no open Pipes session has the params {dict(params)}")

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        streams = self.streams_type(self, handler)
        params = streams.params()
        key = str(params["key_prefix"])
        self._sessions[key] = streams
        streams.poller.start()
        error: BaseException | None = None
        try:
            yield params
        except BaseException as exc:
            error = exc
            raise
        finally:
            streams.join_poller()
            self._sessions.pop(key, None)
            # A terminated run (KeyboardInterrupt, Dagster's interrupt) reads nothing more.
            if error is None or isinstance(error, Exception):
                streams.read_to_end(failed=error is not None)


class PipesCloudStorageMessageReader(GcsMessageReader, PipesAttemptMessageReader):
    """Reads Pipes messages that the Cloud Function writes to a GCS bucket.

    Each session yields the params of its attempt 1; :meth:`attempts` gives the others.

    Args:
        bucket: the Pipes bucket (the orchestrator reads objects; the task reader also lists).
        client: a ``google.cloud.storage.Client``; created on first use when omitted.
        impersonate_service_account: when the client is created here, read as this account
            (the orchestrator's), minted from the caller's credentials; cancel markers are then
            written by a read-write-scoped client of it (IAM allows only ``*/cancel``).
        prefix: folder of each session's unique key prefix (by default ``dagster-pipes``).
        polling: polling and drain settings.
        log_coalescing: how log floods are delivered (``None``: one entry per line always).
    """

    streams_type = PipesAttemptStreams

    def attempts(self, params: PipesParams) -> PipesAttemptStreams:
        """The attempt streams of the open session that yielded ``params``."""
        return cast(PipesAttemptStreams, self._session(params))

    def no_messages_debug_text(self) -> str:
        return (
            f"Attempted to read messages from GCS bucket {self.bucket}. Expected the function "
            "to write them with PipesCloudStorageMessageWriter to the bucket and key_prefix "
            "from its DAGSTER_PIPES_MESSAGES parameter."
        )


class PipesSharedLocationReader(PipesAttemptMessageReader):
    """Any Pipes message reader (e.g. dagster-gcp's ``PipesGCSMessageReader``) for
    :class:`~dagster_pipes_gcf.PipesCloudFunctionClient`: every HTTP attempt of a call gets the
    one location, so retries are not told apart, and no termination is forwarded."""

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
        return AttemptStreams(params)
