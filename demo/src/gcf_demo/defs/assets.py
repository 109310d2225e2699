"""The demo assets: a Cloud Function writes fake people to Delta tables, through Dagster Pipes.

``cloud_function_pipes_asset`` appends to one table. ``daily_people`` is partitioned by day:
a run carries a partition key range (the Pipes context holds it), the function generates
each day's rows and replaces exactly those days in one Delta commit, so a backfill of up to
``MAX_DAYS_PER_RUN`` days is one run and one function call. The function reports the
data-quality checks declared here.

Every function-backed asset is in the concurrency pool ``PEOPLE_FUNCTION_POOL``: its limit
(the instance's ``concurrency: pools: default_limit``) bounds the calls in flight.
"""

import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_pipes_gcf import PipesCloudFunctionClient
from gcf_demo.defs.resources import PeopleFunction

# Bump when the function's output changes meaning (columns, generation, write semantics).
PEOPLE_CODE_VERSION = "people-3"
OWNERS = ["team:data-platform"]
TAGS = {"domain": "people", "data": "synthetic"}
KINDS = {"gcp", "delta"}
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)
# The function's MAX_RANGE_DAYS (people_lake.request): the longest range one call accepts.
MAX_DAYS_PER_RUN = 366
PEOPLE_FUNCTION_POOL = "people_function"
GROUP, RUNTIME = "cloud_function", "cloud-function"
# Defaults: enough rows that the function works for most of a second in several batches (one
# log line per 125,000 rows, people_lake.job.BATCH_ROWS), so its lines stream in before it
# answers, yet a run takes little longer than a run of an asset that does nothing (the bench's
# overhead_baseline); per day, few enough that a year (366 x rows per day) is one quick call.
DEFAULT_ROWS = 500_000
DEFAULT_ROWS_PER_DAY = 1_000

# Name -> description; the function reports results under these names (people_lake.checks).
CHECKS = {
    "ids_unique_and_not_null": "Every person has an id, and no id occurs twice in the table.",
    "emails_valid": "Every e-mail address matches the e-mail pattern; fails with examples.",
    "row_count_matches_request": "The Delta commit added exactly the rows that were requested.",
}


class PeopleConfig(dg.Config):
    """Run configuration of the people assets (the function validates it strictly)."""

    num_rows: int = Field(default=DEFAULT_ROWS, description="How many fake people to write.")
    seed: int | None = Field(
        default=None, description="Seed for reproducible fake data (0..2**63-1)."
    )
    invalid_email_rate: float = Field(
        default=0.0,
        description="Share (0..1) of deliberately malformed e-mails, to see a check fail.",
    )


class DailyPeopleConfig(PeopleConfig):
    """Run configuration of the daily assets: ``num_rows`` is rows per day."""

    num_rows: int = Field(
        default=DEFAULT_ROWS_PER_DAY,
        description="Fake people per day (days x num_rows <= 5,000,000 per run).",
    )


def check_specs(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_name, description=description)
        for name, description in CHECKS.items()
    ]


def people_asset(
    name: str,
    description: str,
    *,
    group: str,
    runtime: str,
    daily_backfill: dg.BackfillPolicy | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``dg.asset`` for a people table: what every one shares (checks, pool, owners, kinds,
    code version), plus its own group and runtime; with ``daily_backfill``, partitioned by day."""
    tags = {**TAGS, "runtime": runtime, **({"partitioning": "daily"} if daily_backfill else {})}
    with warnings.catch_warnings():  # `backfill_policy` is beta: no BetaWarning in every run
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            name=name,
            description=description,
            partitions_def=DAILY_PARTITIONS if daily_backfill else None,
            backfill_policy=daily_backfill,
            kinds=KINDS,
            owners=OWNERS,
            tags=tags,
            code_version=PEOPLE_CODE_VERSION,
            group_name=group,
            pool=PEOPLE_FUNCTION_POOL,
            check_specs=check_specs(name),
        )


def run_people_function(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    client: PipesCloudFunctionClient,
    function: PeopleFunction,
) -> dg.MaterializeResult[None]:
    """Invoke the people function for this asset (and partition range); collect its results."""
    return client.run(
        context=context,
        function_url=function.function_url,
        event={
            "dl_bucket": function.data_lake_uri,
            "num_rows": config.num_rows,
            "seed": config.seed,
            "invalid_email_rate": config.invalid_email_rate,
        },
    ).get_materialize_result()


@people_asset(
    "cloud_function_pipes_asset",
    "Fake people appended to the Delta table `<data lake>/cloud_function_pipes_asset` by a "
    "Google Cloud Function, orchestrated through Dagster Pipes. Retries of a run never "
    "duplicate rows (Delta transaction ids keyed by the invocation).",
    group=GROUP,
    runtime=RUNTIME,
)
def cloud_function_pipes_asset(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    return run_people_function(context, config, pipes_function_client, people_function)


def daily_people_asset(
    name: str, backfill_policy: dg.BackfillPolicy, description: str
) -> dg.AssetsDefinition:
    """A daily-partitioned people table: one function call per run, for the run's days."""

    @people_asset(name, description, group=GROUP, runtime=RUNTIME, daily_backfill=backfill_policy)
    def people_per_day(
        context: dg.AssetExecutionContext,
        config: DailyPeopleConfig,
        pipes_function_client: PipesCloudFunctionClient,
        people_function: PeopleFunction,
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        return run_people_function(context, config, pipes_function_client, people_function)

    return people_per_day


daily_people = daily_people_asset(
    "daily_people",
    dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_DAYS_PER_RUN),
    "Fake people per day in the Delta table `<data lake>/daily_people`, partitioned by "
    "`event_date`. A backfill runs up to 366 days in one run: one function call generates "
    "each day's rows and replaces exactly those days in one Delta commit.",
)
