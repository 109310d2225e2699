"""The client's invocation ids pass the function's own check (both packages installed: the
unit suites run each package at its range ends alone)."""

from types import SimpleNamespace

from dagster_pipes_gcf.client import derive_invocation_id
from people_lake.request import INVOCATION_ID_EXTRA, parse_invocation_id


def test_ids_differ_by_partition_and_pass_the_functions_own_check() -> None:
    base = {"run_id": "r", "step_key": "s", "asset_keys": ["a"], "ordinal": 1}
    day = derive_invocation_id(partition="2024-01-01", **base)  # type: ignore[arg-type]
    other = derive_invocation_id(partition="2024-01-02", **base)  # type: ignore[arg-type]
    week = derive_invocation_id(partition="2024-01-01..2024-01-07", **base)  # type: ignore[arg-type]
    assert len({day, other, week}) == 3
    assert day == derive_invocation_id(partition="2024-01-01", **base)  # type: ignore[arg-type]
    # Whatever the names (long, non-ASCII, separators), the id passes the function's check.
    unusual = derive_invocation_id(
        run_id="r" * 300,
        step_key="multi/asset step ü",
        asset_keys=[f"prefix/asset_{n}" for n in range(200)],
        partition="région=île-de-france|2024-01-01",
        ordinal=10**6,
        call_key="batch #1 / ünïcode",
    )
    for invocation_id in (day, other, week, unusual):
        pipes = SimpleNamespace(extras={INVOCATION_ID_EXTRA: invocation_id})
        assert parse_invocation_id(pipes) == invocation_id  # type: ignore[arg-type]
