"""Cloud Run Jobs task entry point: ``python -m people_lake.task '<event JSON>'``.

The Dagster client (``PipesCloudRunJobClient``) puts the Pipes bootstrap in the env
(``DAGSTER_PIPES_CONTEXT``, ``DAGSTER_PIPES_MESSAGES``) and the event in the one argument.
Each task takes its share of the request and writes it with the function's own logic:

- unpartitioned: ``num_rows`` split over the tasks (task ``i`` of ``n`` gets
  ``num_rows // n``, one more for the first ``num_rows % n``; a seed becomes ``seed + i``);
- daily partitions: one calendar month of the partition range per task (the client starts
  one task per month).

One Delta commit per task, idempotent on the invocation id ``<call id>.task-<index>``: the
tasks run on separate machines and Delta has no commit spanning writers, so one commit at
the end would need the rows staged and a coordinator. A retried task or step finds its
commit and writes nothing again; an execution that failed half-way is completed by the step's
retry, which skips the tasks that committed. Each task writes its Pipes messages under
``<key_prefix>/task-<index>/attempt-<attempt>``. SIGTERM (a cancelled execution) stops the
task before its commit; exit code 0 only when the share was written and reported.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import deltalake  # noqa: F401 - must be imported before polars (crash at exit otherwise)
from google.cloud import storage

from gcf_pipes import (
    Cancellation,
    PipesBootstrap,
    PipesCloudStorageMessageWriter,
    RequestCancelled,
    RequestError,
    install_logging_bridge,
    open_request_pipes,
    parse_bootstrap,
)
from gcf_pipes.bootstrap import PIPES_PARAM_KEYS
from gcf_pipes.cancel import current_request_cancellation
from people_lake.job import write_people
from people_lake.request import INVOCATION_ID_EXTRA, MAX_SEED
from people_lake.settings import FunctionSettings
from people_lake.window import DayWindow

TASK_VARS = ("CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT", "CLOUD_RUN_TASK_ATTEMPT")
MAX_TASKS = 10_000


@dataclass(frozen=True)
class CloudRunTask:
    """Which task of which execution this process is (Cloud Run's env contract)."""

    index: int
    count: int
    attempt: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CloudRunTask:
        values = []
        for name in TASK_VARS:
            text = env.get(name, "")
            if not text.isdigit() or int(text) > MAX_TASKS:
                raise RequestError(f"{name} must be a whole number 0..{MAX_TASKS}", field=name)
            values.append(int(text))
        index, count, attempt = values
        if not index < count:
            raise RequestError(
                "CLOUD_RUN_TASK_INDEX must be below the task count", field=TASK_VARS[0]
            )
        return cls(index, count, attempt)

    @property
    def messages_suffix(self) -> str:
        return f"task-{self.index}/attempt-{self.attempt}"


def rows_share(num_rows: int, task: CloudRunTask) -> int:
    """Task ``index``'s rows of ``num_rows`` split as evenly as possible."""
    if num_rows < task.count:
        raise RequestError(
            f"'num_rows' {num_rows} is fewer than the {task.count} tasks", field="num_rows"
        )
    base, extra = divmod(num_rows, task.count)
    return base + (1 if task.index < extra else 0)


def month_windows(window: DayWindow) -> list[DayWindow]:
    """``window`` cut into calendar months (the first and last may be partial)."""
    months: list[DayWindow] = []
    start = window.start
    while start <= window.end:
        next_month = (start.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        end = min(window.end, next_month - dt.timedelta(days=1))
        months.append(DayWindow(start, end))
        start = next_month
    return months


def _range_of(context: Mapping[str, Any]) -> DayWindow | None:
    key_range = context.get("partition_key_range")
    if key_range is None:
        return None
    try:
        start, end = (dt.date.fromisoformat(key_range[side]) for side in ("start", "end"))
        return DayWindow(start, end)
    except (TypeError, KeyError, ValueError):
        raise RequestError(
            "partition_key_range must be daily keys from start to end", field="partition_key_range"
        ) from None


def _midnight(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).isoformat()


def task_share(
    bootstrap: PipesBootstrap, event: Mapping[str, Any], task: CloudRunTask
) -> tuple[PipesBootstrap, dict[str, Any]]:
    """This task's bootstrap (its month, its invocation id) and event (its rows)."""
    context: dict[str, Any] = dict(bootstrap.context_data)
    extras: dict[str, Any] = dict(context.get("extras") or {})
    if isinstance(extras.get(INVOCATION_ID_EXTRA), str):
        extras[INVOCATION_ID_EXTRA] = f"{extras[INVOCATION_ID_EXTRA]}.task-{task.index}"
    context["extras"] = extras
    share = dict(event)
    window = _range_of(context)
    if window is None:
        num_rows = share.get("num_rows")
        if not isinstance(num_rows, int) or isinstance(num_rows, bool):
            raise RequestError("'num_rows' is required to split rows over tasks", field="num_rows")
        share["num_rows"] = rows_share(num_rows, task)
        if isinstance(share.get("seed"), int):
            share["seed"] = (share["seed"] + task.index) % (MAX_SEED + 1)
    else:
        months = month_windows(window)
        if len(months) != task.count:
            raise RequestError(
                f"partition range {window.text} spans {len(months)} calendar month(s) but the "
                f"execution has {task.count} task(s): one task per month",
                field="CLOUD_RUN_TASK_COUNT",
            )
        month = months[task.index]
        context["partition_key_range"] = {"start": str(month.start), "end": str(month.end)}
        if context.get("partition_time_window") is not None:
            end = month.end + dt.timedelta(days=1)
            context["partition_time_window"] = {
                "start": _midnight(month.start),
                "end": _midnight(end),
            }
    return replace(bootstrap, context_data=context), share  # type: ignore[arg-type]


def parse_task_request(
    argv: Sequence[str], env: Mapping[str, str], pipes_bucket: str
) -> tuple[PipesBootstrap, dict[str, Any]]:
    """The bootstrap (env) and event (the one JSON argument), checked like a request body."""
    if len(argv) != 1:
        raise RequestError("expected one argument: the event as a JSON object", field="args")
    try:
        event = json.loads(argv[0])
    except json.JSONDecodeError:
        raise RequestError("the event argument is not JSON", field="args") from None
    if not isinstance(event, dict) or set(event) & set(PIPES_PARAM_KEYS):
        raise RequestError("the event must be a JSON object without Pipes params", field="args")
    body = {**event, **{key: env[key] for key in PIPES_PARAM_KEYS if key in env}}
    return parse_bootstrap(body, pipes_bucket=pipes_bucket)


class TerminableCancellation(Cancellation):
    """A request cancellation set by SIGTERM (how Cloud Run cancels a task)."""

    def terminate(self) -> None:
        self._event.set()  # the same state the marker sets: checked before the commit

    def _error(self) -> RequestCancelled:
        return RequestCancelled(
            "Cloud Run stopped this task (SIGTERM: its execution was cancelled) before its commit"
        )


def run_task(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run this task's share; the exit code for Cloud Run."""
    settings = FunctionSettings.from_env(env)
    if not settings.pipes_bucket:
        print("the task has no Pipes bucket configured (PIPES_BUCKET)", file=sys.stderr)
        return 2
    try:
        task = CloudRunTask.from_env(env)
        bootstrap, event = parse_task_request(argv, env, settings.pipes_bucket)
    except RequestError as exc:  # no Pipes stream to report to yet
        print(f"refused: {exc.message} (field {exc.field})", file=sys.stderr)
        return 2
    own = replace(bootstrap, key_prefix=f"{bootstrap.key_prefix}/{task.messages_suffix}")
    client = storage.Client()
    # Cloud Run cancels a task with SIGTERM and the job client writes no cancel marker, so
    # none is looked for (a GET twice a second per task, for nothing).
    cancellation = TerminableCancellation(None, own.key_prefix)
    signal.signal(signal.SIGTERM, lambda *_: cancellation.terminate())
    writer = PipesCloudStorageMessageWriter(
        client, only_bucket=settings.pipes_bucket, cancellation=cancellation
    )
    outcome: list[int] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_write_share(own, event, task, writer, cancellation))
    )
    worker.start()
    while worker.is_alive():  # the main thread stays free to take SIGTERM at once
        worker.join(0.1)
    return outcome[0] if outcome else 1


def _write_share(
    bootstrap: PipesBootstrap,
    event: Mapping[str, Any],
    task: CloudRunTask,
    writer: PipesCloudStorageMessageWriter,
    cancellation: Cancellation,
) -> int:
    share_error: RequestError | None = None
    share = dict(event)
    try:
        bootstrap, share = task_share(bootstrap, event, task)
    except RequestError as exc:  # reported through Pipes below, the stream is known
        share_error = exc
    try:
        with (
            open_request_pipes(bootstrap, writer) as pipes,
            current_request_cancellation(cancellation),
        ):
            cancellation.warn = pipes.log.warning
            if share_error is not None:
                raise share_error
            write_people(pipes, share)
    except Exception as exc:  # noqa: BLE001 - reported to Dagster in `closed`; the exit code says it
        print(
            f"task {task.index} attempt {task.attempt} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    channel = writer.channel
    if channel is not None and channel.delivery_error is not None:
        print(f"Pipes messages not delivered: {channel.delivery_error}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    install_logging_bridge()
    sys.exit(run_task(sys.argv[1:], os.environ))


if __name__ == "__main__":
    main()
