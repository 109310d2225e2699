"""Resources of the demo code location, built from :class:`gcf_demo.settings.DemoSettings`."""

from typing import Any

import dagster as dg

from dagster_pipes_gcf import (
    CloudFunctionInvoker,
    IdTokenAuth,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
)
from gcf_demo.settings import DemoSettings


class PeopleFunction(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where the demo asset sends its request: the function URL and the data lake root."""

    function_url: str
    data_lake_uri: str


def build_resources(settings: DemoSettings) -> dict[str, Any]:
    return {
        "pipes_function_client": PipesCloudFunctionClient(
            message_reader=PipesCloudStorageMessageReader(bucket=settings.pipes_bucket),
            invoker=CloudFunctionInvoker(
                auth=IdTokenAuth(impersonate_service_account=settings.impersonate_service_account)
            ),
        ),
        "people_function": PeopleFunction(
            function_url=settings.function_url, data_lake_uri=settings.data_lake_uri
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(DemoSettings.from_env()))
