"""The Cloud Run Jobs rows: the per-day comparison leaves the backfill daemon's pickup out."""

from __future__ import annotations

from bench.backfill import Backfill
from bench.jobs import job_rows, run_per_day_s
from devstack.dagster_api import Run


def finished(asset: str, launched: float, created: float, ended: float) -> Backfill:
    run = Run("r", "SUCCESS", created, created, ended, {})
    return Backfill(asset, 10, launched, [run])


def test_the_per_day_target_compares_the_runs_without_the_daemons_pickup() -> None:
    job = finished("daily_people_job", 0.0, 25.0, 35.0)  # waited 25 s for the daemon
    function = finished("daily_people", 0.0, 1.0, 13.0)
    assert run_per_day_s(job) == 1.0 and run_per_day_s(function) == 1.2
    listed = job_rows(job, function, 12, 10, 400 * 2**20, cpu_s=1.2)
    rows = {row.metric.strip(): row for row in listed}
    per_day = rows["run's own s per day (daemon's pickup left out), job / function"]
    assert per_day.met is True
    assert rows["s per day, daily_people_job / daily_people"].value > 2  # with the wait
    assert rows["CPU s per task (mean; one month of 1,000 rows a day)"].value == 1.2
    assert all(row.met is not False for row in rows.values())
