"""Calling the Cloud Function over HTTP: auth, timeouts, retries and error reporting.

Only what provably never reached the handler (connection refused, connect timeout, 429, a
platform 503) is retried by default; outcomes where the handler may have run (a platform
500/502/504, a connection lost after sending) only with ``retry_ambiguous=True``. Cloud Run
also answers 503 when an instance dies mid-request, so a 429/503 counts as never reached
only while the attempt left no Pipes messages.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import requests
from dagster import Failure, MetadataValue
from tenacity import (
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from urllib3.exceptions import NewConnectionError

from dagster_pipes_gcf.auth import (
    IdTokenAuth,
    TokenTimeout,
    is_loopback,
    missing_credentials_hint,
)
from dagster_pipes_gcf.bounded import TimedOut, call_within

# Extra time the default deadline allows beyond one attempt's timeout, for retries.
DEFAULT_RETRY_ALLOWANCE_S = 60.0
# Longest backoff after a connection refused on a loopback URL.
LOCAL_REFUSED_BACKOFF_S = 0.2


class Outcome(enum.Enum):
    """How sure we are that a failed attempt did not run the handler."""

    NOT_REACHED = "never reached the function"
    AMBIGUOUS = "may have reached the function"


@dataclass(frozen=True)
class InvocationPolicy:
    """Timeouts and retries of the HTTP call.

    Attributes:
        timeout: seconds to wait for the function's response; match the function's own
            limit (Terraform's ``function_timeout_seconds``). Never retried when it expires:
            the function may still be working.
        connect_timeout: seconds to establish the connection.
        attempts: total attempts for outcomes that are retried.
        initial_backoff: first backoff in seconds (exponential, with jitter).
        max_backoff: upper bound of one backoff.
        retry_ambiguous: also retry outcomes where the handler may have run (platform
            500/502/504, connection reset or closed after the request was sent). Safe only for
            functions that are idempotent on the invocation id (header
            ``X-Dagster-Invocation-Id``, Pipes extra ``invocation_id``): a retry of work that
            was done must do nothing. Off by default.
        deadline: seconds that bound the whole call: ID tokens, connecting, every
            attempt's wait, the backoffs, and the checks and cancel markers between attempts
            (an attempt's wait is cut short to fit); ``None`` means the attempt timeout plus
            60 s.
    """

    timeout: float = 540.0
    connect_timeout: float = 10.0
    attempts: int = 4
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    retry_ambiguous: bool = False
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "initial_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"InvocationPolicy.{name} must be > 0")
        if self.attempts < 1:
            raise ValueError("InvocationPolicy.attempts must be >= 1")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError("InvocationPolicy.deadline must be > 0 (or None)")

    def allows(self, outcome: Outcome) -> bool:
        return outcome is Outcome.NOT_REACHED or self.retry_ambiguous


@dataclass(frozen=True)
class FunctionResponse:
    """A 2xx response of the function."""

    status: int
    body: Mapping[str, Any]
    elapsed_s: float
    attempts: int


class CloudFunctionError(Failure):
    """The function call failed; the description names the cause (remote error included).

    ``function_may_still_run`` is True when an attempt may still be working on the call (a
    read timeout, a connection lost after sending, a platform error that does not say
    whether the handler ran): the client then asks the function to cancel.

    ``remote_traceback`` is the function's traceback of a crash, shown after the description
    unless :meth:`traceback_shown_elsewhere` says the run's log has it already.
    """

    function_may_still_run: bool = False

    def __init__(
        self,
        description: str,
        metadata: Mapping[str, Any] | None = None,
        remote_traceback: str | None = None,
    ):
        self.summary = description
        self.remote_traceback = remote_traceback
        if remote_traceback:
            description += f"\n\nRemote traceback:\n{remote_traceback}"
        super().__init__(description=description, metadata=metadata)

    def traceback_shown_elsewhere(self, where: str) -> None:
        """Leave the remote traceback out and point to ``where`` the run shows it (once)."""
        if self.remote_traceback:
            self.description = f"{self.summary}\n(remote traceback: {where})"
            self.args = (self.description,)


def _may_still_run(error: CloudFunctionError, may: bool = True) -> CloudFunctionError:
    error.function_may_still_run = may
    return error


@dataclass(frozen=True)
class AbandonedAttempt:
    """Why an attempt was given up for a retry, and whether it may have reached the function
    (only then can a copy of the call still be working on it)."""

    reason: str
    may_have_run: bool


# Whether attempt ``n``'s handler left evidence that it ran (e.g. its Pipes messages).
HandlerStarted = Callable[[int], bool]


class _FailedAttempt(Exception):
    """An attempt that may be retried, depending on its outcome and the policy."""

    def __init__(self, outcome: Outcome, reason: str, response: requests.Response | None = None):
        super().__init__(reason)
        self.outcome, self.reason, self.response = outcome, reason, response
        self.refused_locally = False  # see _backoff

    def rechecked(
        self, attempt: int, handler_started: HandlerStarted | None, seconds_left: float
    ) -> _FailedAttempt:
        """This failure, ambiguous after all when the platform refused an attempt (429/503)
        whose handler nonetheless left evidence that it ran, or when the deadline leaves no
        time to look for that evidence."""
        refusal = self.outcome is Outcome.NOT_REACHED and self.response is not None
        if not refusal or handler_started is None:
            return self
        try:
            if not call_within(seconds_left, lambda: handler_started(attempt)):
                return self
            reason = f"{self.reason} after the handler had started (its Pipes messages exist)"
        except TimedOut:
            reason = (
                f"{self.reason}; whether its handler had started is unknown (the call's "
                "deadline passed before its Pipes messages could be checked)"
            )
        return _FailedAttempt(Outcome.AMBIGUOUS, reason, self.response)


class _DeadlinePassed(Exception):
    """The call's overall deadline passed before an attempt could be sent."""


class _Unanswered(Exception):
    """An attempt was sent and got no answer in time: the function may still be working."""

    def __init__(self, waited: float, attempt_timeout: float):
        super().__init__(f"no answer within {waited:g}s")
        self.waited = waited
        self.cut_by_deadline = waited < attempt_timeout


def _json_body(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def classify_response(response: requests.Response) -> Outcome | None:
    """How a non-2xx response may be retried; None: final (a 2xx, 4xx or the handler's own
    structured error: retrying would redo the work)."""
    body = _json_body(response) or {}
    if response.ok or (body.get("status") == "error" and isinstance(body.get("error"), dict)):
        return None
    if response.status_code in (429, 503):  # the platform refused it before any instance ran it
        return Outcome.NOT_REACHED
    if response.status_code in (500, 502, 504):  # the platform lost an answer: did it run?
        return Outcome.AMBIGUOUS
    return None


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when ``kind`` is anywhere in the chain of wrapped errors (requests -> urllib3)."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend([*current.args, getattr(current, "reason", None)])
        pending.extend([current.__cause__, current.__context__])
    return False


def classify_exception(exc: requests.RequestException) -> Outcome | None:
    """How a transport error may be retried; None: not retried (e.g. a read timeout: the
    function may still be working)."""
    if isinstance(exc, requests.ConnectTimeout):
        return Outcome.NOT_REACHED
    if isinstance(exc, requests.ConnectionError):
        # Refused / unresolvable: no connection, so no request. Anything else (reset,
        # aborted, closed without response) happened after the request was sent.
        return Outcome.NOT_REACHED if _caused_by(exc, NewConnectionError) else Outcome.AMBIGUOUS
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Outcome.AMBIGUOUS  # the response was cut off: the handler did answer something
    return None


def _response_error(
    url: str, response: requests.Response, before: str = "", after: str = ""
) -> CloudFunctionError:
    """The Failure of a non-2xx ``response``, its description framed by ``before``/``after``.

    A remote traceback is kept out of the metadata: it is shown once, after the description
    (or only in the run's Pipes ``closed`` event, see ``traceback_shown_elsewhere``).
    """
    body = _json_body(response)
    error = body.get("error") if body else None
    metadata: dict[str, Any] = {
        "function_url": MetadataValue.url(url),
        "http_status": response.status_code,
    }
    remote_traceback = None
    if isinstance(error, dict):
        kind, message = error.get("type", "Error"), str(error.get("message", ""))
        where = f" (field: {error['field']})" if error.get("field") else ""
        if error.get("traceback"):
            remote_traceback = str(error["traceback"])
            message = message.splitlines()[0] if message else message  # in full in the traceback
        details = f"Cloud Function returned HTTP {response.status_code}: {kind}: {message}{where}"
        shown = {k: v for k, v in error.items() if k != "traceback"}
        metadata["response"] = MetadataValue.json({**(body or {}), "error": shown})
    else:
        text = response.text[:2000]
        details = f"Cloud Function returned HTTP {response.status_code}: {text}"
        metadata["response"] = MetadataValue.text(text)
    return CloudFunctionError(
        description=f"{before}{details}{after}",
        metadata=metadata,
        remote_traceback=remote_traceback,
    )


class CloudFunctionInvoker:
    """How the client calls a function: its :class:`InvocationPolicy` (timeouts, retries),
    ID tokens and HTTP session; :meth:`start` begins one call."""

    def __init__(
        self,
        policy: InvocationPolicy | None = None,
        auth: IdTokenAuth | None = None,
        session: requests.Session | None = None,
    ):
        self.policy = policy or InvocationPolicy()
        self.auth = auth or IdTokenAuth()
        self.session = session or requests.Session()

    def start(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> Call:
        """A call to ``url`` whose attempts the caller drives (see :class:`Call`);
        ``timeout`` overrides the policy's per-attempt timeout."""
        return Call(self, url, headers or {}, timeout or self.policy.timeout)


class Call:
    """One call's HTTP attempts, driven by the caller::

        call = invoker.start(url)
        for attempt in call.attempts():  # retries and backoff within the call's deadline
            with attempt:
                call.post(body_of(call.number, call.abandoned))
        response = call.result()

    :meth:`attempts` raises :class:`CloudFunctionError` when an attempt failed for good or
    the retries are used up; an interrupt raised in an attempt goes on unchanged.
    """

    def __init__(
        self,
        invoker: CloudFunctionInvoker,
        url: str,
        headers: Mapping[str, str],
        attempt_timeout: float,
    ):
        self.invoker, self.url, self.headers = invoker, url, headers
        self.policy = invoker.policy
        self.attempt_timeout = attempt_timeout
        deadline = self.policy.deadline
        self.deadline_s = (
            attempt_timeout + DEFAULT_RETRY_ALLOWANCE_S if deadline is None else deadline
        )
        self.started = time.monotonic()
        self.number = 0  # the attempt being made, from 1
        self.abandoned: AbandonedAttempt | None = None  # why the previous attempt was given up
        self._ambiguous = False  # an abandoned attempt may still be running
        self._response: requests.Response | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left of the call's overall deadline."""
        return max(0.0, self.deadline_s - self.elapsed())

    def attempts(self) -> Iterator[AttemptManager]:
        policy, url = self.policy, self.url
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(self.deadline_s),
            wait=_backoff(policy),
            retry=retry_if_exception(
                lambda exc: isinstance(exc, _FailedAttempt) and policy.allows(exc.outcome)
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                self.number += 1
                yield attempt
        except _FailedAttempt as failed:
            # The description quotes the transport error: chaining it would print it twice.
            raise _may_still_run(self._failure(failed), self._ambiguous) from None
        except _DeadlinePassed as passed:
            description = (
                f"the call to the Cloud Function at {url} ran out of time: its deadline of "
                f"{self.deadline_s:g}s passed {passed} (attempt {self.number}, "
                f"{self.elapsed():.1f}s after the call began)"
            )
            raise _may_still_run(CloudFunctionError(description), self._ambiguous) from None
        except _Unanswered as unanswered:
            description = f"Cloud Function at {url} did not answer within {unanswered.waited:g}s"
            if unanswered.cut_by_deadline:
                description = (
                    f"Cloud Function at {url} did not answer before the call's deadline of "
                    f"{self.deadline_s:g}s ({unanswered.waited:.1f}s of it were left for the "
                    "last attempt); it may still be working"
                )
            raise _may_still_run(CloudFunctionError(description)) from unanswered.__cause__
        except requests.RequestException as exc:
            description = f"calling the Cloud Function at {url} failed: {type(exc).__name__}: {exc}"
            raise _may_still_run(CloudFunctionError(description), self._ambiguous) from None

    def post(
        self, payload: Mapping[str, Any], handler_started: HandlerStarted | None = None
    ) -> None:
        """Send attempt :attr:`number`; a failure raised here is judged by :meth:`attempts`."""
        try:
            self._response = self._send(json.dumps(payload))
        except _FailedAttempt as refused:
            failed = refused.rechecked(self.number, handler_started, self.remaining())
            self.abandoned = AbandonedAttempt(failed.reason, failed.outcome is Outcome.AMBIGUOUS)
            self._ambiguous = self._ambiguous or self.abandoned.may_have_run
            if failed is refused:
                raise
            raise failed from refused

    def result(self) -> FunctionResponse:
        """The answer of the last attempt; raises for a non-2xx final answer."""
        response = self._response
        assert response is not None, "result() before an attempt answered"
        if not response.ok:  # this attempt's final answer; an ambiguous earlier one may run on
            raise _may_still_run(_response_error(self.url, response), self._ambiguous)
        return FunctionResponse(
            status=response.status_code,
            body=_json_body(response) or {},
            elapsed_s=self.elapsed(),
            attempts=self.number,
        )

    def _send(self, data: str) -> requests.Response:
        """One attempt, within what is left of the deadline: the token, connecting, the answer."""
        url = self.url
        auth_headers = self._auth_headers()
        wait = min(self.attempt_timeout, self.remaining())
        if wait <= 0:
            raise _DeadlinePassed("before the attempt could be sent")
        try:
            response = self.invoker.session.post(
                url,
                data=data,
                headers={
                    "Content-Type": "application/json",
                    # A fresh connection per attempt: a pooled keep-alive connection that the
                    # server closed while idle fails only once the request is written, which
                    # would look like an ambiguous "reset after sending".
                    "Connection": "close",
                    **auth_headers,
                    **self.headers,
                },
                timeout=(min(self.policy.connect_timeout, wait), wait),
            )
        except requests.ReadTimeout as exc:
            raise _Unanswered(wait, self.attempt_timeout) from exc
        except requests.RequestException as exc:
            outcome = classify_exception(exc)
            if outcome is None:
                raise
            failed = _FailedAttempt(outcome, _describe_exception(url, exc))
            failed.refused_locally = is_loopback(url) and _caused_by(exc, ConnectionRefusedError)
            raise failed from exc
        if (outcome := classify_response(response)) is not None:
            # The platform's own errors and a function that crashed outside Pipes look alike.
            what = "without an answer from the handler"
            if _json_body(response) is not None:
                what = "with a JSON body that is not the handler's error"
            reason = f"HTTP {response.status_code} {what}"
            raise _FailedAttempt(outcome, reason, response=response)
        return response

    def _auth_headers(self) -> dict[str, str]:
        """The ID token header; a token that google-auth could not get is an attempt that
        never reached the function (retried if google-auth says the error is transient)."""
        try:
            return self.invoker.auth.headers_for(self.url, timeout=self.remaining())
        except TokenTimeout as exc:
            raise _DeadlinePassed(f"while waiting for an ID token ({exc})") from exc
        except google.auth.exceptions.TransportError as exc:
            reason = f"no ID token: google-auth could not reach its token service ({exc})"
            raise _FailedAttempt(Outcome.NOT_REACHED, reason) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            if isinstance(exc, google.auth.exceptions.RefreshError) and exc.retryable:
                reason = f"no ID token: google-auth's refresh failed transiently ({exc})"
                raise _FailedAttempt(Outcome.NOT_REACHED, reason) from exc
            cause = (
                missing_credentials_hint(exc)
                + " ID tokens come from a service account: with a user's credentials, set "
                "IdTokenAuth(impersonate_service_account=...)."
                if isinstance(exc, google.auth.exceptions.DefaultCredentialsError)
                else f"{type(exc).__name__}: {exc}"
            )
            raise CloudFunctionError(
                description=f"no ID token to call the Cloud Function at {self.url}, so it was "
                f"not called: {cause}"
            ) from None

    def _failure(self, failed: _FailedAttempt) -> CloudFunctionError:
        url, attempts = self.url, self.number
        if not self.policy.allows(failed.outcome):
            description = (
                f"ambiguous outcome calling the Cloud Function at {url} (attempt {attempts}): "
                f"{failed.reason}. The function may have run, so the call was not retried. If "
                "the function is idempotent on the invocation id (X-Dagster-Invocation-Id), "
                "allow such retries with InvocationPolicy(retry_ambiguous=True)."
            )
            if failed.response is not None:
                return _response_error(url, failed.response, before=f"{description}\n\n")
            return CloudFunctionError(description, {"function_url": MetadataValue.url(url)})
        gave_up = f"gave up after {attempts} attempt(s) in {self.elapsed():.1f}s"
        if self.remaining() <= 0 or attempts < self.policy.attempts:
            gave_up += f" (deadline {self.deadline_s:g}s)"
        if failed.response is not None:
            return _response_error(url, failed.response, after=f"\n({gave_up})")
        return CloudFunctionError(
            f"could not reach the Cloud Function at {url} after {attempts} attempt(s): "
            f"{failed.reason} ({gave_up})"
        )


def _backoff(policy: InvocationPolicy) -> Callable[[RetryCallState], float]:
    """The policy's exponential backoff, cut short after a loopback refusal: a local function
    that is not running stays down, a restarting one is back within a moment."""
    exponential = wait_exponential_jitter(
        multiplier=policy.initial_backoff, max=policy.max_backoff, jitter=policy.initial_backoff
    )

    def wait(state: RetryCallState) -> float:
        failed = state.outcome.exception() if state.outcome else None
        if isinstance(failed, _FailedAttempt) and failed.refused_locally:
            return min(exponential(state), LOCAL_REFUSED_BACKOFF_S)
        return exponential(state)

    return wait


def _describe_exception(url: str, exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return f"connect timeout ({exc})"
    if is_loopback(url) and _caused_by(exc, ConnectionRefusedError):
        where = urlsplit(url).netloc
        return f"connection refused: nothing listens on {where}; is the local function running?"
    if _caused_by(exc, NewConnectionError):
        return f"connection refused or host unreachable ({exc})"
    return f"connection lost after the request was sent ({type(exc).__name__}: {exc})"
