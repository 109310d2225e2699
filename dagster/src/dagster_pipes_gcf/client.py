"""``PipesCloudFunctionClient``: run a Cloud Function from a Dagster asset with Dagster Pipes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DagsterRun,
    MaterializeResult,
    OpExecutionContext,
    PipesClient,
    PipesClientCompletedInvocation,
    PipesContextInjector,
    PipesExecutionResult,
    PipesMessageReader,
    PipesSession,
    open_pipes_session,
)
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.storage.tags import ASSET_RESUME_RETRY_TAG, RESUME_RETRY_TAG
from dagster_pipes import DAGSTER_PIPES_MESSAGES_ENV_VAR, PipesExtras, PipesParams, encode_param

from dagster_pipes_gcf.cancellation import CancelOutcome, forwarding_termination
from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.invocation import Call, CloudFunctionError, CloudFunctionInvoker
from dagster_pipes_gcf.message_reader import AttemptStreams, PipesAttemptMessageReader
from dagster_pipes_gcf.partition_range import PipesPartitionRangeInjector, is_direct_invocation
from dagster_pipes_gcf.tracing import CallTrace, FunctionLocation

INVOCATION_ID_EXTRA = "invocation_id"
INVOCATION_ID_HEADER = "X-Dagster-Invocation-Id"
# Where Dagster shows the exception a function's Pipes `closed` message carried.
CLOSED_EVENT = "in the run's event '[pipes] external process pipes closed with exception'"

Context = AssetExecutionContext | OpExecutionContext
MAX_RESUME_CHAIN = 100  # ancestors looked up for a chain of from-failure re-executions


def idempotency_run_id(run: DagsterRun, instance: DagsterInstance) -> str:
    """The run whose work ``run`` continues: itself, unless it re-executes from failure.

    A from-failure re-execution (tag ``dagster/is_resume_retry`` or
    ``dagster/is_asset_resume_retry``, set by the UI, the CLI and automatic run retries)
    continues its parent, and so on up the chain, as Dagster's own Pipes reattachment walks
    it; ``instance`` is asked for the parents. A full re-execution is new work.
    """

    def resumes_its_parent(run: DagsterRun) -> bool:
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
    """A UUID (matches ``[A-Za-z0-9][A-Za-z0-9._:-]{0,127}``) naming one call of one step:
    the ``ordinal``-th call of the step's selected ``asset_keys``, or the call named
    ``call_key`` when one is given (then whatever subset of a multi-asset the step
    materializes: a from-failure re-execution may select only the assets that failed)."""
    assets = ",".join(sorted(asset_keys))
    call = f"{assets}/{ordinal}" if call_key is None else f"key={call_key}"
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
    """Invocation ids per ``run()`` call: the n-th call of a step attempt gets ordinal n.

    A directly invoked asset or op (``build_asset_context()``, as in unit tests) gets a new
    random id per call: it has no run or step to derive one from.

    Thread-safe. The ordinal restarts with each step retry, so a retried step's calls get the
    ids of the first try's calls in the same order. Clients share one counter
    (:data:`STEP_CALLS`): a step calling through two clients still counts its calls once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str, int], int] = {}
        self._keys: set[tuple[str, str, int, str]] = set()

    def next_ordinal(self, run_id: str, step_key: str, retry_number: int) -> int:
        """1 for the first call of this step attempt, then 2, 3, ..."""
        key = (run_id, step_key, retry_number)
        with self._lock:
            ordinal = self._calls[key] = self._calls.get(key, 0) + 1
        return ordinal

    def next_for(self, context: Context, call_key: str | None = None) -> str:
        """The id of the call about to be made from ``context``'s step."""
        if call_key is not None and not call_key:
            raise ValueError("call_key must be a non-empty string (or None)")
        if is_direct_invocation(context):
            # build_asset_context(): no run to resume and no retries, and every such context
            # has the run id "EPHEMERAL": each call is new work, never a repeat of another.
            return str(uuid.uuid4())
        step_key = context.get_step_execution_context().step.key
        if call_key is not None:
            with self._lock:
                key = (context.run_id, step_key, context.retry_number, call_key)
                if key in self._keys:  # it would be taken for a repeat and write nothing
                    raise ValueError(
                        f"call_key {call_key!r} was used already in step {step_key}: each call "
                        "of a step needs its own (a repeated key would be taken for a retry)"
                    )
                self._keys.add(key)
        ordinal = self.next_ordinal(context.run_id, step_key, context.retry_number)
        return derive_invocation_id(
            run_id=idempotency_run_id(context.run, context.instance),
            step_key=step_key,
            asset_keys=[key.to_user_string() for key in context.selected_asset_keys],
            partition=partition_of(context),
            ordinal=ordinal,
            call_key=call_key,
        )


STEP_CALLS = InvocationIds()  # the calls of every step in this process, whichever client


class PipesCloudFunctionCompletedInvocation(PipesClientCompletedInvocation):
    """A finished call whose metadata (function URL, invocation id, timings) goes on the
    materializations only, not on the asset check results the function reported."""

    def __init__(self, session: PipesSession, metadata: Mapping[str, Any]):
        super().__init__(session, metadata=metadata)
        self._pipes_session = session

    def get_results(
        self, *, implicit_materializations: bool = True
    ) -> Sequence[PipesExecutionResult]:
        results = self._pipes_session.get_results(
            implicit_materializations=implicit_materializations
        )
        return [
            result._replace(metadata={**(result.metadata or {}), **self.metadata})
            if isinstance(result, MaterializeResult)
            else result
            for result in results
        ]


class GcpPipesClient(PipesClient, TreatAsResourceParam):
    """What the function and the job client share: the session with its invocation id."""

    message_reader: PipesMessageReader
    context_injector: PipesContextInjector
    invocation_ids = STEP_CALLS

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @contextmanager
    def open_session(
        self, context: Context, extras: PipesExtras | None, call_key: str | None
    ) -> Iterator[tuple[PipesSession, str]]:
        """The call's Pipes session (its range's keys and window in the context) and id."""
        invocation_id = self.invocation_ids.next_for(context, call_key)
        with open_pipes_session(
            context=context,
            context_injector=PipesPartitionRangeInjector(self.context_injector, context),
            message_reader=self.message_reader,
            extras={**(extras or {}), INVOCATION_ID_EXTRA: invocation_id},
        ) as session:
            yield session, invocation_id


class PipesCloudFunctionClient(GcpPipesClient):
    """Pipes client that invokes an HTTP Cloud Function and streams its messages back.

    The Pipes bootstrap parameters are merged into the JSON request body next to the
    caller's ``event``; the function writes its messages to GCS, where ``message_reader``
    reads them while the call runs. Each HTTP attempt writes under its own prefix and only
    the attempt that answered contributes results.

    Invocation id (header ``X-Dagster-Invocation-Id``, Pipes extra ``invocation_id``): one per
    ``run()`` call, the same for every HTTP retry and step retry of that call. It is derived
    from the run (a from-failure re-execution uses the run it resumes), the step, the
    selected assets, the partition (or range) and the call's ordinal within the step, so the
    n-th call must mean the same work on every try; a step whose calls vary between tries
    names each call with ``call_key`` instead, unique within the step.

    Args:
        message_reader: where the function's messages are read from:
            :class:`PipesCloudStorageMessageReader`, or any other Pipes reader wrapped in
            :class:`PipesSharedLocationReader`.
        context_injector: how the Pipes context travels; defaults to inline in the body.
        invoker: HTTP invocation (auth, timeouts, retries); defaults to
            :class:`CloudFunctionInvoker` with its default policy.
        function_location: the function's project, for each call's Cloud Logging link where
            its URL does not name it (a ``run.app`` URL).
        forward_termination: when the run is terminated while the call waits, or the call
            fails while the function may still be working on it, ask the function to cancel
            (marker ``<key_prefix>/cancel``, see :mod:`dagster_pipes_gcf.cancellation`);
            likewise, before a retry, the attempt given up. With
            :class:`PipesCloudStorageMessageReader` only.
    """

    message_reader: PipesAttemptMessageReader

    def __init__(
        self,
        message_reader: PipesAttemptMessageReader,
        context_injector: PipesContextInjector | None = None,
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

        ``call_key`` names this call within the step in place of its ordinal (see the class
        docstring); ``timeout`` overrides the policy's per-attempt timeout.

        Raises:
            CloudFunctionError: the call failed (non-2xx, unreachable, timed out, or an
                ambiguous outcome the policy does not retry); the message names the cause.
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
                with (
                    trace.annotating_failures(),
                    forwarding_termination(self._canceller(attempts, reason), context.log.warning),
                ):
                    call = self.invoker.start(
                        function_url,
                        headers={INVOCATION_ID_HEADER: invocation_id, **trace.headers},
                        timeout=timeout,
                    )
                    body = {**(event or {}), **session.get_bootstrap_env_vars()}
                    for attempt in call.attempts():
                        with attempt:
                            params = self._begin_attempt(call, attempts, reason, context)
                            call.post(
                                {**body, DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(params)},
                                attempts.handler_started,
                            )
                    response = call.result()
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

    def _canceller(
        self, attempts: AttemptStreams, reason: Mapping[str, str]
    ) -> Callable[[str], CancelOutcome | None] | None:
        """How to ask the function to stop this call (told why), if this client may."""
        if not self.forward_termination:
            return None
        return lambda why: attempts.cancel({"reason": why, **reason})

    def _begin_attempt(
        self, call: Call, attempts: AttemptStreams, reason: Mapping[str, str], context: Context
    ) -> PipesParams:
        """The messages params of the attempt about to be sent. The attempt given up before
        it, if it may have reached the handler, is asked to stop: two copies of one call then
        never work side by side for long."""
        abandoned = call.abandoned
        params = attempts.begin_attempt(call.number, abandoned.reason if abandoned else None)
        if abandoned and abandoned.may_have_run and self.forward_termination:
            why = f"attempt {call.number - 1} abandoned ({abandoned.reason})"
            if outcome := attempts.cancel({"reason": why, **reason}, abandoned_only=True):
                context.log.info(f"[pipes] before attempt {call.number}: {outcome.describe()}")
        return params
