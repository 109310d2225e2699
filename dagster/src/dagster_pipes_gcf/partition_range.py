"""The partition key range of a run that materializes several partitions at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetExecutionContext,
    OpExecutionContext,
    PipesContextInjector,
    TimeWindow,
)
from dagster._core.definitions.partitions.utils import has_one_dimension_time_window_partitioning
from dagster._core.execution.context.invocation import BaseDirectExecutionContext
from dagster._core.pipes.context import _convert_partition_key_range, _convert_time_window
from dagster_pipes import PipesContextData, PipesParams

Context = AssetExecutionContext | OpExecutionContext


def is_direct_invocation(context: Context) -> bool:
    """True for a context from ``build_asset_context()``/``build_op_context()``: no run, no
    step, no instance behind it."""
    return isinstance(context, BaseDirectExecutionContext)


class PipesPartitionRangeInjector(PipesContextInjector):
    """Any injector, given the context with the run's partition key range and time window.

    Dagster (1.13) puts them in the Pipes context only when the run has a single partition
    key; a backfill run over a range (``BackfillPolicy``) would reach the external process as
    if it were unpartitioned. Wraps ``injector`` so that whatever carries the context (inline
    in the body, a file, a bucket) carries the range too.
    """

    def __init__(self, injector: PipesContextInjector, context: Context):
        self.injector = injector
        self.context = context

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        with self.injector.inject_context(with_partition_range(context_data, self.context)) as p:
            yield p

    def no_messages_debug_text(self) -> str:
        inner = self.injector
        described = inner.no_messages_debug_text()
        return f"{type(inner).__name__} (with the partition range): {described}"


def with_partition_range(context_data: PipesContextData, context: Context) -> PipesContextData:
    """``context_data`` with a range run's key range and time window, in Dagster's format
    (its own converters: keys; ISO-8601 window bounds); unchanged for other runs."""
    if context_data.get("partition_key_range") is not None or not context.has_partition_key_range:
        return context_data
    window = _run_time_window(context)
    return {
        **context_data,
        "partition_key_range": _convert_partition_key_range(context.partition_key_range),
        "partition_time_window": _convert_time_window(window) if window else None,
    }


def _run_time_window(context: Context) -> TimeWindow | None:
    """The run's time window when the run's partitions are time windows (Dagster's condition:
    the run's partitions definition, which an op job has as well as an asset)."""
    if is_direct_invocation(context):
        return None  # no run partitions definition to ask; Dagster's Pipes cannot tell either
    partitions_def = context.get_step_execution_context().run_partitions_def
    if not has_one_dimension_time_window_partitioning(partitions_def):
        return None
    return context.partition_time_window
