"""``PipesCloudFunctionClient``: run a Cloud Function from a Dagster asset with Dagster Pipes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetExecutionContext,
    OpExecutionContext,
    PipesClient,
    PipesClientCompletedInvocation,
    PipesContextInjector,
    PipesMessageReader,
    open_pipes_session,
)
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster_pipes import PipesExtras

from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.invocation import CloudFunctionInvoker

INVOCATION_ID_EXTRA = "invocation_id"
INVOCATION_ID_HEADER = "X-Dagster-Invocation-Id"


def invocation_id_for(context: AssetExecutionContext | OpExecutionContext) -> str:
    """Stable id of "this run, these assets, this partition": equal for every retry of it.

    The function uses it to recognise a repeated invocation (e.g. as a Delta transaction id).
    """
    assets = ",".join(sorted(key.to_user_string() for key in context.selected_asset_keys))
    partition = context.partition_key if context.has_partition_key else ""
    name = f"dagster://{context.run.run_id}/{context.op_execution_context.op.name}/{assets}/{partition}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


class PipesCloudFunctionClient(PipesClient, TreatAsResourceParam):
    """Pipes client that invokes an HTTP Cloud Function and streams its messages back.

    The Pipes bootstrap parameters are merged into the JSON request body next to the
    caller's ``event``; the function writes messages to GCS where ``message_reader`` (usually
    a :class:`PipesCloudStorageMessageReader`) picks them up while the call runs.

    Args:
        message_reader: where the function's messages are read from.
        context_injector: how the Pipes context travels; defaults to inline in the body.
        invoker: HTTP invocation (auth, timeouts, retries); defaults to
            :class:`CloudFunctionInvoker` with its default policy.
    """

    def __init__(
        self,
        message_reader: PipesMessageReader,
        context_injector: PipesContextInjector | None = None,
        invoker: CloudFunctionInvoker | None = None,
    ):
        self.message_reader = message_reader
        self.context_injector = context_injector or PipesCloudFunctionEventContextInjector()
        self.invoker = invoker or CloudFunctionInvoker()

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def run(  # type: ignore[override]
        self,
        *,
        context: AssetExecutionContext | OpExecutionContext,
        function_url: str,
        event: Mapping[str, Any] | None = None,
        extras: PipesExtras | None = None,
        timeout: float | None = None,
    ) -> PipesClientCompletedInvocation:
        """Invoke the function at ``function_url`` with ``event`` and wait for it to finish.

        Raises:
            CloudFunctionError: the call failed (non-2xx, unreachable, timed out); the
                message names the HTTP status and the remote error.
            DagsterPipesExecutionError: the function's messages ended without ``closed``.
        """
        invocation_id = invocation_id_for(context)
        with open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras={**(extras or {}), INVOCATION_ID_EXTRA: invocation_id},
        ) as session:
            payload = {**(event or {}), **session.get_bootstrap_env_vars()}
            context.log.info(f"[pipes] invoking Cloud Function {function_url} ({invocation_id})")
            response = self.invoker.invoke(
                function_url,
                payload,
                headers={INVOCATION_ID_HEADER: invocation_id},
                timeout=timeout,
            )
            context.log.info(
                f"[pipes] Cloud Function answered HTTP {response.status} in "
                f"{response.elapsed_s:.2f}s ({response.attempts} attempt(s))"
            )
        metadata: dict[str, Any] = {
            "function_url": function_url,
            "function_call_s": round(response.elapsed_s, 3),
            "invocation_id": invocation_id,
        }
        handler_s = response.body.get("duration_s")
        if isinstance(handler_s, int | float):  # reported by gcf_pipes' handler
            metadata["function_handler_s"] = handler_s
        return PipesClientCompletedInvocation(session, metadata=metadata)
