"""The demo code location (what ``just dd`` shows) holds what a user came for: the bench's
own assets live in the bench's code location (bench/definitions.py)."""

import dagster as dg

from gcf_demo.definitions import defs

BENCH_ONLY = {"overhead_baseline", "daily_people_one_run_per_day"}


def asset_names(definitions: dg.Definitions) -> set[str]:
    graph = definitions.resolve_asset_graph()
    return {key.to_user_string() for key in graph.get_all_asset_keys()}


def test_the_demo_catalog_has_no_benchmark_assets() -> None:
    names = asset_names(defs())
    assert {"cloud_function_pipes_asset", "daily_people"} <= names
    assert not names & BENCH_ONLY
