"""The Cloud Run Jobs assets in a real ``dagster dev`` (webserver, daemon, a run worker per
run), launched and terminated over GraphQL as the UI does, against the local stack and the
Cloud Run Jobs stand-in (tasks run ``people_lake.task`` as processes).

- A terminated ``people_job`` run is CANCELED within 10 s, its execution is cancelled in the
  stand-in, and the table's version does not move afterwards.
- A 365-day backfill of ``daily_people_job`` is one run and one execution of >= 12 tasks.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.cloud import run_v2

from dagster_pipes_gcf import CloudRunJobsApi
from devstack.cloud_run_jobs import PEOPLE_JOB, running_stand_in
from devstack.dagster_api import DagsterApi, Run, dagster_dev
from devstack.lakes import Lake
from devstack.stack import LocalStack
from gcf_demo.defs.job_assets import LOCAL_JOB

from .conftest import fresh_lake, wait_until
from .test_termination import TERMINATE, wait_for_status

CANCELED_WITHIN_S = 10.0
# 2,500,000 rows per task: every task is still streaming, far from its commit, when the
# terminate lands (at 1,000,000 a task could commit between "batch 1" and the terminate).
TERMINATED_ROWS = 5_000_000
TASKS = 2
YEAR = [(dt.date(2025, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(365)]
ROWS_PER_DAY = 2  # the backfill's work stays small next to its 12 task starts
BACKFILL_TIMEOUT_S = 240.0  # the daemon's pickup (up to 30 s) included


@dataclass(frozen=True)
class JobsDagster:
    """``dagster dev`` pointed at the stand-in, and the lake its assets write to."""

    api: DagsterApi
    jobs: CloudRunJobsApi
    lake: Lake


@pytest.fixture(scope="module")
def jobs_dagster(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobsDagster]:
    work = tmp_path_factory.mktemp("jobs-dagster")
    lake = fresh_lake(stack)
    task_env = {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": str(lake),
    }
    job = {**PEOPLE_JOB, "env": task_env}
    with (
        running_stand_in(work / "jobs", {"people-job": job}, grace_s=5.0) as endpoint,
        dagster_dev(
            stack,
            work,
            extra_env={"CLOUD_RUN_JOBS_ENDPOINT": endpoint, "DATA_LAKE_URI": str(lake)},
        ) as api,
    ):
        yield JobsDagster(api, CloudRunJobsApi.local(endpoint), lake)


def executions(jobs: CloudRunJobsApi) -> dict[str, run_v2.Execution]:
    return {e.name: e for e in jobs.executions.list_executions(parent=LOCAL_JOB)}


def wait_for_new_execution(jobs: CloudRunJobsApi, before: set[str], timeout: float) -> str:
    new = wait_until(lambda: set(executions(jobs)) - before, timeout, "no execution started")
    (name,) = new
    return name


def wait_for_message(api: DagsterApi, run_id: str, fragment: str, timeout: float) -> None:
    wait_until(
        lambda: any(fragment in message for message in api.run_messages(run_id)),
        timeout,
        f"run {run_id} never logged {fragment!r}",
        interval=0.2,
    )


def wait_for_completion(jobs: CloudRunJobsApi, name: str, timeout: float) -> run_v2.Execution:
    return wait_until(
        lambda: completed(jobs.executions.get_execution(name=name)),
        timeout,
        f"execution {name} did not complete",
    )


def completed(execution: run_v2.Execution) -> run_v2.Execution | None:
    return execution if "completion_time" in execution else None


def test_a_terminated_people_job_run_is_canceled_and_its_execution_commits_nothing(
    jobs_dagster: JobsDagster,
) -> None:
    api, jobs = jobs_dagster.api, jobs_dagster.jobs
    lake = jobs_dagster.lake
    before = set(executions(jobs))
    config = {"num_rows": TERMINATED_ROWS, "task_count": TASKS}
    run_id = api.launch_run("people_job", run_config={"ops": {"people_job": {"config": config}}})
    execution = wait_for_new_execution(jobs, before, timeout=120)
    wait_for_message(api, run_id, "] batch 1:", timeout=120)  # a task is streaming rows
    version_before = lake.version("people_job")

    result = api.query(TERMINATE, runId=run_id)["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    canceled_after = wait_for_status(api, run_id, "CANCELED", timeout=60)

    assert canceled_after <= CANCELED_WITHIN_S, f"CANCELED only {canceled_after:.1f} s after"
    print(f"people_job run CANCELED {canceled_after:.1f} s after the terminate request")
    ended = wait_for_completion(jobs, execution, timeout=30)
    assert ended.cancelled_count == TASKS and ended.succeeded_count == 0, ended
    assert any(
        m.startswith(f"[pipes] cancelled Cloud Run job execution {execution}")
        for m in api.run_messages(run_id)
    )
    time.sleep(2)  # every task process has ended; look again a little later all the same
    assert lake.version("people_job") == version_before


def test_a_year_of_daily_people_job_is_one_run_of_one_execution_over_its_months(
    jobs_dagster: JobsDagster,
) -> None:
    api, jobs = jobs_dagster.api, jobs_dagster.jobs
    before = set(executions(jobs))
    started = time.monotonic()
    config = {"ops": {"daily_people_job": {"config": {"num_rows": ROWS_PER_DAY}}}}
    backfill_id = api.launch_backfill("daily_people_job", YEAR, run_config=config)

    runs: list[Run] = api.wait_for_backfill_runs(backfill_id, 1, BACKFILL_TIMEOUT_S)

    took = time.monotonic() - started
    (run,) = runs
    assert run.status == "SUCCESS", api.run_messages(run.run_id)[-5:]
    assert (
        run.tags["dagster/asset_partition_range_start"],
        run.tags["dagster/asset_partition_range_end"],
    ) == (YEAR[0], YEAR[-1])
    (execution,) = [e for name, e in executions(jobs).items() if name not in before]
    assert execution.task_count >= 12 and execution.succeeded_count == execution.task_count
    people = jobs_dagster.lake.read("daily_people_job")
    per_day = dict(people.group_by("event_date").len().iter_rows())
    assert {day.isoformat(): n for day, n in per_day.items()} == dict.fromkeys(YEAR, ROWS_PER_DAY)
    print(f"365-day backfill of daily_people_job: {took:.1f} s from launch")  # pytest -s
