"""Pipes messages of a Cloud Run Jobs execution: one chunk stream per task attempt.

Every task writes under ``<session prefix>/task-<index>/attempt-<attempt>`` (the task reads
``CLOUD_RUN_TASK_INDEX`` and ``CLOUD_RUN_TASK_ATTEMPT``), so a retried task never meets its
earlier attempt's chunks. The reader finds the streams by listing the session prefix,
streams every log line into Dagster as it arrives, tagged with its task, and holds results
back. Once the execution is over, the client names the attempt of each task that succeeded;
only those attempts' results count, each must end with ``closed`` and have no gap, and the
tasks' results are merged into one per asset (and check) before Dagster sees them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dagster import PipesMessageHandler
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesParams, _make_message
from google.cloud import storage

from dagster_pipes_gcf.message_reader import (
    RESULT_METHODS,
    ChunkStream,
    GcsMessageReader,
    LogCoalescing,
    PollingPolicy,
    note_in_run,
)

logger = logging.getLogger(__name__)

_TASK_CHUNK = re.compile(r"/task-(\d+)/attempt-(\d+)/\d+\.json$")
# Metadata of the tasks' materializations that adds up; other numbers take the largest.
SUMMED_METADATA = frozenset({"rows_written", "days"})


def task_key_prefix(session_prefix: str, index: int, attempt: int) -> str:
    """Where task ``index``'s attempt ``attempt`` writes its messages."""
    return f"{session_prefix}/task-{index}/attempt-{attempt}"


@dataclass
class TaskStream:
    """The messages of one task attempt; its results are held back until it is known to
    be the attempt that succeeded."""

    index: int
    attempt: int
    stream: ChunkStream
    results: list[Any] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"task {self.index}" + (f" attempt {self.attempt}" if self.attempt else "")


class TaskStreams:
    """The task streams of one Pipes session, read by a poller and then drained."""

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
        self.streams: dict[tuple[int, int], TaskStream] = {}
        self.final: dict[int, int] | None = None  # task index -> its succeeded attempt
        self._opened = False
        self._reading = threading.Lock()

    def params(self) -> PipesParams:
        return {"bucket": self.bucket.name, "key_prefix": self.session_prefix}

    def stream(self, index: int, attempt: int) -> TaskStream:
        key = (index, attempt)
        if key not in self.streams:
            prefix = task_key_prefix(self.session_prefix, index, attempt)
            chunks = ChunkStream(self.bucket, prefix, self.policy, self.coalescing)
            self.streams[key] = TaskStream(index, attempt, chunks)
        return self.streams[key]

    def discover(self) -> None:
        """Add the streams that wrote a chunk since the last look."""
        blobs = self.bucket.client.list_blobs(
            self.bucket, prefix=f"{self.session_prefix}/task-", timeout=self.policy.request_timeout
        )
        for blob in blobs:
            if match := _TASK_CHUNK.search(blob.name):
                self.stream(int(match.group(1)), int(match.group(2)))

    def read_available(self, stop: threading.Event) -> int:
        """Deliver what every stream has now; return how many messages were read."""
        read = 0
        with self._reading:
            self.discover()
            for task in sorted(self.streams.values(), key=lambda t: (t.index, t.attempt)):
                while not stop.is_set() and (message := task.stream.next_message(stop)):
                    self._deliver(task, message)
                    read += 1
        return read

    def _deliver(self, task: TaskStream, message: Any) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if method == "opened":
            if not self._opened:  # every task opens; Dagster needs it once
                self._opened = True
                self.handler.handle_message(message)
        elif method == "log":
            text = f"[{task.tag}] {params.get('message', '')}"
            self.handler.handle_message({**message, "params": {**params, "message": text}})  # type: ignore[typeddict-item]
        elif method == "closed":
            if exception := params.get("exception"):
                self._note(
                    logging.ERROR,
                    f"[pipes] {task.tag} failed: {exception.get('name')}: "
                    f"{str(exception.get('message', '')).strip()}",
                )
        elif method in RESULT_METHODS:
            task.results.append(message)
        else:
            self.handler.handle_message(message)

    def finish(self, final_attempts: Mapping[int, int], timeout: float) -> None:
        """Read each task's succeeded attempt to its ``closed`` (within ``timeout``), then
        deliver the merged results. Raises naming every task whose messages are incomplete."""
        finals = [self.stream(index, attempt) for index, attempt in final_attempts.items()]
        deadline = time.monotonic() + timeout
        never = threading.Event()
        while True:
            self.read_available(never)
            incomplete = [task for task in finals if not task.stream.closed_seen]
            if not incomplete or time.monotonic() >= deadline:
                break
            time.sleep(self.policy.min_interval)
        if incomplete:
            raise DagsterPipesExecutionError(
                "Pipes messages are incomplete for task(s) that succeeded: "
                + "; ".join(_incomplete(task, timeout) for task in incomplete)
            )
        for message in merge_results([task.results for task in finals]):
            self.handler.handle_message(message)
        self.handler.handle_message(_make_message("closed", None))

    def _note(self, level: int, text: str) -> None:
        note_in_run(self.handler, level, text)


def _incomplete(task: TaskStream, timeout: float) -> str:
    chunks = task.stream
    later = [i for i in chunks.present_chunk_indexes() if i > chunks.next_index]
    if later:
        return (
            f"{task.tag}: chunk {chunks.next_index} is missing while chunk(s) {later[:10]} "
            f"exist at {chunks.location}"
        )
    return (
        f"{task.tag}: no `closed` message within {timeout:g}s ({chunks.messages_read} "
        f"message(s) read from {chunks.location})"
    )


def merge_results(per_task: Sequence[Sequence[Any]]) -> list[Any]:
    """One materialization per asset and one result per check, from every task's results.

    Materialization metadata: numbers in :data:`SUMMED_METADATA` add up, other numbers take
    the largest (a Delta version, the table's row count); other values are the first
    task's. A check passes only if it passed in every task; a failing task's metadata is
    kept. Custom messages pass through in task order.
    """
    grouped: dict[tuple[str, ...], list[Any]] = {}
    for results in per_task:
        for message in results:
            grouped.setdefault(_result_key(message), []).append(message)
    return [_merge(messages) for messages in grouped.values()]


def _result_key(message: Any) -> tuple[str, ...]:
    params = message.get("params") or {}
    method = str(message.get("method"))
    if method == "report_asset_check":
        return (method, str(params.get("asset_key")), str(params.get("check_name")))
    if method == "report_asset_materialization":
        return (method, str(params.get("asset_key")))
    return (method, uuid.uuid4().hex)  # custom messages are not merged


def _merge(messages: list[Any]) -> Any:
    first = messages[0]
    if len(messages) == 1:
        return first
    params = [message["params"] for message in messages]
    if first["method"] == "report_asset_check":
        failed = [p for p in params if not p.get("passed")]
        chosen = failed[0] if failed else params[0]
        merged = {**chosen, "passed": not failed}
    else:
        versions = [p.get("data_version") for p in params]
        merged = {
            **params[0],
            "metadata": _merge_metadata([p.get("metadata") or {} for p in params]),
            "data_version": _largest(versions),
        }
    return {**first, "params": merged}


def _merge_metadata(metadatas: list[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(key for metadata in metadatas for key in metadata):
        entries = [metadata[key] for metadata in metadatas if key in metadata]
        raws = [entry.get("raw_value") for entry in entries]
        numbers = all(isinstance(raw, int | float) and not isinstance(raw, bool) for raw in raws)
        if numbers and key in SUMMED_METADATA:
            merged[key] = {**entries[0], "raw_value": sum(raws)}
        elif numbers:
            merged[key] = {**entries[0], "raw_value": max(raws)}
        else:
            merged[key] = entries[0]
    return merged


def _largest(versions: list[Any]) -> Any:
    if all(isinstance(v, str) and v.isdigit() for v in versions):
        return max(versions, key=int)
    return versions[0]


class PipesCloudRunTaskMessageReader(GcsMessageReader):
    """Reads the Pipes messages every task of a Cloud Run Jobs execution writes to GCS
    (arguments as :class:`~dagster_pipes_gcf.PipesCloudStorageMessageReader`; ``prefix``
    defaults to ``dagster-pipes-jobs``).

    The session's params name the bucket and the session prefix; each task appends
    ``/task-<CLOUD_RUN_TASK_INDEX>/attempt-<CLOUD_RUN_TASK_ATTEMPT>``. The client calls
    :meth:`finish` with the attempt of each task that succeeded once the execution is over.
    """

    default_prefix = "dagster-pipes-jobs"

    _sessions: dict[str, TaskStreams]

    def finish(self, params: PipesParams, final_attempts: Mapping[int, int]) -> None:
        """The execution succeeded with these attempts: read them to the end and deliver
        their merged results (raises when any is incomplete)."""
        streams = self._sessions[str(params["key_prefix"])]
        streams.finish(final_attempts, self.polling.drain_timeout)

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        session = self.new_key_prefix()
        streams = TaskStreams(
            bucket=self.client.bucket(self.bucket),
            session_prefix=session,
            handler=handler,
            policy=self.polling,
            coalescing=self.log_coalescing,
        )
        self._sessions[session] = streams
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(streams, stop), daemon=True)
        poller.start()
        try:
            yield streams.params()
        except Exception:
            stop.set()
            poller.join(timeout=1.0)
            _last_logs(streams)  # the failed tasks' last lines, before the step's error
            raise
        finally:
            stop.set()
            poller.join(timeout=1.0)
            self._sessions.pop(session, None)

    def no_messages_debug_text(self) -> str:
        return (
            f"Attempted to read messages from GCS bucket {self.bucket}: each Cloud Run task "
            "writes them with PipesCloudStorageMessageWriter under the session's key_prefix "
            "+ /task-<CLOUD_RUN_TASK_INDEX>/attempt-<CLOUD_RUN_TASK_ATTEMPT>."
        )


def _poll(streams: TaskStreams, stop: threading.Event) -> None:
    policy = streams.policy
    interval = policy.min_interval
    while not stop.is_set():
        try:
            found = streams.read_available(stop)
        except Exception as exc:  # noqa: BLE001 - reported in the run; the drain reads again
            if not stop.is_set():
                streams._note(logging.WARNING, f"[pipes] reading task messages failed: {exc}")
            found, interval = 0, policy.max_interval
        interval = policy.next_interval(interval, found)
        stop.wait(interval)


def _last_logs(streams: TaskStreams) -> None:
    """One more best-effort read after a failure (the error that ended the call wins)."""
    try:
        streams.read_available(threading.Event())
    except Exception as exc:  # noqa: BLE001 - best effort, reported below
        logger.debug("last read of task messages failed: %s", exc)
