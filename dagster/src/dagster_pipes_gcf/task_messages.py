"""Pipes messages of a Cloud Run Jobs execution: one chunk stream per task attempt.

Every task writes under ``<session prefix>/task-<index>/attempt-<attempt>``, so a retried
task never meets its earlier attempt's chunks. The reader finds the streams by listing the
session prefix and streams every log line into Dagster, tagged with its task; a stream is
downloaded from only when that listing shows its next chunk (or it has messages left), so a
poll costs one listing and a download per new chunk, not a request per running task. Results are
held back: once the execution is over, only the attempt of each task that succeeded counts,
each must end with ``closed``, and the tasks' results are merged into one per asset (and
check).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

from dagster import PipesMessageHandler
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesParams, _make_message

from dagster_pipes_gcf.message_reader import (
    GCS_ERRORS,
    NEVER,
    RESULT_METHODS,
    ChunkStream,
    GcsMessageReader,
    MessageStreams,
    PollingPolicy,
    list_names,
)

_TASK_CHUNK = re.compile(r"/task-(\d+)/attempt-(\d+)/\d+\.json$")
# Metadata of the tasks' materializations that adds up; other numbers take the largest.
SUMMED_METADATA = frozenset({"rows_written", "days"})
# Batch tasks: their log lines may wait a quarter of a second longer (every task flushes
# its chunks every 0.2 s, so most polls find something and poll again at the minimum).
TASK_POLLING = PollingPolicy(min_interval=0.25)


@dataclass
class TaskStream:
    """One task attempt's messages; its results wait until it is known to have succeeded."""

    index: int
    attempt: int
    stream: ChunkStream
    results: list[Any] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"task {self.index}" + (f" attempt {self.attempt}" if self.attempt else "")


class TaskStreams(MessageStreams):
    """The task streams of one Pipes session."""

    def __init__(self, reader: GcsMessageReader, handler: PipesMessageHandler):
        super().__init__(reader, handler)
        self.tasks: dict[tuple[int, int], TaskStream] = {}
        self._opened = False

    def task(self, index: int, attempt: int) -> TaskStream:
        prefix = f"{self.session_prefix}/task-{index}/attempt-{attempt}"
        if (index, attempt) not in self.tasks:
            self.tasks[(index, attempt)] = TaskStream(index, attempt, self.chunks(prefix))
        return self.tasks[(index, attempt)]

    def discover(self, *, deadline: float) -> set[str]:
        """Add the streams that wrote a chunk since the last look; the chunk names listed."""
        prefix = f"{self.session_prefix}/task-"
        try:
            names = list_names(self.bucket, prefix, self.policy, deadline)
        except GCS_ERRORS as exc:  # quoted below: chained, it would be printed twice
            raise DagsterPipesExecutionError(
                f"could not list the Pipes messages under gs://{self.bucket.name}/{prefix} "
                f"(retried for {deadline:g}s): {type(exc).__name__}: {exc}"
            ) from None
        for match in filter(None, map(_TASK_CHUNK.search, names)):
            self.task(int(match.group(1)), int(match.group(2)))
        return set(names)

    def read_available(self, stop: threading.Event) -> int:
        """After the call (``NEVER`` stops it) a failing listing is retried for the policy's
        ``list_deadline``; otherwise for one poll interval (the poller lists again at its
        next poll, and must never hold the final read back for long)."""
        patient = stop is NEVER
        read = 0
        with self._reading:
            listed = self.discover(
                deadline=self.policy.list_deadline if patient else self.policy.max_interval
            )
            for task in sorted(self.tasks.values(), key=lambda t: (t.index, t.attempt)):
                while (
                    not stop.is_set()
                    and (message := task.stream.next_message(stop, listed)) is not None
                ):
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
                self.note(
                    logging.ERROR,
                    f"[pipes] {task.tag} failed: {exception.get('name')}: "
                    f"{str(exception.get('message', '')).strip()}",
                )
        elif method in RESULT_METHODS:
            task.results.append(message)
        else:
            self.handler.handle_message(message)

    def finish(self, final_attempts: Mapping[int, int]) -> None:
        """Read each task's succeeded attempt to its ``closed``, then deliver the merged
        results. Raises naming every task whose messages are incomplete."""
        finals = [self.task(index, attempt) for index, attempt in final_attempts.items()]
        timeout = self.policy.drain_timeout
        self.read_until(lambda: all(task.stream.closed_seen for task in finals), timeout)
        if incomplete := [task for task in finals if not task.stream.closed_seen]:
            raise DagsterPipesExecutionError(
                "Pipes messages are incomplete for task(s) that succeeded: "
                + "; ".join(f"{task.tag}: {task.stream.incomplete(timeout)}" for task in incomplete)
            )
        for message in merge_results([task.results for task in finals]):
            self.handler.handle_message(message)
        self.handler.handle_message(_make_message("closed", None))

    def read_to_end(self, failed: bool) -> None:
        if failed:
            with suppress(Exception):  # the failed tasks' last lines, before the step's error
                self.read_available(threading.Event())


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
    defaults to ``dagster-pipes-jobs`` and ``polling`` to :data:`TASK_POLLING`; the
    orchestrator also needs to list the bucket).

    Each task appends ``/task-<CLOUD_RUN_TASK_INDEX>/attempt-<CLOUD_RUN_TASK_ATTEMPT>`` to
    the session's key prefix. The client calls :meth:`finish` once the execution is over.
    """

    default_prefix = "dagster-pipes-jobs"

    def __init__(self, *, polling: PollingPolicy | None = None, **reader: Any):
        super().__init__(polling=polling or TASK_POLLING, **reader)

    streams_type = TaskStreams

    def finish(self, params: PipesParams, final_attempts: Mapping[int, int]) -> None:
        """The execution succeeded with these attempts (task index -> attempt): read them to
        the end and deliver their merged results (raises when any is incomplete)."""
        cast(TaskStreams, self._session(params)).finish(final_attempts)

    def no_messages_debug_text(self) -> str:
        return (
            f"Attempted to read messages from GCS bucket {self.bucket}: each Cloud Run task "
            "writes them with PipesCloudStorageMessageWriter under the session's key_prefix "
            "+ /task-<CLOUD_RUN_TASK_INDEX>/attempt-<CLOUD_RUN_TASK_ATTEMPT>."
        )
