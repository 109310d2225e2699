"""The Dagster instance ``just dd`` runs, through the real stack: ``dagster dev`` (webserver and
daemon) with devstack's ``dagster.yaml``, the people function and the GCS emulator, driven
over GraphQL as the UI drives it.

The pool limit is 1 here, so that "the pool is respected" is visible in the runs' own start
and end times: no two runs of the function-backed assets overlap. ``dagster dev`` serves the
bench's code location: the demo's assets and the bench-only ``daily_people_one_run_per_day``
(a backfill of several runs at once) and ``overhead_baseline``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.definitions import WORKSPACE
from devstack.dagster_api import DagsterApi, Run, dagster_dev
from devstack.dagster_dev import LOCAL_THREADS, default_pool_limit, instance_config, prepare_home
from devstack.lakes import Lake
from devstack.stack import local_stack

RANGE_DAYS = ["2025-03-01", "2025-03-02", "2025-03-03"]
PER_DAY_DAYS = ["2025-03-01", "2025-03-02"]
ROWS_PER_DAY = 40
MATERIALIZATION = """
query Latest($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 1) { partition runId metadataEntries {
      label
      ... on TextMetadataEntry { text }
      ... on IntMetadataEntry { intValue }
    } } }
  }
}"""


@pytest.fixture(scope="module")
def dagster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DagsterApi, Lake]]:
    work = tmp_path_factory.mktemp("dagster-instance")
    with (
        local_stack(work) as stack,
        dagster_dev(stack, work, pool_limit=1, workspace=WORKSPACE) as api,
    ):
        yield api, Lake(stack.data_lake_uri, stack.emulator_url)  # gs:// in the emulator


@pytest.fixture(scope="module")
def backfills(dagster: tuple[DagsterApi, Lake]) -> dict[str, list[Run]]:
    """A 3-day backfill of daily_people and a 2-day one-run-per-day backfill, launched
    together (one pickup by the backfill daemon), followed until every run has ended."""
    api, _ = dagster
    config = {"num_rows": ROWS_PER_DAY}
    ids = {
        "daily_people": api.launch_backfill(
            "daily_people", RANGE_DAYS, {"ops": {"daily_people": {"config": config}}}
        ),
        "daily_people_one_run_per_day": api.launch_backfill(
            "daily_people_one_run_per_day",
            PER_DAY_DAYS,
            {"ops": {"daily_people_one_run_per_day": {"config": config}}},
        ),
    }
    expected = {"daily_people": 1, "daily_people_one_run_per_day": len(PER_DAY_DAYS)}
    return {
        asset: api.wait_for_backfill_runs(backfill_id, expected[asset], timeout=240)
        for asset, backfill_id in ids.items()
    }


def rows_per_day(lake: Lake, asset: str) -> dict[str, int]:
    counts = lake.read(asset).group_by("event_date").len()
    return {day.isoformat(): n for day, n in counts.iter_rows()}


def test_a_backfill_of_daily_people_is_one_run_for_the_whole_range(
    dagster: tuple[DagsterApi, Lake], backfills: dict[str, list[Run]]
) -> None:
    api, lake = dagster
    (run,) = backfills["daily_people"]
    assert run.status == "SUCCESS", api.log_path.read_text()[-3000:]
    assert run.tags["dagster/asset_partition_range_start"] == RANGE_DAYS[0]
    assert run.tags["dagster/asset_partition_range_end"] == RANGE_DAYS[-1]
    assert rows_per_day(lake, "daily_people") == dict.fromkeys(RANGE_DAYS, ROWS_PER_DAY)

    latest = api.query(MATERIALIZATION, path=["daily_people"])["assetOrError"]
    (materialization,) = latest["assetMaterializations"]
    assert materialization["runId"] == run.run_id
    metadata = {
        entry["label"]: entry.get("text", entry.get("intValue"))
        for entry in materialization["metadataEntries"]
    }
    assert metadata["partition_window"] == f"{RANGE_DAYS[0]}..{RANGE_DAYS[-1]}"
    assert metadata["days"] == len(RANGE_DAYS)
    assert metadata["rows_per_day"] == ROWS_PER_DAY
    assert metadata["rows_written"] == ROWS_PER_DAY * len(RANGE_DAYS)


def test_runs_of_the_function_assets_respect_the_pool_limit(
    dagster: tuple[DagsterApi, Lake], backfills: dict[str, list[Run]]
) -> None:
    api, lake = dagster
    runs = sorted(
        [*backfills["daily_people"], *backfills["daily_people_one_run_per_day"]],
        key=lambda run: run.started or 0.0,
    )
    assert [run.status for run in runs] == ["SUCCESS"] * 3, api.log_path.read_text()[-3000:]
    for earlier, later in itertools.pairwise(runs):
        assert earlier.ended is not None and later.started is not None
        assert later.started >= earlier.ended, "two runs of the pool were in progress at once"
    per_day = rows_per_day(lake, "daily_people_one_run_per_day")
    assert per_day == dict.fromkeys(PER_DAY_DAYS, ROWS_PER_DAY)


def test_a_run_executes_its_steps_in_the_run_process_without_warnings(
    dagster: tuple[DagsterApi, Lake],
) -> None:
    api, _ = dagster
    run = api.wait_for_run(api.launch_run("overhead_baseline"))
    assert run.status == "SUCCESS"
    log = api.log_path.read_text(errors="replace")
    assert f"{run.run_id} - " in log
    run_lines = [line for line in log.splitlines() if run.run_id in line]
    assert any("Executing steps in process" in line for line in run_lines), run_lines
    assert not any("Launching subprocess" in line for line in run_lines)
    assert "PreviewWarning" not in log and "BetaWarning" not in log


def test_the_instance_config_is_rewritten_only_while_devstack_owns_it(tmp_path: Path) -> None:
    prepare_home(tmp_path, 3)
    config = (tmp_path / "dagster.yaml").read_text()
    assert config == instance_config(3)
    assert "    default_limit: 3\n    granularity: run\n" in config
    prepare_home(tmp_path, 5)
    assert "default_limit: 5" in (tmp_path / "dagster.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 2\n")
    prepare_home(tmp_path, 7)
    assert (tmp_path / "dagster.yaml").read_text().endswith("default_limit: 2\n")


def test_the_pool_limit_follows_the_local_functions_threads_unless_set() -> None:
    assert default_pool_limit({}) == LOCAL_THREADS
    assert default_pool_limit({"THREADS": "3"}) == 3
    assert default_pool_limit({"THREADS": "3", "PEOPLE_FUNCTION_POOL_LIMIT": "5"}) == 5


def test_devstack_registers_the_pool_of_the_function_assets() -> None:
    from devstack.dagster_dev import POOL
    from gcf_demo.defs.assets import PEOPLE_FUNCTION_POOL, cloud_function_pipes_asset, daily_people

    assert POOL == PEOPLE_FUNCTION_POOL
    for asset in (cloud_function_pipes_asset, daily_people):
        assert asset.op.pool == POOL


def test_a_backfill_run_never_asks_the_function_for_more_than_it_accepts() -> None:
    from gcf_demo.defs.assets import DEFAULT_ROWS_PER_DAY, MAX_DAYS_PER_RUN, daily_people
    from people_lake.settings import DEFAULT_MAX_ROWS_PER_REQUEST
    from people_lake.window import MAX_RANGE_DAYS

    assert daily_people.backfill_policy is not None
    assert daily_people.backfill_policy.max_partitions_per_run == MAX_DAYS_PER_RUN
    assert MAX_DAYS_PER_RUN == MAX_RANGE_DAYS
    assert MAX_DAYS_PER_RUN * DEFAULT_ROWS_PER_DAY <= DEFAULT_MAX_ROWS_PER_REQUEST
