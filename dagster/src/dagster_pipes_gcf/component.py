"""A Dagster component (``dg``) that declares assets materialized by one Cloud Function call.

In a project's ``defs`` folder, a ``defs.yaml``::

    type: dagster_pipes_gcf.CloudFunctionComponent
    attributes:
      function_url: "{{ env.FUNCTION_URL }}"
      pipes_bucket: "{{ env.PIPES_BUCKET }}"
      event: {name: Dagster}
      assets: [{key: greeting}]
      checks: [{name: greeting_mentions_name, asset: greeting}]
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_pipes_gcf.client import PipesCloudFunctionClient
from dagster_pipes_gcf.message_reader import PipesCloudStorageMessageReader


class CloudFunctionComponent(dg.Component, dg.Model, dg.Resolvable):
    """Assets (and the checks the function reports) materialized by one call of an HTTP
    Cloud Function through :class:`PipesCloudFunctionClient`.

    The component provides the client as the resource ``client_resource_key``: it reads the
    function's messages from ``pipes_bucket`` and calls with an ID token where the URL needs
    one. A test materializes the assets with another client under that key (for example
    :class:`~dagster_pipes_gcf.testing.FakeCloudFunction`'s).

    Attributes:
        function_url: the function's HTTPS trigger URL.
        event: the JSON object sent as the request's event, next to the Pipes context.
        assets: the assets one call materializes.
        checks: the checks the function reports (Dagster accepts only declared checks).
        pipes_bucket: the GCS bucket the function writes its Pipes messages to.
        client_resource_key: the resource key of the client.
        op_name: the name of the step; defaults to the first asset's key.
    """

    function_url: str
    event: dict[str, Any] = Field(default_factory=dict)
    assets: list[dg.ResolvedAssetSpec]
    pipes_bucket: str
    checks: list[dg.ResolvedAssetCheckSpec] = Field(default_factory=list)
    client_resource_key: str = "cloud_function"
    op_name: str | None = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if not self.assets:
            raise dg.DagsterInvalidDefinitionError(
                "CloudFunctionComponent needs at least one asset in `assets`"
            )
        function_url, event, key = self.function_url, dict(self.event), self.client_resource_key

        @dg.multi_asset(
            name=self.op_name or self.assets[0].key.to_python_identifier(),
            specs=self.assets,
            check_specs=self.checks,
            required_resource_keys={key},
        )
        def call_cloud_function(
            context: dg.AssetExecutionContext,
        ) -> Iterator[dg.MaterializeResult[Any] | dg.AssetCheckResult]:
            client: PipesCloudFunctionClient = getattr(context.resources, key)
            yield from client.run(
                context=context, function_url=function_url, event=event
            ).get_results()

        client = PipesCloudFunctionClient(
            message_reader=PipesCloudStorageMessageReader(bucket=self.pipes_bucket)
        )
        return dg.Definitions(assets=[call_cloud_function], resources={key: client})
