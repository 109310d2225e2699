"""Pipes message writer that streams messages to GCS as indexed JSON-lines chunks.

Chunks are written to ``<key_prefix>/<n>.json`` (n = 1, 2, ...), one JSON-encoded Pipes
message per line: the layout ``dagster_pipes.PipesGCSMessageWriter`` uses and the Dagster-side
reader expects. Unlike the stock writer this one flushes sub-second, retries transient upload
errors, never overwrites a chunk and records (instead of swallowing) a delivery failure so the
HTTP handler can report it.

Any error of the upload thread is a delivery failure, whatever raised it (an upload, the look
for the cancellation marker, a token refresh): the thread records it and hands it to the
request's :class:`~gcf_pipes.cancel.Cancellation`, so the job's next check raises it before
a commit, and every later message is dropped (none could reach Dagster in order). A message
that is not JSON is refused where it is written, in the job's thread, the same way.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dagster_pipes import PipesMessage, PipesMessageWriter, PipesMessageWriterChannel, PipesParams
from google.api_core import exceptions as gexc
from google.cloud import storage
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gcf_pipes.cancel import Cancellation
from gcf_pipes.errors import TRANSIENT_GCS_ERRORS, PipesMessageDeliveryError, RequestError
from gcf_pipes.logs import RequestTrace, current_trace, request_trace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterSettings:
    """Tuning for :class:`PipesCloudStorageMessageWriter`.

    Attributes:
        flush_interval: seconds between uploads while messages are buffered.
        max_chunk_messages: buffered messages that trigger an immediate upload.
        upload_attempts: attempts per chunk before giving up (transient errors only).
        upload_timeout: seconds for one upload request.
    """

    flush_interval: float = 0.2
    max_chunk_messages: int = 1000
    upload_attempts: int = 6
    upload_timeout: float = 30.0


def chunk_key(key_prefix: str | None, index: int) -> str:
    """Object name of chunk ``index`` (the layout shared with the Dagster-side reader)."""
    return f"{key_prefix}/{index}.json" if key_prefix else f"{index}.json"


class PipesCloudStorageMessageWriterChannel(PipesMessageWriterChannel):
    """Buffers messages and uploads them from a background thread, in order, as numbered chunks."""

    def __init__(
        self,
        bucket: storage.Bucket,
        key_prefix: str | None,
        settings: WriterSettings,
        cancellation: Cancellation | None = None,
    ):
        self._bucket = bucket
        self._key_prefix = key_prefix
        self._settings = settings
        self._cancellation = cancellation
        self._cond = threading.Condition()
        self._buffer: list[str] = []  # one JSON line per message
        self._closing = False
        self._next_index = 1
        self.delivery_error: PipesMessageDeliveryError | None = None

    @property
    def location(self) -> str:
        return f"gs://{self._bucket.name}/{self._key_prefix or ''}"

    @property
    def chunks_written(self) -> int:
        return self._next_index - 1

    def write_message(self, message: PipesMessage) -> None:
        """Buffer ``message`` for upload; dropped once delivery failed.

        Raises:
            PipesMessageDeliveryError: ``message`` is not JSON (the request then fails as
                undeliverable, like a chunk that cannot be written).
        """
        try:
            line = json.dumps(message)
        except Exception as exc:  # TypeError, ValueError (circular), RecursionError, ...
            error = PipesMessageDeliveryError(
                f"Pipes message {message.get('method')!r} cannot be sent: it is not JSON "
                f"({type(exc).__name__}: {exc})"
            )
            self._failed(error)
            raise error from exc
        with self._cond:
            if self.delivery_error is not None:
                return  # a message is missing already: later ones would only hide the gap
            self._buffer.append(line)
            if len(self._buffer) >= self._settings.max_chunk_messages:
                self._cond.notify()

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Run the upload thread; on exit, upload everything still buffered and stop."""
        thread = threading.Thread(
            target=self._upload_thread,
            args=(current_trace(),),
            name="pipes-gcs-writer",
            daemon=True,
        )
        thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify()
            thread.join()

    def _upload_thread(self, trace: RequestTrace) -> None:
        with request_trace(trace):  # its log lines belong to the request
            try:
                self._upload_loop()
            except BaseException as exc:  # whatever it is (SystemExit too), nothing more is sent
                self._failed(
                    PipesMessageDeliveryError(
                        f"the Pipes message writer stopped ({type(exc).__name__}: {exc}); "
                        f"messages after chunk {self.chunks_written} of {self.location} are lost"
                    )
                )
                if not isinstance(exc, Exception | SystemExit):
                    raise

    def _upload_loop(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._buffer) < self._settings.max_chunk_messages:
                    self._cond.wait(timeout=self._settings.flush_interval)
                batch, self._buffer = self._buffer, []
                closing = self._closing
            if self._cancellation is not None and not closing:
                self._cancellation.poll_if_due()  # on the flush cadence, rate-limited
            if batch:
                self._deliver(batch)
            if closing:
                with self._cond:
                    if not self._buffer:
                        return

    def _deliver(self, batch: list[str]) -> None:
        if self.delivery_error is not None:
            return  # a chunk is missing already; later chunks would only hide the gap
        payload = "\n".join(batch)
        key = chunk_key(self._key_prefix, self._next_index)
        try:
            self._upload_once(key, payload)
        except PipesMessageDeliveryError as exc:
            self._failed(exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported through delivery_error
            self._failed(
                PipesMessageDeliveryError(
                    f"could not write Pipes chunk gs://{self._bucket.name}/{key}: "
                    f"{type(exc).__name__}: {exc}"
                )
            )
            return
        self._next_index += 1

    def _failed(self, error: PipesMessageDeliveryError) -> None:
        """Record the failure; the job stops at its next check instead of committing work
        whose results Dagster would never receive. The first failure is the one reported."""
        with self._cond:
            if self.delivery_error is not None:
                return
            self.delivery_error = error
            self._buffer = []
        logger.warning("Pipes messages cannot reach Dagster: %s", error)
        if self._cancellation is not None:
            self._cancellation.stop_with(error)

    def _upload_once(self, key: str, payload: str) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self._settings.upload_attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=3.0),
            retry=retry_if_exception_type(TRANSIENT_GCS_ERRORS),
            reraise=True,
        )
        outcome_unknown = False  # did an earlier attempt fail after possibly reaching GCS?
        for attempt in retrying:
            with attempt:
                try:
                    self._bucket.blob(key).upload_from_string(
                        payload,
                        content_type="application/x-ndjson",
                        if_generation_match=0,
                        timeout=self._settings.upload_timeout,
                        retry=None,
                    )
                except gexc.PreconditionFailed:
                    if outcome_unknown:
                        return  # our earlier attempt landed; its response was lost
                    raise PipesMessageDeliveryError(
                        f"gs://{self._bucket.name}/{key} already exists: another writer uses "
                        "this key prefix, and chunks are never overwritten"
                    ) from None
                except TRANSIENT_GCS_ERRORS:
                    outcome_unknown = True
                    raise


class PipesCloudStorageMessageWriter(PipesMessageWriter[PipesCloudStorageMessageWriterChannel]):
    """Writes Pipes messages to the bucket and key prefix chosen by the Dagster-side reader.

    Create one writer per request: ``channel`` exposes the open channel so the caller can
    check ``channel.delivery_error`` once the Pipes context is closed. With ``only_bucket``
    it refuses (403) params naming any other bucket. With ``cancellation``, its upload thread
    also looks for the request's cancellation marker (see :mod:`gcf_pipes.cancel`).
    """

    def __init__(
        self,
        client: storage.Client,
        settings: WriterSettings | None = None,
        *,
        only_bucket: str | None = None,
        cancellation: Cancellation | None = None,
    ):
        self._client = client
        self._settings = settings or WriterSettings()
        self._only_bucket = only_bucket
        self._cancellation = cancellation
        self.channel: PipesCloudStorageMessageWriterChannel | None = None

    @contextmanager
    def open(self, params: PipesParams) -> Iterator[PipesCloudStorageMessageWriterChannel]:
        bucket = params.get("bucket")
        key_prefix = params.get("key_prefix")
        if not isinstance(bucket, str) or not bucket:
            raise RequestError(
                "Pipes message params need a non-empty string 'bucket'",
                field="DAGSTER_PIPES_MESSAGES",
            )
        if self._only_bucket is not None and bucket != self._only_bucket:
            raise RequestError(
                "Pipes message param 'bucket' is not this function's Pipes bucket",
                field="DAGSTER_PIPES_MESSAGES.bucket",
                status=403,
            )
        if key_prefix is not None and not isinstance(key_prefix, str):
            raise RequestError(
                "Pipes message param 'key_prefix' must be a string",
                field="DAGSTER_PIPES_MESSAGES",
            )
        # client.bucket() makes no request: writing objects needs no bucket-level permission.
        channel = PipesCloudStorageMessageWriterChannel(
            self._client.bucket(bucket), key_prefix, self._settings, self._cancellation
        )
        self.channel = channel
        with channel.streaming():
            yield channel
