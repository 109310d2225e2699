"""The bench's code location (bench/workspace.yaml): the demo's assets and the bench-only ones,
loadable by Dagster's own workspace loader from any working directory, as ``dagster dev``
(started in its DAGSTER_HOME) loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from bench import definitions as bench
from devstack.dagster_api import LOCATION
from gcf_demo import definitions as demo

BENCH_ONLY = {"overhead_baseline", "daily_people_one_run_per_day"}


def asset_names(definitions: dg.Definitions) -> set[str]:
    return {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}


def test_the_bench_location_is_the_demo_plus_the_bench_only_assets() -> None:
    assert asset_names(bench.defs()) == asset_names(demo.defs()) | BENCH_ONLY


def test_the_workspace_serves_bench_definitions_under_the_name_the_bench_launches_in() -> None:
    (entry,) = yaml.safe_load(bench.WORKSPACE.read_text())["load_from"]
    target = entry["python_file"]
    assert target["location_name"] == LOCATION
    assert (bench.WORKSPACE.parent / target["relative_path"]).resolve() == Path(bench.__file__)


def test_dagster_loads_the_bench_workspace_from_another_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(bench.WORKSPACE)],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Validation successful for code location {LOCATION}" in done.stdout + done.stderr
