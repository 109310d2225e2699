"""The demo assets: a Cloud Function writes fake people to Delta tables, through Dagster Pipes.

``cloud_function_pipes_asset`` appends to one table; ``daily_people`` is partitioned by day
(the partition key travels to the function in the Pipes context, and the function replaces
that day's partition). The function reports the data-quality checks declared here.
"""

import dagster as dg
from pydantic import Field

from dagster_pipes_gcf import PipesCloudFunctionClient
from gcf_demo.defs.resources import PeopleFunction

# Bump when the function's output changes meaning (columns, generation, write semantics).
PEOPLE_CODE_VERSION = "people-2"
OWNERS = ["team:data-platform"]
TAGS = {"domain": "people", "data": "synthetic", "runtime": "cloud-function"}
KINDS = {"gcp", "delta"}
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)

# Name -> description; the function reports results under these names (people_lake.checks).
CHECKS = {
    "ids_unique_and_not_null": "Every person has an id, and no id occurs twice in a write.",
    "emails_valid": "Every e-mail address matches the e-mail pattern; fails with examples.",
    "row_count_matches_request": "The Delta commit added exactly the rows that were requested.",
}


class PeopleConfig(dg.Config):
    """Run configuration of the people assets (the function validates it strictly)."""

    num_rows: int = Field(default=1000, description="How many fake people to write (1..5M).")
    seed: int | None = Field(
        default=None, description="Seed for reproducible fake data (0..2**63-1)."
    )
    invalid_email_rate: float = Field(
        default=0.0,
        description="Share (0..1) of deliberately malformed e-mails, to see a check fail.",
    )


def check_specs(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_name, description=description)
        for name, description in CHECKS.items()
    ]


def run_people_function(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    client: PipesCloudFunctionClient,
    function: PeopleFunction,
) -> dg.MaterializeResult[None]:
    """Invoke the people function for this asset (and partition) and collect its results."""
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


@dg.asset(
    description=(
        "Fake people appended to the Delta table `<data lake>/cloud_function_pipes_asset` by a "
        "Google Cloud Function, orchestrated through Dagster Pipes. Retries of a run never "
        "duplicate rows (Delta transaction ids keyed by the invocation)."
    ),
    kinds=KINDS,
    owners=OWNERS,
    tags=TAGS,
    code_version=PEOPLE_CODE_VERSION,
    group_name="cloud_function",
    check_specs=check_specs("cloud_function_pipes_asset"),
)
def cloud_function_pipes_asset(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    return run_people_function(context, config, pipes_function_client, people_function)


@dg.asset(
    description=(
        "Fake people per day in the Delta table `<data lake>/daily_people`, partitioned by "
        "`event_date`. Materializing a day replaces exactly that partition; days can be "
        "backfilled concurrently."
    ),
    partitions_def=DAILY_PARTITIONS,
    kinds=KINDS,
    owners=OWNERS,
    tags={**TAGS, "partitioning": "daily"},
    code_version=PEOPLE_CODE_VERSION,
    group_name="cloud_function",
    check_specs=check_specs("daily_people"),
)
def daily_people(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    return run_people_function(context, config, pipes_function_client, people_function)
