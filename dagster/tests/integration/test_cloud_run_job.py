"""``PipesCloudRunJobClient`` through the real stack: the Cloud Run Jobs stand-in (driven by
the real ``google-cloud-run`` library), tasks running ``people_lake.task`` as processes, the
GCS emulator for Pipes messages and a local Delta lake."""

import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import deltalake
import pytest

from dagster_pipes_gcf import (
    CloudRunJobsApi,
    JobPolicy,
    PipesCloudRunJobClient,
    PipesCloudRunTaskMessageReader,
    PollingPolicy,
    event_args,
)
from dagster_pipes_gcf.cloud_run_job import run_request
from devstack.cloud_run_jobs import running_stand_in
from devstack.stack import LocalStack
from gcf_demo.defs.assets import check_specs
from gcf_demo.defs.job_assets import LOCAL_JOB, PeopleJob, daily_people_job, people_job

from .conftest import TEST_POLLING
from .conftest import directory_lake as fresh_lake  # (its tests read local tables)
from .test_cloud_run_job_dagster import wait_for_completion

TASK_COMMAND = [sys.executable, "-m", "people_lake.task"]
# A task that fails its first attempt after reporting (a retried task must not report twice),
# and one that always fails: chosen per task index by the wrapper below.
FLAKY_TASK = """
import os, runpy, sys
index, attempt = os.environ["CLOUD_RUN_TASK_INDEX"], os.environ["CLOUD_RUN_TASK_ATTEMPT"]
mode = os.environ.get("FLAKY_MODE", "")
if mode == "fail_task_2" and index == "2":
    print("task 2 refuses to work", file=sys.stderr)
    sys.exit(7)
if mode == "crash_after_first_attempt" and index == "1" and attempt == "0":
    import atexit
    atexit.register(lambda: os._exit(9))  # the share is written and reported, then a crash
sys.argv = ["people_lake.task", *sys.argv[1:]]
runpy.run_module("people_lake.task", run_name="__main__")
"""


def job_env(stack: LocalStack) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.directory_lake,  # (these tests read local tables)
    }


@pytest.fixture(scope="module")
def jobs_endpoint(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = job_env(stack)
    flaky = [sys.executable, "-c", FLAKY_TASK]
    jobs = {
        "people-job": {"command": TASK_COMMAND, "env": env, "max_retries": 1},
        "failing-job": {"command": flaky, "env": {**env, "FLAKY_MODE": "fail_task_2"}},
        "silent-job": {"command": [sys.executable, "-c", "pass"], "env": env},
        "flaky-job": {
            "command": flaky,
            "env": {**env, "FLAKY_MODE": "crash_after_first_attempt"},
            "max_retries": 1,
        },
    }
    work = tmp_path_factory.mktemp("jobs")
    with running_stand_in(work, jobs, grace_s=2.0) as endpoint:
        yield endpoint


def job_name(job: str) -> str:
    return LOCAL_JOB.rsplit("/", 1)[0] + f"/{job}"


def job_client(stack: LocalStack, endpoint: str) -> PipesCloudRunJobClient:
    return PipesCloudRunJobClient(
        message_reader=PipesCloudRunTaskMessageReader(
            bucket=stack.pipes_bucket, polling=TEST_POLLING
        ),
        api=CloudRunJobsApi.local(endpoint),
        policy=JobPolicy(poll_interval_s=0.2),
    )


def materialize_job(
    stack: LocalStack,
    endpoint: str,
    *,
    asset: dg.AssetsDefinition = people_job,
    job: str = "people-job",
    lake: Path | None = None,
    partition_key: str | None = None,
    tags: Mapping[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
    **config: Any,
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [asset],
        resources={
            "pipes_job_client": job_client(stack, endpoint),
            "people_cloud_run_job": PeopleJob(
                job_name=job_name(job), data_lake_uri=str(lake or fresh_lake(stack))
            ),
        },
        run_config={"ops": {asset.op.name: {"config": config}}} if config else None,
        instance=instance,
        partition_key=partition_key,
        tags=dict(tags or {}),
        raise_on_error=False,
    )
    return result, instance


def logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures, "the step did not fail"
    error = failures[0].step_failure_data.error
    assert error is not None
    return error.to_string()


def table_rows(lake: Path, name: str) -> int:
    return deltalake.DeltaTable(str(lake / name)).count()


def test_people_job_over_four_tasks(stack: LocalStack, jobs_endpoint: str) -> None:
    lake = fresh_lake(stack)
    result, instance = materialize_job(stack, jobs_endpoint, lake=lake, num_rows=1001, task_count=4)
    assert result.success, failure(result)
    [materialization] = result.asset_materializations_for_node("people_job")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["rows_written"] == 1001  # the tasks' shares add up
    assert metadata["task_count"] == 4 and metadata["tasks_succeeded"] == 4
    assert metadata["tasks_failed"] == 0 and metadata["tasks_retried"] == 0
    assert str(metadata["cloud_run_execution"]).startswith(job_name("people-job"))
    assert metadata["cloud_run_log_uri"]
    assert table_rows(lake, "people_job") == 1001
    checks = result.get_asset_check_evaluations()
    assert {check.check_name for check in checks} == {
        "ids_unique_and_not_null",
        "emails_valid",
        "row_count_matches_request",
    }
    assert all(check.passed for check in checks)
    lines = logs(instance, result.run_id)
    for index in range(4):
        assert any(line.startswith(f"[task {index}] people function") for line in lines)
    assert any(line.startswith("[pipes] Cloud Run job execution") for line in lines)


@dg.asset(
    check_specs=check_specs("people_job_step_retried"), retry_policy=dg.RetryPolicy(max_retries=1)
)
def people_job_step_retried(
    context: dg.AssetExecutionContext,
    pipes_job_client: PipesCloudRunJobClient,
    people_cloud_run_job: PeopleJob,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    event = {"dl_bucket": people_cloud_run_job.data_lake_uri, "num_rows": 40, "seed": 1}
    result = pipes_job_client.run(
        context=context,
        job_name=people_cloud_run_job.job_name,
        args=event_args(event),
        task_count=4,
    ).get_materialize_result()
    if context.retry_number == 0:  # the step fails after the execution committed
        raise dg.RetryRequested(max_retries=1)
    return result


def test_a_step_retry_writes_no_share_twice(stack: LocalStack, jobs_endpoint: str) -> None:
    lake = fresh_lake(stack)
    result, instance = materialize_job(
        stack, jobs_endpoint, asset=people_job_step_retried, lake=lake
    )
    assert result.success, failure(result)
    assert table_rows(lake, "people_job_step_retried") == 40
    lines = logs(instance, result.run_id)
    repeats = [line for line in lines if "already wrote version" in line]
    assert len(repeats) == 4  # every task of the second execution found its commit


def test_a_failing_task_fails_the_step_and_is_named(stack: LocalStack, jobs_endpoint: str) -> None:
    result, _ = materialize_job(stack, jobs_endpoint, job="failing-job", num_rows=40, task_count=4)
    assert not result.success
    message = failure(result)
    assert "3 of 4 task(s) succeeded" in message
    assert "task 2 failed after 4 attempt(s), exit code 7" in message  # default max_retries 3
    assert "task-2-attempt-3.log" in message  # its log link
    assert not result.asset_materializations_for_node("people_job")


def test_a_retried_task_delivers_its_messages_once(stack: LocalStack, jobs_endpoint: str) -> None:
    lake = fresh_lake(stack)
    result, instance = materialize_job(
        stack, jobs_endpoint, job="flaky-job", lake=lake, num_rows=40, task_count=2
    )
    assert result.success, failure(result)
    [materialization] = result.asset_materializations_for_node("people_job")
    assert materialization.metadata["tasks_retried"].value == 1
    assert materialization.metadata["rows_written"].value == 40
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 and all(check.passed for check in checks)
    assert table_rows(lake, "people_job") == 40  # the retry found task 1's commit
    lines = logs(instance, result.run_id)
    assert any(line.startswith("[task 1 attempt 1] invocation") for line in lines)


def test_a_task_that_succeeded_without_closed_fails_the_step(
    stack: LocalStack, jobs_endpoint: str
) -> None:
    client = PipesCloudRunJobClient(
        message_reader=PipesCloudRunTaskMessageReader(
            bucket=stack.pipes_bucket, polling=PollingPolicy(drain_timeout=1.0)
        ),
        api=CloudRunJobsApi.local(jobs_endpoint),
        policy=JobPolicy(poll_interval_s=0.2),
    )
    result = dg.materialize(
        [people_job],
        resources={
            "pipes_job_client": client,
            "people_cloud_run_job": PeopleJob(
                job_name=job_name("silent-job"), data_lake_uri=str(fresh_lake(stack))
            ),
        },
        run_config={"ops": {"people_job": {"config": {"num_rows": 10, "task_count": 2}}}},
        raise_on_error=False,
    )
    assert not result.success
    message = failure(result)
    assert "incomplete for task(s) that succeeded" in message
    assert "task 0: `closed` message not received" in message
    assert "task 1: `closed` message not received" in message


def test_daily_people_job_runs_one_task_per_month(stack: LocalStack, jobs_endpoint: str) -> None:
    lake = fresh_lake(stack)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [daily_people_job],
        resources={
            "pipes_job_client": job_client(stack, jobs_endpoint),
            "people_cloud_run_job": PeopleJob(
                job_name=job_name("people-job"), data_lake_uri=str(lake)
            ),
        },
        run_config={"ops": {"daily_people_job": {"config": {"num_rows": 3}}}},
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2024-01-30",
            "dagster/asset_partition_range_end": "2024-03-02",
        },
        raise_on_error=False,
    )
    assert result.success, failure(result)
    materialization = result.asset_materializations_for_node("daily_people_job")[0]
    assert materialization.metadata["task_count"].value == 3  # Jan, Feb, Mar
    assert materialization.metadata["rows_written"].value == 3 * 33
    assert table_rows(lake, "daily_people_job") == 3 * 33


def test_termination_cancels_the_execution(
    stack: LocalStack, jobs_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = fresh_lake(stack)
    client = job_client(stack, jobs_endpoint)
    cancelled: list[str] = []
    original = client._cancel

    def cancel(name: str, context: Any) -> None:
        cancelled.append(name)
        original(name, context)

    client._cancel = cancel  # type: ignore[method-assign]
    # Terminate (as `dagster run terminate` does) once the first task has streamed a batch: a
    # task is mid-write with 15 batches of 16 to go, far more than the cancel takes to reach
    # it. (A fixed delay raced a fast machine: a task reached its commit first.)
    interrupted: list[float] = []
    handle_message = dg.PipesMessageHandler.handle_message

    def interrupt_on_first_batch(handler: dg.PipesMessageHandler, message: Any) -> None:
        handle_message(handler, message)
        if "batch 1:" in str(message.get("params")) and not interrupted:
            interrupted.append(time.monotonic())
            _interrupt_main()

    monkeypatch.setattr(dg.PipesMessageHandler, "handle_message", interrupt_on_first_batch)
    result = dg.materialize(
        [people_job],
        resources={
            "pipes_job_client": client,
            "people_cloud_run_job": PeopleJob(
                job_name=job_name("people-job"), data_lake_uri=str(lake)
            ),
        },
        run_config={"ops": {"people_job": {"config": {"num_rows": 8_000_000}}}},
        raise_on_error=False,
    )
    assert interrupted and not result.success
    assert cancelled and time.monotonic() - interrupted[0] < 5
    execution = wait_for_completion(client.api, cancelled[0], timeout=10)
    assert execution.succeeded_count == 0 and execution.cancelled_count == 4
    assert not (lake / "people_job" / "_delta_log").exists() or table_rows(lake, "people_job") == 0


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


def test_launches_refused_by_the_quota_are_retried_within_the_deadline(
    stack: LocalStack, tmp_path: Path
) -> None:
    jobs = {"people-job": {"command": TASK_COMMAND, "env": job_env(stack)}}
    quota = {"run_quota_per_minute": 1, "run_quota_window_s": 8.0}
    with running_stand_in(tmp_path, jobs, **quota) as endpoint:
        api = CloudRunJobsApi.local(endpoint)
        request = run_request(job_name("people-job"), event_args({"num_rows": 4}), {}, 1, None)
        api.jobs.run_job(request=request)  # the quota is used up now

        instance = dg.DagsterInstance.ephemeral()

        def materialize_with(deadline_s: float) -> dg.ExecuteInProcessResult:
            client = job_client(stack, endpoint)
            client.policy = JobPolicy(poll_interval_s=0.2, launch_deadline_s=deadline_s)
            return dg.materialize(
                [people_job],
                resources={
                    "pipes_job_client": client,
                    "people_cloud_run_job": PeopleJob(
                        job_name=job_name("people-job"), data_lake_uri=str(fresh_lake(stack))
                    ),
                },
                run_config={"ops": {"people_job": {"config": {"num_rows": 8}}}},
                instance=instance,
                raise_on_error=False,
            )

        refused = materialize_with(deadline_s=0.5)
        assert not refused.success and "Quota exceeded" in failure(refused)
        retried = materialize_with(deadline_s=30.0)
        assert retried.success, failure(retried)
        lines = logs(instance, retried.run_id)
        assert any(line.startswith("[pipes] run-job quota exhausted") for line in lines)
