"""The Dagster side of the example: an asset whose materialization is one call of the function.

Load with ``dagster dev -f definitions.py``. Needs ``PIPES_BUCKET`` and ``FUNCTION_URL`` (and
``STORAGE_EMULATOR_HOST`` against the emulator).
"""

import os

import dagster as dg

from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader


@dg.asset(
    # The function reports this check: Dagster accepts only the checks an asset declares.
    check_specs=[dg.AssetCheckSpec("greeting_mentions_name", asset="greeting")],
)
def greeting(
    context: dg.AssetExecutionContext, cloud_function: PipesCloudFunctionClient
) -> dg.MaterializeResult:
    return cloud_function.run(
        context=context, function_url=os.environ["FUNCTION_URL"], event={"name": "Dagster"}
    ).get_materialize_result()


def cloud_function_client() -> PipesCloudFunctionClient:
    """Calls the function and reads its Pipes messages from ``PIPES_BUCKET``."""
    reader = PipesCloudStorageMessageReader(bucket=os.environ["PIPES_BUCKET"])
    return PipesCloudFunctionClient(message_reader=reader)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[greeting], resources={"cloud_function": cloud_function_client()})
