"""The partition key range of a run that materializes several partitions at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import AssetExecutionContext, OpExecutionContext, PipesContextInjector
from dagster._core.definitions.partitions.utils import has_one_dimension_time_window_partitioning
from dagster._core.execution.context.invocation import BaseDirectExecutionContext
from dagster._core.pipes.context import _convert_partition_key_range, _convert_time_window
from dagster_pipes import PipesContextData, PipesParams

Context = AssetExecutionContext | OpExecutionContext


def is_direct_invocation(context: Context) -> bool:
    """True for ``build_asset_context()``/``build_op_context()``: no run, step or instance."""
    return isinstance(context, BaseDirectExecutionContext)


class PipesPartitionRangeInjector(PipesContextInjector):
    """Any injector, given the run's partition key range and time window: Dagster sends them
    only for a single key, so a range run (``BackfillPolicy``) would look unpartitioned."""

    def __init__(self, injector: PipesContextInjector, context: Context):
        self.injector = injector
        self.context = context

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        with self.injector.inject_context(with_partition_range(context_data, self.context)) as p:
            yield p

    def no_messages_debug_text(self) -> str:
        inner = self.injector
        return (
            f"{type(inner).__name__} (with the partition range): {inner.no_messages_debug_text()}"
        )


def with_partition_range(context_data: PipesContextData, context: Context) -> PipesContextData:
    """``context_data`` with a range run's key range and time window, in Dagster's format."""
    if context_data.get("partition_key_range") is not None or not context.has_partition_key_range:
        return context_data
    window = None
    # Dagster's condition: the run's partitions definition (an op job's too) is of time
    # windows. A direct invocation has none to ask; Dagster's Pipes cannot tell either.
    if not is_direct_invocation(context):
        partitions_def = context.get_step_execution_context().run_partitions_def
        if has_one_dimension_time_window_partitioning(partitions_def):
            window = _convert_time_window(context.partition_time_window)
    return {
        **context_data,
        "partition_key_range": _convert_partition_key_range(context.partition_key_range),
        "partition_time_window": window,
    }
