"""``PipesCloudRunJobClient``: run a Cloud Run job from a Dagster asset, fanned out over tasks.

One ``run()`` is one execution: the Pipes bootstrap goes in the env overrides, every task
writes its own message stream (see :mod:`dagster_pipes_gcf.task_messages`), and the step
succeeds only when every task did.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from dagster_pipes import PipesExtras
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsRestTransport
from google.cloud.run_v2.services.jobs.transports import JobsRestTransport
from google.cloud.run_v2.services.tasks.transports import TasksRestTransport
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential_jitter,
)

from dagster_pipes_gcf.client import (
    Context,
    GcpPipesClient,
    PipesCloudFunctionCompletedInvocation,
)
from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.task_messages import PipesCloudRunTaskMessageReader

ContainerOverride = run_v2.RunJobRequest.Overrides.ContainerOverride


@dataclass(frozen=True)
class CloudRunJobsApi:
    """The three Cloud Run v2 clients a job run needs."""

    jobs: run_v2.JobsClient
    executions: run_v2.ExecutionsClient
    tasks: run_v2.TasksClient

    @classmethod
    def default(cls) -> CloudRunJobsApi:
        """Clients with Application Default Credentials against Google's endpoint."""
        return cls(run_v2.JobsClient(), run_v2.ExecutionsClient(), run_v2.TasksClient())

    @classmethod
    def local(cls, endpoint: str) -> CloudRunJobsApi:
        """Clients of a local stand-in at ``host:port`` (plain HTTP, no credentials)."""
        options: dict[str, Any] = {
            "host": endpoint,
            "credentials": AnonymousCredentials(),  # type: ignore[no-untyped-call]
            "url_scheme": "http",
        }
        return cls(
            run_v2.JobsClient(transport=JobsRestTransport(**options)),
            run_v2.ExecutionsClient(transport=ExecutionsRestTransport(**options)),
            run_v2.TasksClient(transport=TasksRestTransport(**options)),
        )


@dataclass(frozen=True)
class JobPolicy:
    """How executions are launched and watched.

    Attributes:
        launch_deadline_s: how long launches refused with 429 RESOURCE_EXHAUSTED are
            retried (the run-job quota is about 10 per minute).
        poll_interval_s: seconds between two looks at the execution.
        request_timeout_s: seconds one API request may take.
    """

    launch_deadline_s: float = 300.0
    poll_interval_s: float = 1.0
    request_timeout_s: float = 30.0


class PipesCloudRunJobClient(GcpPipesClient):
    """Pipes client that runs a Cloud Run job execution and streams every task's messages.

    Each task appends ``/task-<index>/attempt-<attempt>`` to the messages ``key_prefix``.
    Invocation id (Pipes extra ``invocation_id``): one per ``run()`` call, as for
    :class:`~dagster_pipes_gcf.PipesCloudFunctionClient`; the tasks derive their own
    (``<id>.task-<index>``), so task retries and step retries commit each share once.

    Args:
        message_reader: where the tasks' messages are read from.
        api: the Cloud Run clients; Google's endpoint with default credentials if omitted.
        policy: launch retries and polling.
        forward_termination: cancel the execution when the run is terminated while it runs.
    """

    def __init__(
        self,
        message_reader: PipesCloudRunTaskMessageReader,
        api: CloudRunJobsApi | None = None,
        policy: JobPolicy | None = None,
        forward_termination: bool = True,
    ):
        self.message_reader: PipesCloudRunTaskMessageReader = message_reader
        self.context_injector = PipesCloudFunctionEventContextInjector()
        self.policy = policy or JobPolicy()
        self.forward_termination = forward_termination
        self._api = api

    @property
    def api(self) -> CloudRunJobsApi:
        if self._api is None:
            self._api = CloudRunJobsApi.default()
        return self._api

    def run(  # type: ignore[override]
        self,
        *,
        context: Context,
        job_name: str,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        task_count: int | None = None,
        timeout_s: float | None = None,
        extras: PipesExtras | None = None,
        call_key: str | None = None,
    ) -> PipesCloudFunctionCompletedInvocation:
        """Run ``job_name`` (``projects/P/locations/L/jobs/J``) and wait for its execution.

        ``args`` replace the job's args, ``env`` is merged into its env, ``task_count`` and
        ``timeout_s`` (per task attempt) override the job's.

        Raises:
            DagsterPipesExecutionError: a task failed (named, with its exit state and log
                link), or a task that succeeded left its messages incomplete.
        """
        with self.open_session(context, extras, call_key) as (session, invocation_id):
            bootstrap = {**(env or {}), **session.get_bootstrap_env_vars()}
            request = run_request(job_name, args, bootstrap, task_count, timeout_s)
            execution: run_v2.Execution | None = None
            try:
                with interrupts_deferred():  # an execution we started must be known to cancel it
                    execution = self._launch(request, context)
                context.log.info(
                    f"[pipes] Cloud Run job execution {execution.name} started with "
                    f"{execution.task_count} task(s) ({invocation_id}); logs: {execution.log_uri}"
                )
                execution = self._wait(execution.name)
            except BaseException:  # run terminated (Dagster's interrupt), or polling failed
                if execution is not None and self.forward_termination:
                    self._cancel(execution.name, context)
                raise
            tasks = list(self.api.tasks.list_tasks(parent=execution.name))
            if execution.succeeded_count != execution.task_count:
                raise DagsterPipesExecutionError(describe_failure(execution, tasks))
            context.log.info(
                f"[pipes] execution {execution.name}: all {execution.task_count} task(s) "
                f"succeeded ({execution.retried_count} retried)"
            )
            self.message_reader.finish(
                session.message_reader_params, {task.index: task.retried for task in tasks}
            )
        metadata = {
            "cloud_run_execution": execution.name,
            "cloud_run_log_uri": execution.log_uri,
            "task_count": execution.task_count,
            "tasks_succeeded": execution.succeeded_count,
            "tasks_failed": execution.failed_count,
            "tasks_retried": execution.retried_count,
            "invocation_id": invocation_id,
        }
        return PipesCloudFunctionCompletedInvocation(session, metadata=metadata)

    def _launch(self, request: run_v2.RunJobRequest, context: Context) -> run_v2.Execution:
        """Start the execution, retrying quota refusals within the launch deadline."""

        def waiting(state: RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0.0
            error = state.outcome.exception() if state.outcome else None
            context.log.warning(
                f"[pipes] run-job quota exhausted ({error}); launching again in {wait:.1f}s"
            )

        retrying = Retrying(
            retry=retry_if_exception_type(gexc.TooManyRequests),  # REST 429; gRPC ResourceExhausted
            stop=stop_before_delay(self.policy.launch_deadline_s),
            wait=wait_exponential_jitter(initial=1.0, max=30.0),
            before_sleep=waiting,
            reraise=True,
        )
        operation = retrying(
            self.api.jobs.run_job, request=request, timeout=self.policy.request_timeout_s
        )
        execution: run_v2.Execution = operation.metadata
        return execution

    def _wait(self, name: str) -> run_v2.Execution:
        """Poll until the execution completed."""
        while True:
            execution = self.api.executions.get_execution(
                name=name, timeout=self.policy.request_timeout_s
            )
            if "completion_time" in execution:
                return execution
            time.sleep(self.policy.poll_interval_s)

    def _cancel(self, name: str, context: Context) -> None:
        try:
            self.api.executions.cancel_execution(name=name, timeout=self.policy.request_timeout_s)
        except gexc.GoogleAPICallError as exc:
            context.log.warning(f"[pipes] could not cancel execution {name}: {exc}")
            return
        context.log.warning(f"[pipes] cancelled Cloud Run job execution {name}")


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Dagster's termination (SIGINT, SIGTERM) back until the block is done, then raise
    it: a launch cut off half-way would leave an execution running that nobody cancels."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise DagsterExecutionInterruptedError()


def run_request(
    job_name: str,
    args: Sequence[str] | None,
    env: Mapping[str, str],
    task_count: int | None,
    timeout_s: float | None,
) -> run_v2.RunJobRequest:
    """The run request: env merged into the job's, args (if given) replacing its args."""
    container = ContainerOverride(
        env=[run_v2.EnvVar(name=name, value=value) for name, value in env.items()],
        args=list(args or []),
    )
    overrides = run_v2.RunJobRequest.Overrides(
        container_overrides=[container], task_count=task_count or 0
    )
    if timeout_s is not None:
        overrides.timeout = dt.timedelta(seconds=timeout_s)
    return run_v2.RunJobRequest(name=job_name, overrides=overrides)


def describe_failure(execution: run_v2.Execution, tasks: Sequence[run_v2.Task]) -> str:
    """Which tasks did not succeed, how their last attempt ended and where their logs are."""
    failed = [task for task in tasks if not _succeeded(task)]
    lines = [
        f"Cloud Run job execution {execution.name}: {execution.succeeded_count} of "
        f"{execution.task_count} task(s) succeeded ({execution.failed_count} failed, "
        f"{execution.cancelled_count} cancelled); logs: {execution.log_uri}"
    ]
    for task in failed[:20]:
        result = task.last_attempt_result
        ended = (
            f"exit code {result.exit_code}: {result.status.message}"
            if "last_attempt_result" in task
            else "never finished an attempt"
        )
        lines.append(
            f"  task {task.index} failed after {task.retried + 1} attempt(s), {ended}; "
            f"logs: {task.log_uri}"
        )
    if len(failed) > 20:
        lines.append(f"  ... and {len(failed) - 20} more")
    return "\n".join(lines)


def _succeeded(task: run_v2.Task) -> bool:
    state = run_v2.Condition.State.CONDITION_SUCCEEDED
    return any(c.type_ == "Completed" and c.state == state for c in task.conditions)


def event_args(event: Mapping[str, Any]) -> list[str]:
    """Container args carrying ``event`` as one JSON argument (people_lake's task entry)."""
    return [json.dumps(dict(event), separators=(",", ":"))]
