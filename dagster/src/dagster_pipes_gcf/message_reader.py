"""Pipes message reader for chunks written to GCS by the function's message writer.

The writer uploads JSON-lines chunks ``<key_prefix>/1.json``, ``2.json``, ... in order. This
reader streams them into Dagster while the function runs and, once the call has returned,
reads to the end: up to the ``closed`` message, within a bounded wait. Unlike the stock
``PipesBlobStoreMessageReader`` it reads every available chunk per poll, adapts its polling
rate, keeps its position per session, and fails the step when ``closed`` is missing or a
chunk index is skipped instead of reporting success.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dagster import PipesMessageHandler, PipesMessageReader
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesParams
from google.api_core import exceptions as gexc
from google.cloud import storage
from requests import exceptions as rexc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from dagster_pipes_gcf.auth import impersonated_storage_credentials

TRANSIENT_GCS_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    rexc.ConnectionError,
    rexc.Timeout,
)
_CHUNK_NAME = re.compile(r"/?(\d+)\.json$")


@dataclass(frozen=True)
class PollingPolicy:
    """How often the reader looks for new chunks, and how long it waits for the end.

    Attributes:
        min_interval: seconds between polls right after start and while chunks arrive.
        max_interval: upper bound the interval backs off to while no chunk arrives.
        backoff: factor applied to the interval after each empty poll.
        drain_timeout: seconds to wait for the ``closed`` message after the call returned.
        download_attempts: attempts per chunk download on transient GCS errors.
    """

    min_interval: float = 0.05
    max_interval: float = 1.0
    backoff: float = 1.5
    drain_timeout: float = 30.0
    download_attempts: int = 5

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


@dataclass
class ChunkStream:
    """Reading state of one Pipes session: the next chunk index and what has been seen."""

    bucket: storage.Bucket
    key_prefix: str
    handler: PipesMessageHandler
    policy: PollingPolicy
    coalescing: LogCoalescing | None = None
    next_index: int = 1
    messages_read: int = 0
    closed_seen: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def location(self) -> str:
        return f"gs://{self.bucket.name}/{self.key_prefix}"

    def key(self, index: int) -> str:
        return f"{self.key_prefix}/{index}.json"

    def read_available(self) -> int:
        """Hand every chunk that is there now to the handler; return how many were read."""
        read = 0
        with self._lock:
            while not self.closed_seen:
                text = self._download(self.next_index)
                if text is None:
                    break
                self._handle_chunk(self.next_index, text)
                self.next_index += 1
                read += 1
        return read

    def _download(self, index: int) -> str | None:
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.download_attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(TRANSIENT_GCS_ERRORS),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return str(self.bucket.blob(self.key(index)).download_as_text(retry=None))
        except gexc.NotFound as exc:
            if "bucket" in str(exc).lower() and "does not exist" in str(exc).lower():
                raise DagsterPipesExecutionError(
                    f"Pipes bucket gs://{self.bucket.name} does not exist: {exc}"
                ) from exc
            return None
        except gexc.Forbidden as exc:
            raise DagsterPipesExecutionError(
                f"no permission to read Pipes messages at {self.location}: the orchestrator "
                f"needs storage.objects.get on bucket {self.bucket.name} ({exc})"
            ) from exc
        except (gexc.GoogleAPICallError, rexc.RequestException) as exc:
            raise DagsterPipesExecutionError(
                f"could not read Pipes messages from {self.location} after "
                f"{self.policy.download_attempts} attempt(s): {type(exc).__name__}: {exc}"
            ) from exc
        return None  # pragma: no cover - Retrying either returns or raises

    def _handle_chunk(self, index: int, text: str) -> None:
        messages: list[Any] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DagsterPipesExecutionError(
                    f"malformed Pipes message in {self.key(index)} line {line_number}: {exc}"
                ) from exc
        self.messages_read += len(messages)
        for message in coalesce_logs(messages, self.coalescing):
            self.handler.handle_message(message)
            if message.get("method") == "closed":
                self.closed_seen = True

    def present_chunk_indexes(self) -> list[int]:
        """Indexes of the chunks stored under the prefix (for diagnosing a gap)."""
        try:
            blobs = self.bucket.client.list_blobs(self.bucket, prefix=f"{self.key_prefix}/")
            names = [blob.name for blob in blobs]
        except gexc.GoogleAPICallError:
            return []
        return sorted(int(m.group(1)) for name in names if (m := _CHUNK_NAME.search(name)))


class _Poller:
    """Background thread that streams chunks while the function runs."""

    def __init__(self, stream: ChunkStream):
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipes-gcs-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        policy = self._stream.policy
        interval = policy.min_interval
        while not self._stop.is_set():
            try:
                found = self._stream.read_available()
            except Exception:  # noqa: BLE001 - the drain after the call retries and reports it
                return
            interval = policy.next_interval(interval, found)
            self._stop.wait(interval)


class PipesCloudStorageMessageReader(PipesMessageReader):
    """Reads Pipes messages that the Cloud Function writes to a GCS bucket.

    Args:
        bucket: name of the Pipes bucket (the orchestrator needs object read on it only).
        client: a ``google.cloud.storage.Client``; created on first use when omitted.
        impersonate_service_account: when the client is created here, read as this service
            account (the orchestrator's), minted from the caller's credentials.
        prefix: folder under which each session gets a unique key prefix.
        polling: polling and drain settings.
        log_coalescing: how log floods are delivered (``None``: one entry per line always).
    """

    def __init__(
        self,
        *,
        bucket: str,
        client: storage.Client | None = None,
        prefix: str = "dagster-pipes",
        polling: PollingPolicy | None = None,
        log_coalescing: LogCoalescing | None = LogCoalescing(),
        impersonate_service_account: str | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.polling = polling or PollingPolicy()
        self.log_coalescing = log_coalescing
        self.impersonate_service_account = impersonate_service_account
        self._client = client

    @property
    def client(self) -> storage.Client:
        if self._client is None:
            if self.impersonate_service_account:
                credentials = impersonated_storage_credentials(self.impersonate_service_account)
                # project=None: reading objects needs no project (and ADC may name none).
                self._client = storage.Client(credentials=credentials, project=None)
            else:
                self._client = storage.Client()
        return self._client

    def new_key_prefix(self) -> str:
        return f"{self.prefix}/{uuid.uuid4().hex}" if self.prefix else uuid.uuid4().hex

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        # client.bucket() makes no request: reading objects needs no bucket-level permission.
        stream = ChunkStream(
            bucket=self.client.bucket(self.bucket),
            key_prefix=self.new_key_prefix(),
            handler=handler,
            policy=self.polling,
            coalescing=self.log_coalescing,
        )
        poller = _Poller(stream)
        poller.start()
        try:
            yield {"bucket": self.bucket, "key_prefix": stream.key_prefix}
        except Exception:
            # The call failed: deliver what the function managed to write, keep its error.
            poller.stop()
            self._drain(stream, timeout=min(self.polling.drain_timeout, 5.0), strict=False)
            raise
        except BaseException:
            poller.stop()  # run terminated (KeyboardInterrupt, Dagster interrupt): stop waiting
            raise
        poller.stop()
        # A poller error (e.g. a long GCS outage) is retried by the drain, which reports it.
        self._drain(stream, timeout=self.polling.drain_timeout, strict=True)

    def _drain(self, stream: ChunkStream, *, timeout: float, strict: bool) -> None:
        """Read until ``closed`` or ``timeout``; if ``strict``, a missing end is an error."""
        deadline = time.monotonic() + timeout
        interval = self.polling.min_interval
        while True:
            try:
                found = stream.read_available()
            except Exception:
                if strict:
                    raise
                return  # best effort: the error that ended the call is the one to report
            if stream.closed_seen or time.monotonic() >= deadline:
                break
            interval = self.polling.next_interval(interval, found)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        if strict and not stream.closed_seen:
            raise DagsterPipesExecutionError(self._incomplete_message(stream, timeout))

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
