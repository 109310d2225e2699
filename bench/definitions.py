"""The bench's code location: the demo's definitions and the assets only the bench needs.

``overhead_baseline`` is what the run overhead is measured against, and
``daily_people_one_run_per_day`` is the baseline of the backfill scenario. They live here, not
in the demo (what ``just dd`` shows); both sit in one location with the demo's assets, so a
run of either loads the same code as a run of the demo's.
"""

from pathlib import Path

import dagster as dg

from gcf_demo import definitions as demo  # the module: one lazy definitions per module scope
from gcf_demo.defs.assets import daily_people_asset

WORKSPACE = Path(__file__).with_name("workspace.yaml")

daily_people_one_run_per_day = daily_people_asset(
    "daily_people_one_run_per_day",
    dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    "`daily_people` with one run per day in a backfill (the fallback policy; every run waits "
    "for a slot in the `people_function` pool). Table `<data lake>/daily_people_one_run_per_day`.",
)


@dg.asset(
    description=(
        "Does nothing, without Pipes or a function: the Dagster run overhead that the "
        "function-backed assets are measured against (`just bench`)."
    ),
    group_name="overhead_baseline",
)
def overhead_baseline() -> dg.MaterializeResult:  # type: ignore[type-arg]
    return dg.MaterializeResult()


BENCH_ASSETS = [overhead_baseline, daily_people_one_run_per_day]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(demo.defs(), dg.Definitions(assets=BENCH_ASSETS))
