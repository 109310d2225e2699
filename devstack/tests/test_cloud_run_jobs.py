"""The Cloud Run Jobs stand-in, driven by the real ``google-cloud-run`` library."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from dagster_pipes_gcf.cloud_run_job import CloudRunJobsApi, run_request
from devstack.cloud_run_jobs import (
    ExecutionRun,
    JobConfig,
    StandInConfig,
    peak_memory_records,
    running_stand_in,
)

PARENT = "projects/local-project/locations/us-central1/jobs"
# Each task prints its env contract and args as JSON, then does what TASK_MODE says.
TASK = """
import json, os, sys, time
keys = ["CLOUD_RUN_JOB", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT",
        "CLOUD_RUN_TASK_ATTEMPT", "JOB_VAR", "OVERRIDE_VAR"]
print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "args": sys.argv[1:],
                  "start": time.time()}), flush=True)
mode = os.environ.get("TASK_MODE", "ok")
if mode == "fail_first" and os.environ["CLOUD_RUN_TASK_ATTEMPT"] == "0":
    sys.exit(3)
if mode == "fail_task_1" and os.environ["CLOUD_RUN_TASK_INDEX"] == "1":
    sys.exit(4)
if mode == "sleep":
    time.sleep(float(os.environ.get("SLEEP_S", "0.5")))
if mode == "hog" and os.environ["CLOUD_RUN_TASK_INDEX"] == "1":
    hog = b"x" * (200 << 20)
if mode == "ignore_term":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: print("TERM", flush=True))
    time.sleep(60)
"""


def job(**settings: object) -> dict[str, object]:
    return {"command": [sys.executable, "-c", TASK], "args": ["job-arg"], **settings}


JOBS = {
    "echo": job(env={"JOB_VAR": "from-job"}, max_retries=0),
    "retry": job(env={"TASK_MODE": "fail_first"}, max_retries=1),
    "fails": job(env={"TASK_MODE": "fail_task_1"}, max_retries=1),
    "serial": job(env={"TASK_MODE": "sleep", "SLEEP_S": "0.3"}, parallelism=1),
    "slow": job(env={"TASK_MODE": "sleep", "SLEEP_S": "30"}, max_retries=1, timeout_s=1),
    "stubborn": job(env={"TASK_MODE": "ignore_term"}, max_retries=0),
}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("cloud-run-jobs")
    with running_stand_in(work, JOBS, grace_s=1.0, run_quota_per_minute=30) as address:
        yield address


@pytest.fixture(scope="module")
def api(endpoint: str) -> CloudRunJobsApi:
    return CloudRunJobsApi.local(endpoint)


def run(api: CloudRunJobsApi, name: str, **overrides: object) -> run_v2.Execution:
    request = run_request(
        f"{PARENT}/{name}",
        overrides.pop("args", None),  # type: ignore[arg-type]
        overrides.pop("env", {}),  # type: ignore[arg-type]
        overrides.pop("task_count", None),  # type: ignore[arg-type]
        overrides.pop("timeout_s", None),  # type: ignore[arg-type]
    )
    execution: run_v2.Execution = api.jobs.run_job(request=request).metadata
    return execution


def wait(api: CloudRunJobsApi, name: str, timeout: float = 30) -> run_v2.Execution:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = api.executions.get_execution(name=name)
        if "completion_time" in execution:
            return execution
        time.sleep(0.05)
    raise AssertionError(f"{name} did not complete in {timeout}s")


def task_output(task: run_v2.Task) -> list[str]:
    path = Path(task.log_uri.removeprefix("file://"))
    return path.read_text().splitlines()


def test_env_contract_overrides_and_task_count(api: CloudRunJobsApi) -> None:
    started = run(api, "echo", env={"OVERRIDE_VAR": "o"}, args=["a", "b"], task_count=3)
    execution = wait(api, started.name)
    assert (execution.task_count, execution.succeeded_count) == (3, 3)
    tasks = sorted(api.tasks.list_tasks(parent=execution.name), key=lambda t: t.index)
    short = execution.name.rsplit("/", 1)[1]
    for task in tasks:
        seen = json.loads(task_output(task)[0])
        assert seen["args"] == ["a", "b"]  # args replaced, not appended
        assert seen["env"] == {
            "CLOUD_RUN_JOB": "echo",
            "CLOUD_RUN_EXECUTION": short,
            "CLOUD_RUN_TASK_INDEX": str(task.index),
            "CLOUD_RUN_TASK_COUNT": "3",
            "CLOUD_RUN_TASK_ATTEMPT": "0",
            "JOB_VAR": "from-job",  # env merged
            "OVERRIDE_VAR": "o",
        }
    listed = api.executions.list_executions(parent=f"{PARENT}/echo")
    assert execution.name in [e.name for e in listed]


def test_a_failed_attempt_is_retried_with_the_next_attempt_number(api: CloudRunJobsApi) -> None:
    execution = wait(api, run(api, "retry", task_count=2).name)
    assert (execution.succeeded_count, execution.retried_count) == (2, 2)
    for task in api.tasks.list_tasks(parent=execution.name):
        assert task.retried == 1
        assert json.loads(task_output(task)[0])["env"]["CLOUD_RUN_TASK_ATTEMPT"] == "1"


def test_a_task_out_of_retries_fails_the_execution(api: CloudRunJobsApi) -> None:
    execution = wait(api, run(api, "fails", task_count=3).name)
    assert (execution.succeeded_count, execution.failed_count) == (2, 1)
    assert execution.conditions[0].state == run_v2.Condition.State.CONDITION_FAILED
    failed = next(t for t in api.tasks.list_tasks(parent=execution.name) if t.index == 1)
    assert failed.last_attempt_result.exit_code == 4
    assert failed.retried == 1


def test_parallelism_bounds_tasks_running_at_once(api: CloudRunJobsApi) -> None:
    execution = wait(api, run(api, "serial", task_count=3).name)
    tasks = sorted(api.tasks.list_tasks(parent=execution.name), key=lambda t: t.index)
    starts = sorted(json.loads(task_output(t)[0])["start"] for t in tasks)
    assert starts[1] - starts[0] >= 0.3 and starts[2] - starts[1] >= 0.3


def test_timeout_ends_an_attempt_and_counts_as_failure(api: CloudRunJobsApi) -> None:
    started = time.monotonic()
    execution = wait(api, run(api, "slow").name)
    assert execution.failed_count == 1 and execution.retried_count == 1
    assert time.monotonic() - started < 10


def test_cancel_sends_sigterm_then_sigkill_after_the_grace_period(api: CloudRunJobsApi) -> None:
    started = run(api, "stubborn", task_count=2)
    time.sleep(1.0)
    api.executions.cancel_execution(name=started.name)
    execution = wait(api, started.name, timeout=10)
    assert execution.cancelled_count == 2 and execution.succeeded_count == 0
    reason = execution.conditions[0].execution_reason
    assert reason == run_v2.Condition.ExecutionReason.CANCELLED
    for task in api.tasks.list_tasks(parent=execution.name):
        assert "TERM" in task_output(task)  # asked to stop first ...
        assert task.last_attempt_result.exit_code == -9  # ... then killed


def test_a_task_that_ended_before_the_cancel_keeps_its_outcome(tmp_path: Path) -> None:
    quick = JobConfig(command=(sys.executable, "-c", "pass"), parallelism=1)
    config = StandInConfig(jobs={"quick": quick}, log_dir=tmp_path, grace_s=1.0)
    execution = ExecutionRun(config, "quick", quick, task_count=2, timeout_s=60, env={}, args=[])
    first = execution.tasks[0]
    execution._launch(first)
    assert first.process is not None
    os.waitid(os.P_PID, first.process.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
    execution.cancel_requested.set()  # the cancel comes before the scheduler's next look
    execution._schedule()
    assert [task.state for task in execution.tasks] == ["succeeded", "cancelled"]


def test_the_operation_completes_with_the_execution(api: CloudRunJobsApi) -> None:
    request = run_request(f"{PARENT}/echo", None, {}, 2, None)
    operation = api.jobs.run_job(request=request)
    result = operation.result(timeout=30)
    assert result.succeeded_count == 2


def test_unknown_job_route_and_field_are_errors(api: CloudRunJobsApi, endpoint: str) -> None:
    with pytest.raises(gexc.NotFound):
        api.jobs.run_job(request=run_request(f"{PARENT}/nope", None, {}, None, None))
    base = f"http://{endpoint}/v2/{PARENT}"
    unknown_field = requests.post(f"{base}/echo:run", json={"overrides": {"taskCnt": 2}})
    assert unknown_field.status_code == 400 and "taskCnt" in unknown_field.text
    unknown_route = requests.get(f"{base}/echo")  # get_job is not served
    assert unknown_route.status_code == 404
    unknown_query = requests.get(f"{base}/echo/executions?filter=x")
    assert unknown_query.status_code == 400
    unimplemented = requests.post(f"{base}/echo:run", json={"validateOnly": True})
    assert unimplemented.status_code == 501


def test_launches_over_the_quota_are_resource_exhausted(tmp_path: Path) -> None:
    with running_stand_in(tmp_path, {"echo": job()}, run_quota_per_minute=1) as address:
        api = CloudRunJobsApi.local(address)
        run(api, "echo")
        with pytest.raises(gexc.TooManyRequests):  # what REST makes of RESOURCE_EXHAUSTED
            run(api, "echo")


def test_a_timeout_override_applies_per_attempt(api: CloudRunJobsApi) -> None:
    execution = wait(api, run(api, "serial", timeout_s=0.1, task_count=1).name)
    assert (execution.failed_count, execution.retried_count) == (1, 3)  # the job's max_retries


def test_each_attempt_reports_its_peak_memory_through_the_side_channel(tmp_path: Path) -> None:
    jobs = {"hog": job(env={"TASK_MODE": "hog"}, max_retries=0)}
    with running_stand_in(tmp_path, jobs) as address:
        hog_api = CloudRunJobsApi.local(address)
        execution = wait(hog_api, run(hog_api, "hog", task_count=2).name)
    assert execution.succeeded_count == 2
    peaks = {r["task_index"]: r["peak_rss_bytes"] for r in peak_memory_records(tmp_path / "tasks")}
    assert peaks[1] >= 200 << 20  # the task that held 200 MiB
    assert peaks[0] < 100 << 20
