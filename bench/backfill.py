"""Backfills and run overhead through a real ``dagster dev`` (webserver + daemon).

Everything is launched over the webserver's GraphQL API, as the UI launches it, on devstack's
local stack (GCS emulator + the people function) with a DAGSTER_HOME configured as ``just dd``
configures its own (concurrency pool, run queue). Times come from the runs' own timestamps.

``dagster dev`` serves the bench's code location (bench/definitions.py: the demo's assets and
the two bench-only ones below), not the demo's.

1. Run overhead: launch -> success of ``cloud_function_pipes_asset`` against the trivial
   ``overhead_baseline`` asset of the same code location, alternating, median of ``RUNS``
   each: with 1,000 rows (Dagster's and Pipes' overhead) and at the demo's default row count
   (the function then works for a second or two, so that its log lines stream) [both <= 1.3x].
2. Baseline: a 30-day backfill of ``daily_people_one_run_per_day`` (one run per day, at most
   the pool limit at once); its cost per day.
3. A 365-day backfill of ``daily_people`` (one run: one function call for the whole range)
   [<= 60 s from launch to the last day materialized, >= 20x faster per day than 2].

Both backfills are read back from their Delta tables: every day, exactly its rows.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import console
from bench.definitions import WORKSPACE
from bench.report import Row
from devstack.dagster_api import DagsterApi, Run, dagster_dev
from devstack.stack import LocalStack, local_stack
from gcf_demo.defs.assets import DEFAULT_ROWS, DEFAULT_ROWS_PER_DAY

if TYPE_CHECKING:
    from devstack.lakes import Lake

SCENARIO_OVERHEAD = "run overhead"
SCENARIO_BACKFILL = "backfill"
RUNS = 5
OVERHEAD_ROWS = 1_000  # the function's own work stays small next to the run's overhead
YEAR = 365
BASELINE_DAYS = 30
FIRST_DAY = dt.date(2025, 1, 1)
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
BACKFILL_TIMEOUT_S = 900.0


def days(count: int) -> list[str]:
    return [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(count)]


def days_of(run: Run) -> int:
    """How many days one run of a backfill covered (a range, or one partition)."""
    if RANGE_START in run.tags:
        start = dt.date.fromisoformat(run.tags[RANGE_START])
        return (dt.date.fromisoformat(run.tags[RANGE_END]) - start).days + 1
    return 1


@dataclass(frozen=True)
class Backfill:
    """A finished backfill: wall time from launch to its last run's end, and its runs."""

    asset: str
    days: int
    launched: float
    runs: list[Run]

    @property
    def wall_s(self) -> float:
        return max(run.ended or 0.0 for run in self.runs) - self.launched

    @property
    def per_day_s(self) -> float:
        return self.wall_s / self.days

    @property
    def daemon_wait_s(self) -> float:
        """Launch to the first run's creation: the backfill daemon's pickup (every 30 s)."""
        return min(run.created for run in self.runs) - self.launched

    @property
    def succeeded(self) -> int:
        return sum(days_of(run) for run in self.runs if run.status == "SUCCESS")


def backfill(
    api: DagsterApi, asset: str, partitions: Sequence[str], expected_runs: int
) -> Backfill:
    bar = console.bar(len(partitions), f"{asset}: {len(partitions)} days")
    with bar:
        launched = time.time()
        backfill_id = api.launch_backfill(asset, partitions)

        def progress(ended: list[Run]) -> None:
            bar.n = sum(days_of(run) for run in ended)
            bar.refresh()

        runs = api.wait_for_backfill_runs(
            backfill_id, expected_runs, BACKFILL_TIMEOUT_S, progress=progress
        )
    return Backfill(asset, len(partitions), launched, runs)


def lake_of(stack: LocalStack) -> Lake:
    """The stack's default lake (``gs://`` in the emulator), to read its tables."""
    from devstack.lakes import Lake  # (deltalake and polars: only when a table is read)

    return Lake(stack.data_lake_uri, stack.emulator_url)


def exact_days(lake: Lake, asset: str, partitions: Sequence[str], rows_per_day: int) -> int:
    """How many of ``partitions`` hold exactly ``rows_per_day`` rows in the Delta table."""
    if lake.version(asset) is None:
        return 0
    people = lake.read(asset)
    if "event_date" not in people.columns:
        return 0
    counts = people.group_by("event_date").len()
    by_day = {day.isoformat(): n for day, n in counts.iter_rows()}
    return sum(by_day.get(day) == rows_per_day for day in partitions)


def overhead(api: DagsterApi) -> list[Row]:
    """Median launch -> success of the trivial asset and the demo asset, alternating; the
    demo asset with little work (the overhead) and at its default row count (the demo)."""
    demo = "cloud_function_pipes_asset"
    series: dict[str, tuple[str, dict[str, object] | None]] = {
        "trivial": ("overhead_baseline", None),
        "small": (demo, {"ops": {demo: {"config": {"num_rows": OVERHEAD_ROWS}}}}),
        "default": (demo, None),
    }
    times: dict[str, list[float]] = {name: [] for name in series}
    with console.bar(len(series) * RUNS, "demo asset vs overhead_baseline", unit="run") as bar:
        for _ in range(RUNS):
            for name, (asset, run_config) in series.items():
                run = api.wait_for_run(api.launch_run(asset, run_config=run_config))
                if run.status != "SUCCESS":
                    raise RuntimeError(f"{asset} run {run.run_id}: {run.status} ({api.log_path})")
                times[name].append(run.launch_to_end_s)
                bar.update()
    trivial, small, default = (statistics.median(times[name]) for name in series)
    return [
        Row(SCENARIO_OVERHEAD, "launch -> success, overhead_baseline (median s)", trivial, "s"),
        Row(SCENARIO_OVERHEAD, f"  demo asset, {OVERHEAD_ROWS:,} rows (median s)", small, "s"),
        Row(SCENARIO_OVERHEAD, "  demo / overhead_baseline", small / trivial, "x", target=1.3),
        Row(
            SCENARIO_OVERHEAD,
            f"  demo asset, default {DEFAULT_ROWS:,} rows (median s)",
            default,
            "s",
        ),
        Row(
            SCENARIO_OVERHEAD,
            "  demo (default rows) / overhead_baseline",
            default / trivial,
            "x",
            target=1.3,
        ),
    ]


def backfill_rows(
    year: Backfill, baseline: Backfill, year_exact: int, base_exact: int
) -> list[Row]:
    label = f"one run per day ({baseline.days} days)"
    return [
        Row(SCENARIO_BACKFILL, f"{year.days} days, one run: launch -> last day s", year.wall_s, "s",
            target=60.0),
        Row(SCENARIO_BACKFILL, "  of which waiting for the backfill daemon s", year.daemon_wait_s,
            "s"),
        Row(SCENARIO_BACKFILL, f"{year.days} days, one run: s per day", year.per_day_s, "s",
            baseline.per_day_s, label),
        Row(SCENARIO_BACKFILL, "speed-up per day vs one run per day", baseline.per_day_s
            / year.per_day_s, "x", target=20.0, better="higher"),
        Row(SCENARIO_BACKFILL, f"{baseline.days} days, one run per day: launch -> last day s",
            baseline.wall_s, "s"),
        Row(SCENARIO_BACKFILL, "  of which waiting for the backfill daemon s",
            baseline.daemon_wait_s, "s"),
        Row(SCENARIO_BACKFILL, f"{year.days} days: runs", len(year.runs), ""),
        Row(SCENARIO_BACKFILL, f"days with exactly {DEFAULT_ROWS_PER_DAY:,} rows (one run)",
            year_exact, f"of {year.days}", target=year.days, better="higher"),
        Row(SCENARIO_BACKFILL, "days with exact rows (one run per day)", base_exact,
            f"of {baseline.days}", target=baseline.days, better="higher"),
    ]  # fmt: skip


def run() -> list[Row]:
    with console.work_dir("backfill") as work:
        dagster_log = console.log_dir() / "backfill-dagster.log"
        with (
            local_stack(work) as stack,
            dagster_dev(stack, work, log_path=dagster_log, workspace=WORKSPACE) as api,
        ):
            rows = overhead(api)
            baseline_days, year_days = days(BASELINE_DAYS), days(YEAR)
            baseline = backfill(api, "daily_people_one_run_per_day", baseline_days, BASELINE_DAYS)
            year = backfill(api, "daily_people", year_days, 1)
            lake = lake_of(stack)  # gs:// (the default)
            rows += backfill_rows(
                year,
                baseline,
                exact_days(lake, "daily_people", year_days, DEFAULT_ROWS_PER_DAY),
                exact_days(lake, "daily_people_one_run_per_day", baseline_days,
                           DEFAULT_ROWS_PER_DAY),
            )  # fmt: skip
            failed = [run.run_id for run in [*baseline.runs, *year.runs] if run.status != "SUCCESS"]
            if failed:
                print(f"bench: runs that did not succeed: {failed}")  # into the log
            return rows
