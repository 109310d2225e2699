"""The Cloud Run Jobs rows: the per-day comparison leaves the backfill daemon's pickup out."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from google.cloud import run_v2

from bench.backfill import Backfill
from bench.jobs import (
    Floor,
    execution_s,
    job_rows,
    run_per_day_s,
    start_at_once,
    tasks_peak_bytes,
)
from devstack.dagster_api import Run

FLOOR = Floor(
    call_s=2.0,
    execution_s=10.0,
    bare_starts_s=3.0,
    bare_start_cpu_s=0.45,
    tasks_cpu_s=12.0,
    cores=2,
)


def finished(asset: str, launched: float, created: float, ended: float) -> Backfill:
    run = Run("r", "SUCCESS", created, created, ended, {})
    return Backfill(asset, 10, launched, [run])


def test_the_per_day_target_compares_the_runs_without_the_daemons_pickup() -> None:
    job = finished("daily_people_job", 0.0, 25.0, 35.0)  # waited 25 s for the daemon
    function = finished("daily_people", 0.0, 1.0, 13.0)
    assert run_per_day_s(job) == 1.0 and run_per_day_s(function) == 1.2
    listed = job_rows(job, function, 12, 10, 400 * 2**20, cpu_s=1.2, floor=FLOOR)
    rows = {row.metric.strip(): row for row in listed}
    per_day = rows["run's own s per day (daemon's pickup left out), job / function"]
    assert per_day.met is True
    assert rows["s per day, daily_people_job / daily_people"].value > 2  # with the wait
    assert rows["CPU s per task (mean; one month of 1,000 rows a day)"].value == 1.2
    assert all(row.met is not False for row in rows.values())


def test_the_floor_rows_set_the_execution_and_bare_starts_against_the_one_call() -> None:
    job = finished("daily_people_job", 0.0, 25.0, 35.0)
    function = finished("daily_people", 0.0, 1.0, 13.0)
    listed = job_rows(job, function, 12, 10, 400 * 2**20, cpu_s=1.2, floor=FLOOR)
    rows = {row.metric.strip(): row for row in listed}
    assert rows["execution floor: bare starts / the call"].value == 1.5
    execution = rows["daily_people_job's execution (12 tasks), created -> completed s"]
    assert (execution.value, execution.baseline, execution.ratio) == (10.0, 2.0, 0.2)
    assert rows["12 bare task starts at once (import + vocabulary, no work) s"].baseline == 2.0
    least = rows["the execution's tasks' CPU s over 2 cores (least it can take here) s"]
    assert (least.value, least.baseline) == (6.0, 2.0)


def test_an_execution_lasts_from_its_creation_to_its_completion() -> None:
    start = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    execution = run_v2.Execution(
        create_time=start, completion_time=start + dt.timedelta(seconds=9, milliseconds=250)
    )
    assert execution_s(execution) == pytest.approx(9.25)


def test_processes_started_at_once_report_their_wall_and_cpu_seconds(tmp_path: Path) -> None:
    busy = [sys.executable, "-c", "sum(range(2_000_000))"]
    wall, cpu = start_at_once(busy, 2, {}, tmp_path)
    assert len(cpu) == 2 and all(0 < seconds <= wall for seconds in cpu)
    with pytest.raises(RuntimeError, match="exited with 3"):
        start_at_once([sys.executable, "-c", "raise SystemExit(3)"], 2, {}, tmp_path)


def test_a_task_peak_that_may_be_only_the_stand_in_s_size_is_refused() -> None:
    mib = 2**20
    measured = {"peak_rss_bytes": 300 * mib, "starter_peak_bytes": 70 * mib}
    assert tasks_peak_bytes([measured]) == 300 * mib
    inherited = {"peak_rss_bytes": 70 * mib, "starter_peak_bytes": 70 * mib}
    with pytest.raises(RuntimeError, match="not above the stand-in"):
        tasks_peak_bytes([measured, inherited])
