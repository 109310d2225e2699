"""``PipesCloudFunctionClient``: run a Cloud Function from a Dagster asset with Dagster Pipes."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import dagster as dg
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.storage.tags import ASSET_RESUME_RETRY_TAG, RESUME_RETRY_TAG
from dagster_pipes import DAGSTER_PIPES_MESSAGES_ENV_VAR, PipesExtras, encode_param

from dagster_pipes_gcf.cancellation import CancelOutcome, forwarding_termination
from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.invocation import (
    Call,
    CloudFunctionError,
    CloudFunctionInvoker,
    FunctionResponse,
)
from dagster_pipes_gcf.message_reader import AttemptStreams, PipesAttemptMessageReader
from dagster_pipes_gcf.partition_range import PipesPartitionRangeInjector, is_direct_invocation
from dagster_pipes_gcf.tracing import CallTrace, FunctionLocation

INVOCATION_ID_EXTRA = "invocation_id"
INVOCATION_ID_HEADER = "X-Dagster-Invocation-Id"
# Where Dagster shows the exception a function's Pipes `closed` message carried.
CLOSED_EVENT = "in the run's event '[pipes] external process pipes closed with exception'"
Context = dg.AssetExecutionContext | dg.OpExecutionContext
MAX_RESUME_CHAIN = 100  # ancestors looked up for a chain of from-failure re-executions


def idempotency_run_id(run: dg.DagsterRun, instance: dg.DagsterInstance) -> str:
    """The run whose work ``run`` continues: itself, or for a from-failure re-execution (tag
    ``dagster/is_resume_retry`` or ``dagster/is_asset_resume_retry``) the run it resumes, up
    the chain as Dagster's Pipes reattachment walks it. A full re-execution is new work."""

    def resumes_its_parent(run: dg.DagsterRun) -> bool:
        return "true" in (run.tags.get(RESUME_RETRY_TAG), run.tags.get(ASSET_RESUME_RETRY_TAG))

    seen: set[str] = set()
    while resumes_its_parent(run) and run.parent_run_id and len(seen) < MAX_RESUME_CHAIN:
        seen.add(run.run_id)
        parent = instance.get_run_by_id(run.parent_run_id)
        if parent is None or parent.run_id in seen:
            return run.root_run_id or run.parent_run_id
        run = parent
    return run.run_id


def derive_invocation_id(
    *,
    run_id: str,
    step_key: str,
    asset_keys: Sequence[str],
    partition: str,
    ordinal: int,
    call_key: str | None = None,
) -> str:
    """A UUID naming the ``ordinal``-th call of the step's selected ``asset_keys``, or the
    call named ``call_key`` whatever assets are selected (a from-failure re-execution may
    select only those that failed)."""
    call = f"{','.join(sorted(asset_keys))}/{ordinal}" if call_key is None else f"key={call_key}"
    name = f"dagster://{run_id}/{step_key}/{partition}/{call}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def partition_of(context: Context) -> str:
    """The partition key, ``start..end`` for a range, or "" when unpartitioned."""
    if context.has_partition_key:
        return context.partition_key
    if not context.has_partition_key_range:
        return ""
    keys = context.partition_key_range
    return keys.start if keys.start == keys.end else f"{keys.start}..{keys.end}"


class InvocationIds:
    """Thread-safe invocation ids per ``run()`` call: the n-th call of a step attempt gets
    ordinal n, so a retried step's calls get the ids of the first try's calls in order. A
    directly invoked asset (``build_asset_context()``) has no run or step: a random id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[Any, ...]] = Counter()

    def next_ordinal(self, *key: Any) -> int:
        """How often ``key`` (run id, step key, retry number) was counted, this time included."""
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def next_for(self, context: Context, call_key: str | None = None) -> str:
        """The id of the call about to be made from ``context``'s step."""
        if call_key is not None and not call_key:
            raise ValueError("call_key must be a non-empty string (or None)")
        if is_direct_invocation(context):  # its run id is always "EPHEMERAL": each call is new
            return str(uuid.uuid4())
        step_key = context.get_step_execution_context().step.key
        attempt = (context.run_id, step_key, context.retry_number)
        if call_key is not None and self.next_ordinal(*attempt, call_key) > 1:
            raise ValueError(
                f"call_key {call_key!r} was used already in step {step_key}: each call of a "
                "step needs its own (a repeated key would be taken for a retry)"
            )
        return derive_invocation_id(
            run_id=idempotency_run_id(context.run, context.instance),
            step_key=step_key,
            asset_keys=[key.to_user_string() for key in context.selected_asset_keys],
            partition=partition_of(context),
            ordinal=self.next_ordinal(*attempt),
            call_key=call_key,
        )


# Shared by every client: a step calling through two clients still counts its calls once.
STEP_CALLS = InvocationIds()


class PipesCloudFunctionCompletedInvocation(dg.PipesClientCompletedInvocation):
    """A finished call whose metadata goes on the materializations only, not on the checks."""

    def __init__(self, session: dg.PipesSession, metadata: Mapping[str, Any]):
        super().__init__(session, metadata=metadata)
        self._pipes_session = session

    def get_results(
        self, *, implicit_materializations: bool = True
    ) -> Sequence[dg.PipesExecutionResult]:
        results = self._pipes_session.get_results(
            implicit_materializations=implicit_materializations
        )
        return [
            result._replace(metadata={**(result.metadata or {}), **self.metadata})
            if isinstance(result, dg.MaterializeResult)
            else result
            for result in results
        ]


class GcpPipesClient(dg.PipesClient, TreatAsResourceParam):
    """The function's and the job's client: a session with its invocation id."""

    message_reader: dg.PipesMessageReader
    context_injector: dg.PipesContextInjector
    invocation_ids = STEP_CALLS

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @contextmanager
    def open_session(
        self, context: Context, extras: PipesExtras | None, call_key: str | None
    ) -> Iterator[tuple[dg.PipesSession, str]]:
        """The call's Pipes session (its range's keys and window in the context) and id."""
        invocation_id = self.invocation_ids.next_for(context, call_key)
        with dg.open_pipes_session(
            context=context,
            context_injector=PipesPartitionRangeInjector(self.context_injector, context),
            message_reader=self.message_reader,
            extras={**(extras or {}), INVOCATION_ID_EXTRA: invocation_id},
        ) as session:
            yield session, invocation_id


class PipesCloudFunctionClient(GcpPipesClient):
    """Pipes client that invokes an HTTP Cloud Function and streams its messages back.

    The Pipes bootstrap parameters go in the JSON request body next to ``event``; each HTTP
    attempt writes its messages to GCS under its own prefix, and only the one that answered
    contributes results. The invocation id (header ``X-Dagster-Invocation-Id``, Pipes extra
    ``invocation_id``) is the same for every HTTP and step retry of a ``run()`` call: it names
    the run (or the one a from-failure re-execution resumes), step, assets, partition and the
    call's ordinal in the step, or its ``call_key``.

    Args:
        message_reader: :class:`PipesCloudStorageMessageReader`, or any Pipes reader wrapped
            in :class:`PipesSharedLocationReader`.
        context_injector: how the Pipes context travels; defaults to inline in the body.
        invoker: auth, timeouts and retries; defaults to :class:`CloudFunctionInvoker`.
        function_location: the function's project for the Cloud Logging link, where its URL
            does not name it (``run.app``).
        forward_termination: ask the function to cancel (marker ``<key_prefix>/cancel``) when
            the run is terminated or the call fails while it may still be working, and
            before a retry the attempt given up.
    """

    message_reader: PipesAttemptMessageReader

    def __init__(
        self,
        message_reader: PipesAttemptMessageReader,
        context_injector: dg.PipesContextInjector | None = None,
        invoker: CloudFunctionInvoker | None = None,
        function_location: FunctionLocation | None = None,
        forward_termination: bool = True,
    ):
        if not isinstance(message_reader, PipesAttemptMessageReader):  # typed, but told at once
            raise TypeError(
                f"{type(message_reader).__name__} cannot give each HTTP attempt its own message "
                "location: wrap it, PipesSharedLocationReader(reader)"
            )
        self.message_reader = message_reader
        self.context_injector = context_injector or PipesCloudFunctionEventContextInjector()
        self.invoker = invoker or CloudFunctionInvoker()
        self.function_location = function_location
        self.forward_termination = forward_termination

    def run(  # type: ignore[override]
        self,
        *,
        context: Context,
        function_url: str,
        event: Mapping[str, Any] | None = None,
        extras: PipesExtras | None = None,
        timeout: float | None = None,
        call_key: str | None = None,
    ) -> PipesCloudFunctionCompletedInvocation:
        """Invoke the function at ``function_url`` with ``event`` and wait for it to finish.

        ``call_key`` names this call within the step in place of its ordinal; ``timeout``
        overrides the policy's per-attempt timeout.

        Raises:
            CloudFunctionError: the call failed; the message names the cause.
            DagsterPipesExecutionError: the function's messages ended without ``closed``.
        """
        trace = CallTrace.start(
            function_url,
            run_id=context.run_id,
            asset_key=",".join(key.to_user_string() for key in context.selected_asset_keys),
            partition_key=partition_of(context),
            location=self.function_location,
        )
        attempts: AttemptStreams | None = None
        try:
            with self.open_session(context, extras, call_key) as (session, invocation_id):
                attempts = self.message_reader.attempts(session.message_reader_params)
                context.log.info(
                    f"[pipes] invoking Cloud Function {function_url} ({invocation_id}); "
                    f"{trace.describe()}"
                )
                reason = {"run_id": context.run_id, "invocation_id": invocation_id}
                cancel = partial(self._cancel, attempts, reason)
                call = self.invoker.start(
                    function_url,
                    headers={INVOCATION_ID_HEADER: invocation_id, **trace.headers},
                    timeout=timeout,
                )
                body = {**(event or {}), **session.get_bootstrap_env_vars()}
                with (
                    trace.annotating_failures(),
                    forwarding_termination(cancel, context.log.warning),
                ):
                    response = self._post_attempts(call, body, attempts, cancel, context)
                attempts.answered()
                context.log.info(
                    f"[pipes] Cloud Function answered HTTP {response.status} in "
                    f"{response.elapsed_s:.2f}s ({response.attempts} attempt(s))"
                )
        except CloudFunctionError as error:
            if attempts is not None and attempts.closed_with_exception:
                error.traceback_shown_elsewhere(CLOSED_EVENT)
            raise
        metadata = {
            "function_url": function_url,
            "function_call_s": round(response.elapsed_s, 3),
            "invocation_id": invocation_id,
            "http_attempts": response.attempts,
            **trace.metadata(response.body),
        }
        if isinstance(handler_s := response.body.get("duration_s"), int | float):
            metadata["function_handler_s"] = handler_s  # reported by gcf_pipes' handler
        return PipesCloudFunctionCompletedInvocation(session, metadata=metadata)

    def _cancel(
        self,
        attempts: AttemptStreams,
        reason: Mapping[str, str],
        why: str,
        abandoned_only: bool = False,
    ) -> CancelOutcome | None:
        if not self.forward_termination:
            return None
        return attempts.cancel({"reason": why, **reason}, abandoned_only=abandoned_only)

    def _post_attempts(
        self,
        call: Call,
        body: Mapping[str, Any],
        attempts: AttemptStreams,
        cancel: Callable[..., CancelOutcome | None],
        context: Context,
    ) -> FunctionResponse:
        """Each attempt with its own messages params; the attempt given up, if it may still
        run, is asked to stop first."""
        for attempt in call.attempts():
            with attempt:
                gone = call.abandoned
                params = attempts.begin_attempt(call.number, gone.reason if gone else None)
                if gone and gone.may_have_run:
                    why = f"attempt {call.number - 1} abandoned ({gone.reason})"
                    if outcome := cancel(why, abandoned_only=True):
                        context.log.info(
                            f"[pipes] before attempt {call.number}: {outcome.describe()}"
                        )
                params_field = {DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(params)}
                call.post({**body, **params_field}, attempts.handler_started)
        return call.result()
