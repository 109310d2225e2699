"""Invocation ids: one per run() call, stable across step retries, and reused by a
from-failure re-execution (never by a full one). Real Dagster runs, no function needed."""

import threading
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.tags import RESUME_RETRY_TAG

from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader
from dagster_pipes_gcf.client import InvocationIds, derive_invocation_id, partition_of

IDS = InvocationIds()
SEEN: list[dict[str, Any]] = []  # what each step attempt saw: run, retry number, ids
FAILURES = {"left": 1}  # runs of two_calls that fail after both calls


@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"))
def two_calls(context: dg.AssetExecutionContext) -> None:
    ids = [IDS.next_for(context), IDS.next_for(context)]
    SEEN.append({"run": context.run_id, "retry": context.retry_number, "ids": ids})
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise RuntimeError("the second call failed")


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def retried(context: dg.AssetExecutionContext) -> None:
    ids = [IDS.next_for(context), IDS.next_for(context)]
    SEEN.append({"run": context.run_id, "retry": context.retry_number, "ids": ids})
    if context.retry_number == 0:
        raise RuntimeError("try again")


two_calls_job = dg.define_asset_job(
    "two_calls_job", [two_calls], executor_def=dg.in_process_executor
)
defs = dg.Definitions(assets=[two_calls, retried], jobs=[two_calls_job])


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    SEEN.clear()
    FAILURES["left"] = 1
    yield


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def execute(instance: dg.DagsterInstance, **kwargs: Any) -> Any:
    job = dg.reconstructable(reconstructable_job)
    with dg.execute_job(job, instance=instance, raise_on_error=False, **kwargs) as result:
        return result


def from_failure(instance: dg.DagsterInstance, parent_run_id: str) -> Any:
    """Re-execute from failure with the tags the UI, CLI and run retries give such a run
    (the parent's tags plus ``dagster/is_resume_retry``); ``execute_job`` adds none."""
    parent = instance.get_run_by_id(parent_run_id)
    assert parent is not None
    return execute(
        instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(parent_run_id, instance),
        tags={**parent.tags, RESUME_RETRY_TAG: "true"},
    )


def reconstructable_job() -> dg.JobDefinition:
    return defs.resolve_job_def("two_calls_job")


def test_each_call_of_a_step_gets_its_own_id(instance: dg.DagsterInstance) -> None:
    execute(instance, tags={"dagster/partition": "2024-01-02"})
    (seen,) = SEEN
    first, second = seen["ids"]
    assert first != second


def test_a_from_failure_re_execution_reuses_the_ids_and_a_full_one_does_not(
    instance: dg.DagsterInstance,
) -> None:
    failed = execute(instance, tags={"dagster/partition": "2024-01-02"})
    assert not failed.success
    resumed_run = from_failure(instance, failed.run_id)
    assert resumed_run.success
    from_its_failure = execute(
        instance,
        reexecution_options=dg.ReexecutionOptions(
            parent_run_id=resumed_run.run_id, step_selection=["two_calls"]
        ),
    )
    full = execute(instance, reexecution_options=dg.ReexecutionOptions(parent_run_id=failed.run_id))
    original, resumed, rerun, full_run = (s["ids"] for s in SEEN)
    assert resumed == original, "a from-failure re-execution must not write twice"
    assert rerun != original, "re-executing a selected step is new work"
    assert full_run != original
    assert full.success and from_its_failure.success


def test_a_chain_of_from_failure_re_executions_keeps_the_first_runs_ids(
    instance: dg.DagsterInstance,
) -> None:
    FAILURES["left"] = 2
    run = execute(instance, tags={"dagster/partition": "2024-01-02"})
    for _ in range(2):
        run = from_failure(instance, run.run_id)
    assert run.success
    first, second, third = (s["ids"] for s in SEEN)
    assert first == second == third


def test_step_retries_reuse_the_ids(instance: dg.DagsterInstance) -> None:
    result = dg.materialize([retried], instance=instance)
    assert result.success
    first_try, second_try = SEEN
    assert (first_try["retry"], second_try["retry"]) == (0, 1)
    assert first_try["ids"] == second_try["ids"]
    assert first_try["ids"][0] != first_try["ids"][1]


def test_a_call_key_names_the_call_in_place_of_its_ordinal() -> None:
    base = {"run_id": "r", "step_key": "s", "asset_keys": ["a"], "partition": ""}
    batch_3 = derive_invocation_id(ordinal=3, call_key="batch-3", **base)  # type: ignore[arg-type]
    assert batch_3 == derive_invocation_id(ordinal=1, call_key="batch-3", **base)  # type: ignore[arg-type]
    assert batch_3 != derive_invocation_id(ordinal=3, **base)  # type: ignore[arg-type]


def test_a_call_key_names_the_call_whatever_assets_of_the_step_are_selected() -> None:
    base = {"run_id": "r", "step_key": "s", "partition": "", "ordinal": 2}
    all_assets = derive_invocation_id(asset_keys=["x", "y"], call_key="y", **base)  # type: ignore[arg-type]
    failed_only = derive_invocation_id(asset_keys=["y"], call_key="y", **base)  # type: ignore[arg-type]
    assert all_assets == failed_only, "a subset re-execution must not write y twice"
    by_ordinal = derive_invocation_id(asset_keys=["x", "y"], **base)  # type: ignore[arg-type]
    assert by_ordinal != derive_invocation_id(asset_keys=["y"], **base)  # type: ignore[arg-type]


def test_a_step_calling_through_two_clients_counts_its_calls_once() -> None:
    seen: list[str] = []
    reader = PipesCloudStorageMessageReader(bucket="pipes", client=object())  # type: ignore[arg-type]

    @dg.asset
    def two_clients(context: dg.AssetExecutionContext) -> None:
        first, second = (PipesCloudFunctionClient(message_reader=reader) for _ in range(2))
        seen.extend(
            [first.invocation_ids.next_for(context), second.invocation_ids.next_for(context)]
        )

    assert dg.materialize([two_clients]).success
    assert len(set(seen)) == 2, "two calls of one step through two clients are two invocations"


def test_a_call_key_used_twice_in_one_step_is_refused() -> None:
    ids = InvocationIds()
    errors: list[str] = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def same_key_twice(context: dg.AssetExecutionContext) -> None:
        ids.next_for(context, call_key="batch-1")  # again on the retry: that is fine
        try:
            ids.next_for(context, call_key="batch-1")
        except ValueError as exc:
            errors.append(str(exc))
        if context.retry_number == 0:
            raise RuntimeError("try again")

    assert dg.materialize([same_key_twice]).success
    assert len(errors) == 2 and "call_key 'batch-1' was used already" in errors[0]


def test_partition_of_names_a_key_a_range_or_nothing() -> None:
    assert partition_of(dg.build_asset_context(partition_key="2024-01-03")) == "2024-01-03"
    week = dg.PartitionKeyRange("2024-01-01", "2024-01-07")
    assert partition_of(dg.build_asset_context(partition_key_range=week)) == (
        "2024-01-01..2024-01-07"
    )
    assert partition_of(dg.build_asset_context()) == ""


def test_ordinals_are_counted_once_each_across_threads() -> None:
    ids = InvocationIds()
    counted: list[int] = []

    def count() -> None:
        mine = [ids.next_ordinal("run", "step", 0) for _ in range(500)]
        counted.extend(mine)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counted) == list(range(1, 2001))
    assert ids.next_ordinal("run", "step", 1) == 1, "each step retry counts from 1"
