"""The partition key range of a run that materializes several partitions at once."""

from __future__ import annotations

from dagster import AssetExecutionContext, OpExecutionContext, TimeWindowPartitionsDefinition
from dagster_pipes import PipesContextData


def add_partition_range(
    context_data: PipesContextData, context: AssetExecutionContext | OpExecutionContext
) -> None:
    """Fill in the partition key range and time window of a range run.

    Dagster (1.13) puts them in the Pipes context only when the run has a single partition
    key; a backfill run over a range (``BackfillPolicy``) would reach the external process
    as if it were unpartitioned. The format is Dagster's own (keys; ISO-8601 window bounds).
    """
    if context_data.get("partition_key_range") is not None or not context.has_partition_key_range:
        return
    keys = context.partition_key_range
    context_data["partition_key_range"] = {"start": keys.start, "end": keys.end}
    asset_context = context if isinstance(context, AssetExecutionContext) else None
    partitions = asset_context.assets_def.partitions_def if asset_context else None
    if isinstance(partitions, TimeWindowPartitionsDefinition):
        window = context.partition_time_window
        context_data["partition_time_window"] = {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
        }
