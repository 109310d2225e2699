"""``python -m bench [scenario ...]``: run the benchmark scenarios and print one table.

Each scenario module exposes ``run() -> list[Row]``; add new modules to ``SCENARIOS``. While
a scenario runs, the terminal shows one progress line (and a bar for the long steps);
everything Dagster and the services print goes to a log file that the report names.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import shutil
import sys
import time
from pathlib import Path

from bench.console import output_to_log
from bench.report import Row, render

SCENARIOS: dict[str, str] = {
    "transport": "bench.transport",
    "data_generation": "bench.data_generation",
    "backfill": "bench.backfill",
    "gs_lake": "bench.gs_lake",
    "jobs": "bench.jobs",
    "cold_start": "bench.cold_start",
}
LOG_ROOT = Path(__file__).resolve().parents[1] / ".bench" / "logs"
KEPT_LOG_DIRS = 5  # the logs of the latest runs; older ones are removed when a run starts


def new_log_dir(root: Path = LOG_ROOT, keep: int = KEPT_LOG_DIRS) -> Path:
    """A fresh log directory for this run, named by its start time; of the earlier ones only
    the newest ``keep - 1`` stay."""
    earlier = sorted(path for path in root.glob("*") if path.is_dir()) if root.is_dir() else []
    for old in earlier[: max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return root / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_scenario(name: str, log_path: Path) -> list[Row]:
    """One scenario with its output in ``log_path``; one progress line on the terminal."""
    started = time.monotonic()
    with output_to_log(log_path) as terminal:
        print(f"bench: {name} ...", file=terminal, flush=True)
        try:
            rows: list[Row] = importlib.import_module(SCENARIOS[name]).run()
        except BaseException:
            print(f"bench: {name} failed after {time.monotonic() - started:.0f} s", file=terminal)
            raise
        print(f"bench: {name} done in {time.monotonic() - started:.0f} s", file=terminal)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    log_dir = new_log_dir()
    log_path = log_dir / "bench.log"
    rows: list[Row] = []
    try:
        for name in args.scenarios or list(SCENARIOS):
            rows.extend(run_scenario(name, log_path))
    except Exception:
        print(f"bench: every service's output is in {log_dir}", file=sys.stderr)
        raise
    print(render(rows))
    print(f"\nDagster's and the services' output: {log_dir}")
    missed = [row for row in rows if row.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) missed", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
