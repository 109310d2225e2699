"""A local stand-in for the Cloud Run Jobs v2 REST API: each task is a local process.

It serves what ``google-cloud-run``'s REST transport calls for running jobs: ``jobs/*:run``,
``operations/*``, get/list/cancel of executions and get/list of tasks. Requests and
responses are the library's own protobuf messages in JSON, parsed strictly: an unknown
field is 400, a route it does not serve 404, a field it does not implement 501.

Cloud semantics it keeps: a task sees ``CLOUD_RUN_JOB``, ``CLOUD_RUN_EXECUTION``,
``CLOUD_RUN_TASK_INDEX``, ``CLOUD_RUN_TASK_COUNT`` and ``CLOUD_RUN_TASK_ATTEMPT``; env
overrides are merged into the job's env and ``args`` overrides replace its args; at most
``parallelism`` tasks run at once (0: all); a task exiting non-zero or running past the
timeout is retried up to ``max_retries`` times; cancelling sends SIGTERM to running tasks and
SIGKILL after the grace period; the execution succeeded only when every task did.

Side channel (not part of the REST surface): when a task attempt exits, its peak resident
memory (the process's ``ru_maxrss``), CPU seconds and wall seconds are appended as one JSON
line to ``peak-memory.jsonl`` in the execution's log directory, ``<log_dir>/<execution>/``
(the bench reads it).

Bytecode, as in an image: a container image built by buildpacks holds its packages' compiled
bytecode, so a task does not compile its imports. A developer shell with
``PYTHONDONTWRITEBYTECODE`` set would make every local task compile about a thousand modules
again (1 CPU-second of the people task's 1.3). With ``bytecode_dir`` set, tasks get it as
``PYTHONPYCACHEPREFIX`` (bytecode written there is reused by later tasks), and each job's
``warm_imports`` are imported once at start, as the image build would compile them.

Jobs are configured at start (JSON): ``{"project": ..., "location": ..., "jobs": {"name":
{"command": [...], "args": [...], "env": {...}, "task_count": 1, "parallelism": 0,
"max_retries": 3, "timeout_s": 600, "warm_imports": [...]}}, "bytecode_dir": ...}``.
``run_quota_per_minute`` makes launches beyond it fail with 429 RESOURCE_EXHAUSTED, as the
real run-job quota does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.cloud import run_v2
from google.longrunning import operations_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format, timestamp_pb2  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]

from devstack.memory import own_peak_bytes
from devstack.net import LOOPBACK

MAX_TASK_COUNT = 10_000
MAX_BODY_BYTES = 1024 * 1024
POLL_S = 0.05
PEAK_MEMORY_FILE = "peak-memory.jsonl"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_LOCATION = rf"/v2/projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME})"
_JOB = rf"{_LOCATION}/jobs/(?P<job>{_NAME})"
_EXECUTION = rf"{_JOB}/executions/(?P<execution>{_NAME})"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"{_JOB}:run"), "run_job"),
    ("GET", re.compile(rf"{_LOCATION}/operations/(?P<operation>{_NAME})"), "get_operation"),
    ("GET", re.compile(rf"{_JOB}/executions"), "list_executions"),
    ("GET", re.compile(_EXECUTION), "get_execution"),
    ("POST", re.compile(rf"{_EXECUTION}:cancel"), "cancel_execution"),
    ("GET", re.compile(rf"{_EXECUTION}/tasks"), "list_tasks"),
    ("GET", re.compile(rf"{_EXECUTION}/tasks/(?P<task>{_NAME})"), "get_task"),
]
# What the REST transport sends in every query string, and what list calls add.
COMMON_QUERY = frozenset({"$alt"})
LIST_QUERY = COMMON_QUERY | {"pageSize", "pageToken", "showDeleted"}


class ApiError(Exception):
    """An error answered in Google's JSON error format."""

    def __init__(self, status: HTTPStatus, message: str, rpc_status: str):
        super().__init__(message)
        self.status, self.message, self.rpc_status = status, message, rpc_status

    def body(self) -> dict[str, Any]:
        return {
            "error": {"code": int(self.status), "message": self.message, "status": self.rpc_status}
        }


def bad_request(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, "INVALID_ARGUMENT")


def not_found(message: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, message, "NOT_FOUND")


def unimplemented(message: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_IMPLEMENTED, message, "UNIMPLEMENTED")


@dataclass(frozen=True)
class JobConfig:
    """One configured job: the container's command and args, env and task settings."""

    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    task_count: int = 1
    parallelism: int = 0
    max_retries: int = 3
    timeout_s: float = 600.0
    warm_imports: tuple[str, ...] = ()  # modules compiled at start (with bytecode_dir)

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any]) -> JobConfig:
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown or not raw.get("command"):
            raise ValueError(f"job {name}: needs 'command'; unknown keys {sorted(unknown)}")
        return cls(
            command=tuple(raw["command"]),
            args=tuple(raw.get("args", ())),
            env=dict(raw.get("env", {})),
            task_count=int(raw.get("task_count", 1)),
            parallelism=int(raw.get("parallelism", 0)),
            max_retries=int(raw.get("max_retries", 3)),
            timeout_s=float(raw.get("timeout_s", 600.0)),
            warm_imports=tuple(raw.get("warm_imports", ())),
        )


@dataclass(frozen=True)
class StandInConfig:
    """The stand-in's project, location, jobs and where task logs go."""

    jobs: Mapping[str, JobConfig]
    log_dir: Path
    project: str = "local-project"
    location: str = "us-central1"
    grace_s: float = 10.0
    run_quota_per_minute: int | None = None
    run_quota_window_s: float = 60.0  # shorter in tests: the quota refills sooner
    cwd: Path | None = None
    bytecode_dir: Path | None = None  # the tasks' PYTHONPYCACHEPREFIX (None: env as it is)

    @classmethod
    def from_json(cls, text: str) -> StandInConfig:
        raw = json.loads(text)
        jobs = {name: JobConfig.from_dict(name, job) for name, job in raw.pop("jobs").items()}
        quota = raw.pop("run_quota_per_minute", None)
        config = cls(
            jobs=jobs,
            log_dir=Path(raw.pop("log_dir")),
            project=raw.pop("project", "local-project"),
            location=raw.pop("location", "us-central1"),
            grace_s=float(raw.pop("grace_s", 10.0)),
            run_quota_per_minute=None if quota is None else int(quota),
            run_quota_window_s=float(raw.pop("run_quota_window_s", 60.0)),
            cwd=_optional_path(raw.pop("cwd", None)),
            bytecode_dir=_optional_path(raw.pop("bytecode_dir", None)),
        )
        if raw:
            raise ValueError(f"unknown stand-in config keys {sorted(raw)}")
        return config

    def job_name(self, job: str) -> str:
        return f"projects/{self.project}/locations/{self.location}/jobs/{job}"

    def process_env(self, job: JobConfig) -> dict[str, str]:
        """The environment a job's processes start from: this process's, the job's, and the
        bytecode cache (a developer shell's PYTHONDONTWRITEBYTECODE does not reach them)."""
        env = {**os.environ, **job.env}
        if self.bytecode_dir is not None:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.bytecode_dir)
        return env


def compile_warm_imports(config: StandInConfig) -> None:
    """Import each job's ``warm_imports`` once in a child process, writing their bytecode
    to ``bytecode_dir`` (what an image build does); a failure here fails the start."""
    if config.bytecode_dir is None:
        return
    for job in config.jobs.values():
        for module in job.warm_imports:
            subprocess.run(
                [sys.executable, "-c", f"import {module}"],
                cwd=config.cwd,
                env=config.process_env(job),
                check=True,
            )


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class TaskRun:
    """One task of an execution: its attempts, the live process and the outcome."""

    index: int
    attempt: int = -1  # no attempt started yet
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    state: str = "pending"  # pending, running, succeeded, failed, cancelled
    exit_code: int | None = None
    message: str = ""
    start_time: timestamp_pb2.Timestamp | None = None
    completion_time: timestamp_pb2.Timestamp | None = None
    log_path: Path | None = None

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class ExecutionRun:
    """An execution's tasks, run as local processes by a scheduler thread."""

    def __init__(
        self,
        config: StandInConfig,
        job: str,
        job_config: JobConfig,
        *,
        task_count: int,
        timeout_s: float,
        env: Mapping[str, str],
        args: Sequence[str],
    ):
        self.config, self.job, self.job_config = config, job, job_config
        self.short_id = f"{job}-{uuid.uuid4().hex[:5]}"
        self.name = f"{config.job_name(job)}/executions/{self.short_id}"
        self.task_count, self.timeout_s = task_count, timeout_s
        self.env, self.args = dict(env), list(args)
        self.tasks = [TaskRun(index) for index in range(task_count)]
        self.log_dir = config.log_dir / self.short_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.create_time = _now()
        self.completion_time: timestamp_pb2.Timestamp | None = None
        self.retried = 0
        self.cancel_requested = threading.Event()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._schedule, name=self.short_id, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def parallelism(self) -> int:
        return self.job_config.parallelism or self.task_count

    # -- the scheduler -------------------------------------------------------------------
    def _schedule(self) -> None:
        pending = deque(self.tasks)
        while True:
            with self.lock:
                # Reaped first: a task that ended before the cancel keeps its outcome.
                for task in [task for task in self.tasks if task.state == "running"]:
                    self._check(task, pending)
                if self.cancel_requested.is_set():
                    self._cancel_all(pending)
                    break
                while pending and sum(t.state == "running" for t in self.tasks) < self.parallelism:
                    self._launch(pending.popleft())
                if all(task.done for task in self.tasks):
                    self.completion_time = _now()
                    return
            time.sleep(POLL_S)
        self._stop_processes()
        with self.lock:
            self.completion_time = _now()

    def _launch(self, task: TaskRun) -> None:
        task.attempt += 1
        task.state, task.exit_code, task.message = "running", None, ""
        task.start_time = task.start_time or _now()
        task.log_path = self.log_dir / f"task-{task.index}-attempt-{task.attempt}.log"
        env = {
            **self.config.process_env(self.job_config),
            **self.env,
            "CLOUD_RUN_JOB": self.job,
            "CLOUD_RUN_EXECUTION": self.short_id,
            "CLOUD_RUN_TASK_INDEX": str(task.index),
            "CLOUD_RUN_TASK_COUNT": str(self.task_count),
            "CLOUD_RUN_TASK_ATTEMPT": str(task.attempt),
        }
        with open(task.log_path, "wb") as log:
            task.process = subprocess.Popen(
                [*self.job_config.command, *self.args],
                cwd=self.config.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        task.started_at = time.monotonic()

    def _check(self, task: TaskRun, pending: deque[TaskRun]) -> None:
        assert task.process is not None
        code = self._reap(task)
        if code is None:
            if time.monotonic() - task.started_at <= self.timeout_s:
                return
            _terminate([task.process], self.config.grace_s)
            code, why = task.process.wait(), f"timed out after {self.timeout_s:g}s"
        else:
            why = f"exited with code {code}"
        task.exit_code = code
        if code == 0:
            task.state, task.completion_time = "succeeded", _now()
            return
        task.message = f"Task {task.index} attempt {task.attempt} {why}"
        if task.attempt < self.job_config.max_retries:
            self.retried += 1
            task.state = "pending"
            pending.append(task)
        else:
            task.state, task.completion_time = "failed", _now()

    def _reap(self, task: TaskRun) -> int | None:
        """The attempt's exit code once it has exited (None while it runs); on exit its peak
        memory goes to the side channel. ``wait4`` is ``poll`` plus the child's rusage."""
        process = task.process
        assert process is not None
        if process.returncode is not None:
            return process.returncode
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == 0:
            return None
        process.returncode = os.waitstatus_to_exitcode(status)
        self._record_peak_memory(task, process.returncode, usage)
        return process.returncode

    def _record_peak_memory(
        self, task: TaskRun, exit_code: int, usage: resource.struct_rusage
    ) -> None:
        record = {
            "task_index": task.index,
            "attempt": task.attempt,
            "exit_code": exit_code,
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # ru_maxrss is in KiB on Linux
            # Its peak so far, at least its size when it started the task: what the task's
            # ru_maxrss cannot go below (Linux keeps it across exec).
            "starter_peak_bytes": own_peak_bytes(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "wall_s": round(time.monotonic() - task.started_at, 3),
        }
        with open(self.log_dir / PEAK_MEMORY_FILE, "a") as side_channel:
            side_channel.write(json.dumps(record) + "\n")

    def _cancel_all(self, pending: deque[TaskRun]) -> None:
        for task in self.tasks:
            if not task.done:
                task.state, task.message = "cancelled", "cancelled"
                task.completion_time = _now()
        pending.clear()

    def _stop_processes(self) -> None:
        processes = [t.process for t in self.tasks if t.process and t.process.poll() is None]
        _terminate(processes, self.config.grace_s)
        with self.lock:
            for task in self.tasks:
                if task.process is not None and task.exit_code is None:
                    task.exit_code = task.process.poll()

    # -- the API view --------------------------------------------------------------------
    def count(self, state: str) -> int:
        return sum(task.state == state for task in self.tasks)

    def succeeded(self) -> bool:
        return self.count("succeeded") == self.task_count

    def execution(self) -> run_v2.Execution:
        with self.lock:
            execution = run_v2.Execution(
                name=self.name,
                uid=self.short_id,
                job=self.job,
                create_time=self.create_time,
                start_time=self.create_time,
                parallelism=self.job_config.parallelism,
                task_count=self.task_count,
                running_count=self.count("running"),
                succeeded_count=self.count("succeeded"),
                failed_count=self.count("failed"),
                cancelled_count=self.count("cancelled"),
                retried_count=self.retried,
                log_uri=self.log_dir.as_uri(),
                reconciling=self.completion_time is None,
                conditions=[self._completed_condition()],
            )
            if self.completion_time is not None:
                execution.completion_time = self.completion_time
            return execution

    def _completed_condition(self) -> run_v2.Condition:
        state = run_v2.Condition.State
        reason = run_v2.Condition.ExecutionReason
        if self.completion_time is None:
            return run_v2.Condition(type_="Completed", state=state.CONDITION_RECONCILING)
        if self.succeeded():
            return run_v2.Condition(type_="Completed", state=state.CONDITION_SUCCEEDED)
        cancelled = self.cancel_requested.is_set()
        return run_v2.Condition(
            type_="Completed",
            state=state.CONDITION_FAILED,
            execution_reason=reason.CANCELLED if cancelled else reason.NON_ZERO_EXIT_CODE,
            message=f"{self.count('failed')} task(s) failed, {self.count('cancelled')} cancelled",
        )

    def task_name(self, index: int) -> str:
        return f"{self.name}/tasks/{self.short_id}-task{index}"

    def task(self, index: int) -> run_v2.Task:
        with self.lock:
            task = self.tasks[index]
            proto = run_v2.Task(
                name=self.task_name(index),
                job=self.job,
                execution=self.short_id,
                index=index,
                retried=max(task.attempt, 0),
                max_retries=self.job_config.max_retries,
                reconciling=not task.done,
                log_uri=(task.log_path or self.log_dir).as_uri(),
                conditions=[_task_condition(task)],
            )
            if task.exit_code is not None:
                proto.last_attempt_result = run_v2.TaskAttemptResult(
                    exit_code=task.exit_code,
                    status=status_pb2.Status(
                        code=0 if task.exit_code == 0 else 2, message=task.message
                    ),
                )
            if task.start_time is not None:
                proto.start_time = task.start_time
            if task.completion_time is not None:
                proto.completion_time = task.completion_time
            return proto


def _task_condition(task: TaskRun) -> run_v2.Condition:
    state = run_v2.Condition.State
    states = {
        "succeeded": state.CONDITION_SUCCEEDED,
        "failed": state.CONDITION_FAILED,
        "cancelled": state.CONDITION_FAILED,
    }
    return run_v2.Condition(
        type_="Completed",
        state=states.get(task.state, state.CONDITION_RECONCILING),
        message=task.message,
    )


def _terminate(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM to each process group, SIGKILL to what still runs after ``grace_s``."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


class CloudRunJobs:
    """The API: executions and operations kept in memory, answered as protobuf JSON."""

    def __init__(self, config: StandInConfig):
        self.config = config
        self.executions: dict[str, ExecutionRun] = {}
        self.operations: dict[str, str] = {}  # operation name -> execution name
        self._launches: deque[float] = deque()
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, query: str, body: bytes) -> Mapping[str, Any]:
        for route_method, pattern, action in ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                params = match.groupdict()
                self._check_location(params)
                allowed = LIST_QUERY if action.startswith("list_") else COMMON_QUERY
                _check_query(query, allowed)
                if method == "GET" and body:
                    raise bad_request("a GET request has no body")
                return dict(getattr(self, action)(params, body))
        raise not_found(f"{method} {path} is not a route of the Cloud Run Jobs v2 API stand-in")

    def _check_location(self, params: Mapping[str, str]) -> None:
        if (params["project"], params["location"]) != (self.config.project, self.config.location):
            raise not_found(f"project/location {params['project']}/{params['location']} not found")

    def _execution(self, params: Mapping[str, str]) -> ExecutionRun:
        name = f"{self.config.job_name(params['job'])}/executions/{params['execution']}"
        execution = self.executions.get(name)
        if execution is None:
            raise not_found(f"execution {name} not found")
        return execution

    def run_job(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        job = self.config.jobs.get(params["job"])
        if job is None:
            raise not_found(f"job {self.config.job_name(params['job'])} not found")
        request = _parse(body, run_v2.RunJobRequest)
        if request.validate_only or request.etag:
            raise unimplemented("validate_only and etag are not implemented by the stand-in")
        self._take_quota()
        execution = self._new_execution(params["job"], job, request.overrides)
        execution.start()
        operation = self._new_operation_name()
        with self._lock:
            self.executions[execution.name] = execution
            self.operations[operation] = execution.name
        return self._operation(operation, execution)

    def _location(self) -> str:
        return f"projects/{self.config.project}/locations/{self.config.location}"

    def _new_operation_name(self) -> str:
        return f"{self._location()}/operations/{uuid.uuid4()}"

    def _take_quota(self) -> None:
        quota = self.config.run_quota_per_minute
        if quota is None:
            return
        with self._lock:
            now = time.monotonic()
            while self._launches and now - self._launches[0] > self.config.run_quota_window_s:
                self._launches.popleft()
            if len(self._launches) >= quota:
                raise ApiError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"Quota exceeded: {quota} job runs per minute",
                    "RESOURCE_EXHAUSTED",
                )
            self._launches.append(now)

    def _new_execution(
        self, name: str, job: JobConfig, overrides: run_v2.RunJobRequest.Overrides
    ) -> ExecutionRun:
        containers = list(overrides.container_overrides)
        if len(containers) > 1:
            raise bad_request("overrides.container_overrides: the job has one container")
        env: dict[str, str] = {}
        args: Sequence[str] = job.args
        if containers:
            container = containers[0]
            if container.name:
                raise unimplemented("overrides.container_overrides.name is not implemented")
            for var in container.env:
                if "value_source" in var:
                    raise unimplemented("overrides.container_overrides.env.value_source")
                if not var.name:
                    raise bad_request("overrides.container_overrides.env.name is required")
                env[var.name] = var.value
            if container.args or container.clear_args:
                args = list(container.args)
        task_count = overrides.task_count or job.task_count
        if not 1 <= task_count <= MAX_TASK_COUNT:
            raise bad_request(f"overrides.task_count must be 1..{MAX_TASK_COUNT}")
        timeout = overrides.timeout.total_seconds() if "timeout" in overrides else job.timeout_s
        if timeout <= 0:
            raise bad_request("overrides.timeout must be positive")
        return ExecutionRun(
            self.config, name, job, task_count=task_count, timeout_s=timeout, env=env, args=args
        )

    def _operation(self, name: str, execution: ExecutionRun) -> Mapping[str, Any]:
        snapshot = execution.execution()
        operation = operations_pb2.Operation(name=name, done=snapshot.completion_time is not None)
        operation.metadata.Pack(run_v2.Execution.pb(snapshot))
        if operation.done and execution.succeeded():
            operation.response.Pack(run_v2.Execution.pb(snapshot))
        elif operation.done:
            operation.error.CopyFrom(
                status_pb2.Status(code=2, message=snapshot.conditions[0].message)
            )
        return dict(json_format.MessageToDict(operation))

    def get_operation(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        name = f"{self._location()}/operations/{params['operation']}"
        execution = self.operations.get(name)
        if execution is None:
            raise not_found(f"operation {name} not found")
        return self._operation(name, self.executions[execution])

    def get_execution(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        return _to_dict(self._execution(params).execution())

    def list_executions(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        job = self.config.job_name(params["job"])
        if params["job"] not in self.config.jobs:
            raise not_found(f"job {job} not found")
        found = [e.execution() for e in self.executions.values() if e.name.startswith(f"{job}/")]
        return _to_dict(run_v2.ListExecutionsResponse(executions=found))

    def cancel_execution(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        _parse(body, run_v2.CancelExecutionRequest)
        execution = self._execution(params)
        execution.cancel_requested.set()
        name = self._new_operation_name()
        with self._lock:
            self.operations[name] = execution.name
        return self._operation(name, execution)

    def list_tasks(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        execution = self._execution(params)
        tasks = [execution.task(index) for index in range(execution.task_count)]
        return _to_dict(run_v2.ListTasksResponse(tasks=tasks))

    def get_task(self, params: Mapping[str, str], body: bytes) -> Mapping[str, Any]:
        execution = self._execution(params)
        for index in range(execution.task_count):
            if execution.task_name(index).endswith(f"/tasks/{params['task']}"):
                return _to_dict(execution.task(index))
        raise not_found(f"task {params['task']} not found")

    def shutdown(self) -> None:
        """Cancel every execution and wait for its tasks to stop (SIGTERM, then SIGKILL)."""
        executions = list(self.executions.values())
        for execution in executions:
            execution.cancel_requested.set()
        for execution in executions:
            execution.join(self.config.grace_s + 5)


def _parse(body: bytes, message_type: Any) -> Any:
    """``body`` as ``message_type``; 400 naming the problem (an unknown field included)."""
    message = message_type.pb(message_type())
    try:
        json_format.Parse(body.decode("utf-8") or "{}", message, ignore_unknown_fields=False)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise bad_request(f"invalid {message_type.__name__}: {exc}") from None
    return message_type.wrap(message)


def _to_dict(message: Any) -> dict[str, Any]:
    return dict(json_format.MessageToDict(type(message).pb(message)))


def _check_query(query: str, allowed: frozenset[str]) -> None:
    unknown = set(parse_qs(query, keep_blank_values=True)) - allowed
    if unknown:
        raise bad_request(f"unknown query parameter(s) {sorted(unknown)}")


def make_handler(api: CloudRunJobs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise bad_request(f"request body over {MAX_BODY_BYTES} bytes")
                body = self.rfile.read(length) if length else b""
                status, answer = HTTPStatus.OK, api.handle(method, url.path, url.query, body)
            except ApiError as exc:
                status, answer = exc.status, exc.body()
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(config: StandInConfig, port: int, host: str = LOOPBACK) -> None:
    """Serve until SIGTERM/SIGINT; running executions are cancelled on the way out."""
    compile_warm_imports(config)
    api = CloudRunJobs(config)
    server = ThreadingHTTPServer((host, port), make_handler(api))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        api.shutdown()
        server.server_close()


def peak_memory_records(log_dir: Path) -> list[dict[str, float]]:
    """Every task attempt's side-channel record (peak memory, CPU and wall seconds) under
    ``log_dir`` (the stand-in's task logs)."""
    return [
        json.loads(line)
        for path in sorted(log_dir.glob(f"*/{PEAK_MEMORY_FILE}"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@contextmanager
def running_stand_in(
    work_dir: Path, jobs: Mapping[str, Mapping[str, Any]], **options: Any
) -> Iterator[str]:
    """Run the stand-in as a process with ``jobs`` (and config ``options``) until the block
    exits; yields its endpoint ``127.0.0.1:<port>`` (for ``client_options.api_endpoint``)."""
    from devstack.net import free_port
    from devstack.services import running

    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "jobs": jobs,
        "log_dir": str(work_dir / "tasks"),
        "bytecode_dir": str(work_dir / "bytecode"),
        **options,
    }
    config_path = work_dir / "cloud-run-jobs.json"
    config_path.write_text(json.dumps(config))
    StandInConfig.from_json(config_path.read_text())  # a bad config fails here, not in the child
    port = free_port()
    command = [sys.executable, "-m", "devstack.cloud_run_jobs", "--port", str(port)]
    with running(
        "Cloud Run Jobs stand-in",
        [*command, "--config", str(config_path)],
        port,
        log_path=work_dir / "cloud-run-jobs.log",
    ):
        yield f"{LOOPBACK}:{port}"


DEFAULT_ENDPOINT = f"{LOOPBACK}:8091"
# The demo's job (gcf_demo.defs.job_assets): the people function's logic, one share per task.
# Parallelism stays 0 (every task at once, as the issue's >= 12 tasks in parallel asks): on
# 2 cores, parallelism 2 measured no faster (the tasks are CPU-bound either way).
PEOPLE_JOB = {
    "command": [sys.executable, "-m", "people_lake.task"],
    "max_retries": 1,
    "warm_imports": ["people_lake.task"],
}


def local_jobs_command(port: int, work_dir: Path) -> list[str]:
    """The stand-in for ``just dd``, serving the demo's ``people-job`` (tasks inherit the
    stack's env: emulator, Pipes bucket, data lake)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "config.json"
    config = {
        "jobs": {"people-job": PEOPLE_JOB},
        "log_dir": str(work_dir / "tasks"),
        "bytecode_dir": str(work_dir / "bytecode"),
    }
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "devstack.cloud_run_jobs", "--port", str(port)]
    return [*command, "--config", str(config_path)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True, help="JSON job configuration")
    options = parser.parse_args(argv)
    serve(StandInConfig.from_json(options.config.read_text()), options.port)


if __name__ == "__main__":
    main()
