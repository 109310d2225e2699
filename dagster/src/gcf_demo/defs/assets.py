"""The demo asset: a Cloud Function writes fake people to a Delta table."""

from pydantic import Field

import dagster as dg
from dagster_pipes_gcf import PipesCloudFunctionClient
from gcf_demo.defs.resources import PeopleFunction


class PeopleConfig(dg.Config):
    """Run configuration of the people asset."""

    num_rows: int = Field(default=1000, description="How many fake people to write.")
    seed: int | None = Field(default=None, description="Seed for reproducible fake data.")


@dg.asset(
    description="A Cloud Function that writes fake people to a Delta table, through Dagster Pipes.",
    kinds={"gcp", "delta"},
    group_name="cloud_function",
)
def cloud_function_pipes_asset(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult[None]:
    return pipes_function_client.run(
        context=context,
        function_url=people_function.function_url,
        event={
            "dl_bucket": people_function.data_lake_uri,
            "num_rows": config.num_rows,
            "seed": config.seed,
        },
    ).get_materialize_result()
