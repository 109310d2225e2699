"""Resources of the demo code location, built from :class:`gcf_demo.settings.DemoSettings`."""

from typing import Any

import dagster as dg

from dagster_pipes_gcf import (
    CloudFunctionInvoker,
    FunctionLocation,
    IdTokenAuth,
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
)
from gcf_demo.settings import DemoSettings


class PeopleFunction(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where the demo asset sends its request: the function URL and the data lake root."""

    function_url: str
    data_lake_uri: str


def build_resources(settings: DemoSettings) -> dict[str, Any]:
    """With GOOGLE_IMPERSONATE_SERVICE_ACCOUNT set, Dagster acts as the orchestrator account
    for both halves of Pipes: invoking the function and reading its messages."""
    orchestrator = settings.impersonate_service_account
    return {
        "pipes_function_client": PipesCloudFunctionClient(
            message_reader=PipesCloudStorageMessageReader(
                bucket=settings.pipes_bucket, impersonate_service_account=orchestrator
            ),
            invoker=CloudFunctionInvoker(
                # The people function is idempotent on the invocation id (one Delta commit
                # per id), so outcomes where it may have run are safe to retry.
                policy=InvocationPolicy(retry_ambiguous=True),
                auth=IdTokenAuth(
                    impersonate_service_account=orchestrator, audience=settings.function_audience
                ),
            ),
            function_location=FunctionLocation(project=settings.function_project),
        ),
        "people_function": PeopleFunction(
            function_url=settings.function_url, data_lake_uri=settings.data_lake_uri
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(DemoSettings.from_env()))
