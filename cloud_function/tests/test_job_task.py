"""The Cloud Run task's share of a request (people_lake.task), without the stack."""

import datetime as dt
import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from devstack.fake_gcs import FakeClient
from gcf_pipes import PipesBootstrap, RequestCancelled, RequestError
from gcf_pipes.bootstrap import PIPES_PARAM_KEYS
from people_lake import task as task_module
from people_lake.task import CloudRunTask, month_windows, rows_share, run_task, task_share
from people_lake.window import DayWindow

from .conftest import PIPES_BUCKET, messages, pipes_body


def task(index: int, count: int, attempt: int = 0) -> CloudRunTask:
    return CloudRunTask(index, count, attempt)


def bootstrap(**context: object) -> PipesBootstrap:
    data = {"extras": {"invocation_id": "abc"}, "partition_key_range": None, **context}
    return PipesBootstrap(data, "bucket", "prefix")  # type: ignore[arg-type]


def test_rows_are_split_evenly_and_add_up() -> None:
    shares = [rows_share(10, task(i, 4)) for i in range(4)]
    assert shares == [3, 3, 2, 2]
    with pytest.raises(RequestError, match="fewer than the 4 tasks"):
        rows_share(3, task(0, 4))


def test_a_range_is_cut_into_calendar_months() -> None:
    months = month_windows(DayWindow(dt.date(2024, 1, 30), dt.date(2024, 3, 2)))
    assert [(m.start.isoformat(), m.end.isoformat()) for m in months] == [
        ("2024-01-30", "2024-01-31"),
        ("2024-02-01", "2024-02-29"),
        ("2024-03-01", "2024-03-02"),
    ]
    year = month_windows(DayWindow(dt.date(2024, 1, 1), dt.date(2024, 12, 31)))
    assert len(year) == 12 and sum(m.days for m in year) == 366


def test_each_task_gets_its_own_invocation_id_rows_and_seed() -> None:
    mine, event = task_share(bootstrap(), {"num_rows": 10, "seed": 5}, task(1, 4))
    assert mine.context_data["extras"]["invocation_id"] == "abc.task-1"
    assert event == {"num_rows": 3, "seed": 6}


def test_each_task_gets_its_month_of_the_range() -> None:
    key_range = {"start": "2024-01-30", "end": "2024-03-02"}
    window = {"start": "2024-01-30T00:00:00+00:00", "end": "2024-03-03T00:00:00+00:00"}
    mine, _ = task_share(
        bootstrap(partition_key_range=key_range, partition_time_window=window),
        {"num_rows": 1},
        task(1, 3),
    )
    assert mine.context_data["partition_key_range"] == {"start": "2024-02-01", "end": "2024-02-29"}
    assert mine.context_data["partition_time_window"] == {
        "start": "2024-02-01T00:00:00+00:00",
        "end": "2024-03-01T00:00:00+00:00",
    }
    with pytest.raises(RequestError, match="3 calendar month"):
        task_share(bootstrap(partition_key_range=key_range), {"num_rows": 1}, task(0, 2))


def test_the_env_contract_is_checked() -> None:
    env = {"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "4", "CLOUD_RUN_TASK_ATTEMPT": "1"}
    assert CloudRunTask.from_env(env) == task(2, 4, 1)
    assert CloudRunTask.from_env(env).messages_suffix == "task-2/attempt-1"
    with pytest.raises(RequestError, match="CLOUD_RUN_TASK_INDEX"):
        CloudRunTask.from_env({**env, "CLOUD_RUN_TASK_INDEX": "4"})
    with pytest.raises(RequestError, match="CLOUD_RUN_TASK_ATTEMPT"):
        CloudRunTask.from_env({**env, "CLOUD_RUN_TASK_ATTEMPT": "-1"})


def test_a_task_looks_for_no_cancel_marker(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cloud Run cancels a task with SIGTERM; the job client writes no marker, so a task
    spends no GET on one (twice a second per task while it runs)."""
    looked: list[str] = []
    gcs.fault = lambda operation, key: looked.append(key) if key.endswith("/cancel") else None
    monkeypatch.setattr(task_module, "storage", SimpleNamespace(Client=lambda: gcs))
    body = pipes_body({"num_rows": 10}, invocation_id="inv")
    env = {
        "CLOUD_RUN_TASK_INDEX": "0",
        "CLOUD_RUN_TASK_COUNT": "1",
        "CLOUD_RUN_TASK_ATTEMPT": "0",
        "PIPES_BUCKET": PIPES_BUCKET,
        "DATA_LAKE_URI": str(lake),
        **{key: body.pop(key) for key in PIPES_PARAM_KEYS},
    }
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert run_task([json.dumps(body)], env) == 0
    finally:
        signal.signal(signal.SIGTERM, handler)

    assert looked == []
    closed = [m for m in messages(gcs, "t/1/task-0/attempt-0") if m["method"] == "closed"]
    assert closed and "exception" not in (closed[0].get("params") or {})


def test_a_task_stopped_by_sigterm_says_cloud_run_stopped_it() -> None:
    cancellation = task_module.TerminableCancellation(None, "t/1/task-0/attempt-0")
    cancellation.terminate()
    with pytest.raises(RequestCancelled) as stopped:
        cancellation.raise_if_cancelled(fresh=True)
    assert "Cloud Run stopped this task (SIGTERM" in str(stopped.value)
    assert "orchestrator" not in str(stopped.value) and "gs://" not in str(stopped.value)
