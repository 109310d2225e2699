"""Cloud Run Jobs through a real ``dagster dev`` (webserver + daemon) and the jobs stand-in.

The local stack, the Cloud Run Jobs stand-in (tasks run ``people_lake.task`` as processes)
and ``dagster dev`` pointed at it, everything launched over GraphQL as the UI launches it:

1. A 365-day backfill of ``daily_people`` (one run, one function call): the baseline.
2. A 365-day backfill of ``daily_people_job`` (one run, one execution, a task per month)
   [one run, >= 12 tasks, <= 120 s from launch to the last day materialized, the daemon's
   pickup included; time per day (the run's own, the daemon's pickup left out) at least
   as good as 1.].
3. ``people_job`` with 5,000,000 rows over 4 tasks [peak memory per task <= 512 MiB, from
   the stand-in's side channel: each task process's ``ru_maxrss``].

The job's backfill is read back from its Delta table: every day, exactly its rows.

The floor of 2. on this machine, measured in the same run: 12 task processes started at once
as the stand-in starts them (same interpreter, env and bytecode) that only import the task
module and load the vocabulary, next to ``daily_people``'s one function call (its
``function_call_s``) and the execution itself (created -> completed, from the stand-in).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.cloud import run_v2

from bench import console
from bench.backfill import YEAR, Backfill, backfill, days, exact_days, lake_of
from bench.data_generation import LIMIT_ROWS, PEAK_TARGET_MIB
from bench.report import Row
from dagster_pipes_gcf.cloud_run_job import CloudRunJobsApi
from devstack.cloud_run_jobs import (
    PEOPLE_JOB,
    JobConfig,
    StandInConfig,
    peak_memory_records,
    running_stand_in,
)
from devstack.dagster_api import DagsterApi, GraphQLError, dagster_dev
from devstack.services import REPO_ROOT
from devstack.stack import LocalStack, local_stack
from gcf_demo.defs.assets import DEFAULT_ROWS_PER_DAY
from gcf_demo.defs.job_assets import LOCAL_JOB

SCENARIO = "cloud run jobs"
MIN_TASKS = 12
BIG_ROWS = LIMIT_ROWS
BIG_TASKS = 4
MIB = 1024 * 1024
BIG_RUN_TIMEOUT_S = 900.0
# A task's start without its work: the interpreter, the task module, the vocabulary.
BARE_START = "import people_lake.task; from people_lake.fake_people import vocabulary; vocabulary()"
BARE_START_ROUNDS = 3
MATERIALIZATION_FLOATS = """
query Floats($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on MaterializationEvent {
      metadataEntries { label ... on FloatMetadataEntry { floatValue } } } } }
    ... on Error { message }
  }
}"""


@dataclass(frozen=True)
class Floor:
    """The execution next to the one function call, and what 12 task starts alone take."""

    call_s: float  # daily_people's one function call (its function_call_s)
    execution_s: float  # daily_people_job's execution, created -> completed
    bare_starts_s: float  # 12 task processes started at once, doing nothing but start
    bare_start_cpu_s: float  # CPU seconds of one such start (mean)
    tasks_cpu_s: float  # CPU seconds of the execution's tasks together
    cores: int  # the cores the tasks share

    @property
    def tasks_on_every_core_s(self) -> float:
        """The least an execution can take here: its tasks' CPU spread over every core
        (the GCS emulator's share, and everything else, left out)."""
        return self.tasks_cpu_s / self.cores


def job_env(stack: LocalStack) -> dict[str, str]:
    """What a task needs of the stack (on Cloud Run: the job's env)."""
    return {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.data_lake_uri,
    }


def task_counts(endpoint: str) -> list[int]:
    """Each execution's task count, as the Cloud Run API reports it."""
    api = CloudRunJobsApi.local(endpoint)
    return [e.task_count for e in api.executions.list_executions(parent=LOCAL_JOB)]


def big_people_job(api: DagsterApi, task_logs: Path) -> float:
    """Peak memory (bytes) of the largest task of ``people_job`` at 5,000,000 rows."""
    config = {"ops": {"people_job": {"config": {"num_rows": BIG_ROWS, "task_count": BIG_TASKS}}}}
    seen = {str(r) for r in peak_memory_records(task_logs)}
    with console.bar(1, f"people_job: {BIG_ROWS:,} rows over {BIG_TASKS} tasks", unit="run"):
        run_id = api.launch_run("people_job", run_config=config)
        run = api.wait_for_run(run_id, timeout=BIG_RUN_TIMEOUT_S)
    if run.status != "SUCCESS":
        raise RuntimeError(f"people_job run {run_id}: {run.status} ({api.log_path})")
    new = [r for r in peak_memory_records(task_logs) if str(r) not in seen]
    if len(new) < BIG_TASKS:
        raise RuntimeError(f"people_job: {len(new)} peak-memory records for {BIG_TASKS} tasks")
    return tasks_peak_bytes(new)


def tasks_peak_bytes(records: list[dict[str, float]]) -> float:
    """The largest task's peak, refused where a task's ``ru_maxrss`` may be only the size of
    the stand-in that started it (Linux keeps it across exec)."""
    for record in records:
        if record["peak_rss_bytes"] <= record.get("starter_peak_bytes", 0):
            raise RuntimeError(f"a task's peak is not above the stand-in's own size: {record}")
    return float(max(r["peak_rss_bytes"] for r in records))


def run_per_day_s(backfill: Backfill) -> float:
    """Seconds per day from the run's creation to its end: the backfill daemon picks a
    backfill up every 30 s, a wait of 0-30 s that says nothing of the asset."""
    return (backfill.wall_s - backfill.daemon_wait_s) / backfill.days


def task_cpu_s(records: Sequence[Mapping[str, float]]) -> float:
    """Mean CPU seconds of task attempts (the stand-in's side-channel records): a task's
    fixed cost (interpreter, imports, clients) next to its share of the work."""
    return statistics.mean(r["cpu_s"] for r in records) if records else 0.0


def execution_s(execution: run_v2.Execution) -> float:
    """Seconds from the execution's creation to its completion (Cloud Run's own times)."""
    created, completed = execution.create_time, execution.completion_time
    return float(completed.timestamp() - created.timestamp())


def last_execution_s(endpoint: str) -> float:
    """The newest completed execution's seconds, as the Cloud Run API reports them."""
    api = CloudRunJobsApi.local(endpoint)
    done = [e for e in api.executions.list_executions(parent=LOCAL_JOB) if "completion_time" in e]
    return execution_s(max(done, key=lambda e: e.create_time.timestamp()))


def start_at_once(
    command: Sequence[str], count: int, env: Mapping[str, str], cwd: Path
) -> tuple[float, list[float]]:
    """Start ``count`` processes at once: seconds until the last has exited, and each
    one's CPU seconds."""
    started = time.monotonic()
    processes = [
        subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    cpu_s = []
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"{command} exited with {process.returncode}")
        cpu_s.append(usage.ru_utime + usage.ru_stime)
    return time.monotonic() - started, cpu_s


def bare_task_starts(jobs_work: Path, job: Mapping[str, object], count: int) -> tuple[float, float]:
    """``count`` bare task starts at once with the env and bytecode the stand-in gives its
    tasks: the median wall seconds of a few rounds and the mean CPU seconds of one start."""
    stand_in = StandInConfig(
        jobs={}, log_dir=jobs_work / "tasks", bytecode_dir=jobs_work / "bytecode"
    )
    env = stand_in.process_env(JobConfig.from_dict("people-job", job))
    rounds = [
        start_at_once([sys.executable, "-c", BARE_START], count, env, REPO_ROOT)
        for _ in range(BARE_START_ROUNDS)
    ]
    cpu = [seconds for _, per_process in rounds for seconds in per_process]
    return statistics.median(wall for wall, _ in rounds), statistics.mean(cpu)


def function_call_s(api: DagsterApi, run_id: str) -> float:
    """The run's function call seconds, from its materialization metadata."""
    result = api.query(MATERIALIZATION_FLOATS, runId=run_id)["logsForRun"]
    if result["__typename"] != "EventConnection":
        raise GraphQLError(f"logsForRun({run_id}): {result.get('message', result)}")
    for event in result["events"]:
        for entry in event.get("metadataEntries") or []:
            if entry.get("label") == "function_call_s" and entry.get("floatValue") is not None:
                return float(entry["floatValue"])
    raise RuntimeError(f"run {run_id} recorded no function_call_s")


def job_rows(
    job: Backfill,
    function: Backfill,
    tasks: int,
    exact: int,
    peak_bytes: float,
    *,
    cpu_s: float,
    floor: Floor,
) -> list[Row]:
    return [
        Row(SCENARIO, f"daily_people_job, {job.days} days: launch -> last day s", job.wall_s,
            "s", target=120.0),
        Row(SCENARIO, "  of which waiting for the backfill daemon s", job.daemon_wait_s, "s"),
        Row(SCENARIO, f"daily_people_job, {job.days} days: runs", len(job.runs), "",
            target=1),
        Row(SCENARIO, f"daily_people_job, {job.days} days: tasks in its execution", tasks, "",
            target=MIN_TASKS, better="higher"),
        Row(SCENARIO, f"daily_people_job, {job.days} days: s per day", job.per_day_s, "s",
            function.per_day_s, "daily_people"),
        Row(SCENARIO, "  s per day, daily_people_job / daily_people", job.per_day_s
            / function.per_day_s, "x"),
        Row(SCENARIO, "  run's own s per day (daemon's pickup left out), job / function",
            run_per_day_s(job) / run_per_day_s(function), "x", target=1.0),
        Row(SCENARIO, "  CPU s per task (mean; one month of 1,000 rows a day)", cpu_s, "s"),
        *floor_rows(floor, tasks),
        Row(SCENARIO, f"daily_people, {function.days} days (one call): launch -> last day s",
            function.wall_s, "s"),
        Row(SCENARIO, f"daily_people_job: days with exactly {DEFAULT_ROWS_PER_DAY:,} rows",
            exact, f"of {job.days}", target=job.days, better="higher"),
        Row(SCENARIO, f"people_job, {BIG_ROWS:,} rows / {BIG_TASKS} tasks: peak memory per task",
            peak_bytes / MIB, "MiB", target=PEAK_TARGET_MIB),
    ]  # fmt: skip


def floor_rows(floor: Floor, tasks: int) -> list[Row]:
    call = "the call"
    return [
        Row(SCENARIO, "daily_people's one function call s (its function_call_s)", floor.call_s,
            "s"),
        Row(SCENARIO, f"daily_people_job's execution ({tasks} tasks), created -> completed s",
            floor.execution_s, "s", floor.call_s, call),
        Row(SCENARIO, f"{MIN_TASKS} bare task starts at once (import + vocabulary, no work) s",
            floor.bare_starts_s, "s", floor.call_s, call),
        Row(SCENARIO, "  CPU s per bare task start (mean)", floor.bare_start_cpu_s, "s"),
        Row(SCENARIO, "  execution floor: bare starts / the call", floor.bare_starts_s
            / floor.call_s, "x"),
        Row(SCENARIO, f"the execution's tasks' CPU s over {floor.cores} cores (least it can "
            "take here) s", floor.tasks_on_every_core_s, "s", floor.call_s, call),
    ]  # fmt: skip


def run() -> list[Row]:
    with console.work_dir("jobs") as work:
        dagster_log = console.log_dir() / "jobs-dagster.log"
        with local_stack(work) as stack:
            people_job = {**PEOPLE_JOB, "env": job_env(stack)}
            jobs_work = work / "jobs"
            with (
                running_stand_in(jobs_work, {"people-job": people_job}) as endpoint,
                dagster_dev(
                    stack, work, log_path=dagster_log,
                    extra_env={"CLOUD_RUN_JOBS_ENDPOINT": endpoint},
                ) as api,
            ):  # fmt: skip
                year = days(YEAR)
                function = backfill(api, "daily_people", year, 1)
                job = backfill(api, "daily_people_job", year, 1)
                tasks = max(task_counts(endpoint), default=0)
                lake = lake_of(stack)  # gs:// (the default)
                exact = exact_days(lake, "daily_people_job", year, DEFAULT_ROWS_PER_DAY)
                records = peak_memory_records(jobs_work / "tasks")  # the backfill's tasks
                cpu_s = task_cpu_s(records)
                bare_s, bare_cpu_s = bare_task_starts(jobs_work, people_job, MIN_TASKS)
                floor = Floor(
                    call_s=function_call_s(api, function.runs[0].run_id),
                    execution_s=last_execution_s(endpoint),
                    bare_starts_s=bare_s,
                    bare_start_cpu_s=bare_cpu_s,
                    tasks_cpu_s=sum(r["cpu_s"] for r in records),
                    cores=len(os.sched_getaffinity(0)),
                )
                peak = big_people_job(api, jobs_work / "tasks")
                failed = [r.run_id for r in [*function.runs, *job.runs] if r.status != "SUCCESS"]
                if failed:
                    print(f"bench: runs that did not succeed: {failed}")  # into the log
                return job_rows(job, function, tasks, exact, peak, cpu_s=cpu_s, floor=floor)
