"""Calling the Cloud Function over HTTP: ID tokens, timeouts, retries and the error texts.
Retried by default: what never reached the handler; with ``retry_ambiguous``, also what may
have run (500/502/504, a lost answer, a 429/503 after the attempt wrote Pipes messages)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import requests
import tenacity
from dagster import Failure, MetadataValue
from urllib3.exceptions import NewConnectionError

from dagster_pipes_gcf.auth import IdTokenAuth, TokenTimeout, is_loopback, missing_credentials_hint
from dagster_pipes_gcf.bounded import TimedOut, call_within

DEFAULT_RETRY_ALLOWANCE_S = 60.0  # the default deadline: one attempt's timeout plus this
LOCAL_REFUSED_BACKOFF_S = 0.2  # the longest backoff after a refusal on a loopback URL
HandlerStarted = Callable[[int], bool]  # whether attempt n's handler wrote Pipes messages


@dataclass(frozen=True)
class InvocationPolicy:
    """Timeouts and retries of the HTTP call.

    Attributes:
        timeout: seconds to wait for the answer; match the function's own limit. Never
            retried once it expires: the function may still be working.
        connect_timeout: seconds to establish the connection.
        attempts: total attempts for outcomes that are retried.
        initial_backoff: first backoff in seconds (exponential, with jitter).
        max_backoff: upper bound of one backoff.
        retry_ambiguous: also retry outcomes where the handler may have run (500/502/504, a
            connection lost after sending); only for functions idempotent on the invocation id.
        deadline: seconds bounding the whole call (tokens, attempts, backoffs); ``None``:
            ``timeout`` plus 60 s.
    """

    timeout: float = 540.0
    connect_timeout: float = 10.0
    attempts: int = 4
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    retry_ambiguous: bool = False
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "initial_backoff", "max_backoff", "deadline"):
            if (name != "deadline" or self.deadline is not None) and not getattr(self, name) > 0:
                raise ValueError(f"InvocationPolicy.{name} must be > 0")
        if self.attempts < 1:
            raise ValueError("InvocationPolicy.attempts must be >= 1")


@dataclass(frozen=True)
class FunctionResponse:
    """A 2xx response of the function."""

    status: int
    body: Mapping[str, Any]
    elapsed_s: float
    attempts: int


class CloudFunctionError(Failure):
    """The function call failed; the description names the cause, the remote error included.

    ``function_may_still_run``: an attempt may still be working on the call (the client then
    asks the function to cancel). ``remote_traceback``: the function's traceback of a crash.
    """

    function_may_still_run: bool = False

    def __init__(
        self,
        description: str,
        metadata: Mapping[str, Any] | None = None,
        remote_traceback: str | None = None,
    ):
        self.summary, self.remote_traceback = description, remote_traceback
        if remote_traceback:
            description += f"\n\nRemote traceback:\n{remote_traceback}"
        super().__init__(description=description, metadata=metadata)

    def traceback_shown_elsewhere(self, where: str) -> None:
        """Leave the remote traceback out and point to ``where`` the run shows it."""
        if self.remote_traceback:
            self.description = f"{self.summary}\n(remote traceback: {where})"
            self.args = (self.description,)


@dataclass(eq=False)
class FailedAttempt(Exception):
    """An attempt without the handler's answer: retried if the policy allows."""

    reason: str
    may_have_run: bool
    response: requests.Response | None = None
    refused_locally: bool = False


def _json_body(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is in the chain of wrapped errors (requests -> urllib3 -> socket)."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseException) and id(current) not in seen:
            if isinstance(current, kind):
                return True
            seen.add(id(current))
            pending += [*current.args, getattr(current, "reason", None)]
            pending += [current.__cause__, current.__context__]
    return False


def _answer(response: requests.Response) -> tuple[str, str | None, MetadataValue]:
    """What a non-2xx answer says, its remote traceback (kept out of the metadata: it is
    shown once), and its metadata."""
    body = _json_body(response) or {}
    error, status = body.get("error"), f"Cloud Function returned HTTP {response.status_code}"
    if not isinstance(error, dict):
        text = response.text[:2000]
        return f"{status}: {text}", None, MetadataValue.text(text)
    message, traceback = str(error.get("message", "")), error.get("traceback")
    if traceback:  # the message is in full in the traceback
        message = "".join(message.splitlines()[:1])
    where = f" (field: {error['field']})" if error.get("field") else ""
    shown = {**body, "error": {k: v for k, v in error.items() if k != "traceback"}}
    details = f"{status}: {error.get('type', 'Error')}: {message}{where}"
    return details, str(traceback) if traceback else None, MetadataValue.json(shown)


class CloudFunctionInvoker:
    """How the client calls a function: policy, ID tokens and HTTP session."""

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
        """A call to ``url``; ``timeout`` overrides the policy's per-attempt timeout."""
        return Call(self, url, headers or {}, timeout or self.policy.timeout)


class Call:
    """One call's HTTP attempts, driven by the caller::

        call = invoker.start(url)
        for attempt in call.attempts():  # retries and backoff within the call's deadline
            with attempt:
                call.post(body_of(call.number, call.abandoned))
        response = call.result()

    A failed call raises :class:`CloudFunctionError`; an interrupt goes on unchanged."""

    def __init__(
        self,
        invoker: CloudFunctionInvoker,
        url: str,
        headers: Mapping[str, str],
        attempt_timeout: float,
    ):
        self.invoker, self.url, self.headers = invoker, url, headers
        self.policy, self.attempt_timeout = invoker.policy, attempt_timeout
        deadline = self.policy.deadline
        self.deadline_s = (
            attempt_timeout + DEFAULT_RETRY_ALLOWANCE_S if deadline is None else deadline
        )
        self.started = time.monotonic()
        self.number = 0  # the attempt being made, from 1
        self.abandoned: FailedAttempt | None = None  # why the previous attempt failed
        self._ambiguous = False  # a failed attempt may still be running
        self._response: requests.Response | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left of the call's deadline."""
        return max(0.0, self.deadline_s - self.elapsed())

    def attempts(self) -> Iterator[tenacity.AttemptManager]:
        policy = self.policy
        backoff = tenacity.wait_exponential_jitter(
            multiplier=policy.initial_backoff, max=policy.max_backoff, jitter=policy.initial_backoff
        )

        def wait(state: tenacity.RetryCallState) -> float:
            # A local function that is not running stays down; one restarting is soon back.
            local = self.abandoned is not None and self.abandoned.refused_locally
            return min(backoff(state), LOCAL_REFUSED_BACKOFF_S) if local else backoff(state)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts)
            | tenacity.stop_before_delay(self.deadline_s),
            wait=wait,
            retry=tenacity.retry_if_exception_type(FailedAttempt),
            reraise=True,
        )
        try:
            for attempt in retrying:
                self.number += 1
                yield attempt
        except FailedAttempt as failed:
            # The description quotes the transport error: chaining it would print it twice.
            raise self._failure(failed) from None

    def post(
        self, payload: Mapping[str, Any], handler_started: HandlerStarted | None = None
    ) -> None:
        """Send attempt :attr:`number`; a failure raised here is judged by :meth:`attempts`."""
        try:
            self._response = self._send(json.dumps(payload), handler_started)
        except FailedAttempt as failed:
            self.abandoned = failed
            self._ambiguous = self._ambiguous or failed.may_have_run
            if failed.may_have_run and not self.policy.retry_ambiguous:
                raise self._failure(failed) from None
            raise

    def result(self) -> FunctionResponse:
        """The last attempt's answer; raises for a non-2xx one."""
        response = self._response
        assert response is not None, "result() before an attempt answered"
        if not response.ok:
            raise self._error("", response)
        body = _json_body(response) or {}
        return FunctionResponse(response.status_code, body, self.elapsed(), self.number)

    def _send(self, data: str, handler_started: HandlerStarted | None) -> requests.Response:
        auth_headers = self._auth_headers()
        wait = min(self.attempt_timeout, self.remaining())
        if wait <= 0:
            raise self._out_of_time("before the attempt could be sent")
        # A fresh connection per attempt: a pooled one that the server closed while idle
        # fails only once the request is written, which would look like a lost answer.
        headers = {"Content-Type": "application/json", "Connection": "close"}
        try:
            response = self.invoker.session.post(
                self.url,
                data=data,
                headers={**headers, **auth_headers, **self.headers},
                timeout=(min(self.policy.connect_timeout, wait), wait),
            )
        except requests.ReadTimeout as exc:
            text = f"Cloud Function at {self.url} did not answer within {wait:g}s"
            if wait < self.attempt_timeout:
                text = (
                    f"Cloud Function at {self.url} did not answer before the call's deadline of "
                    f"{self.deadline_s:g}s ({wait:.1f}s of it were left for the last attempt); "
                    "it may still be working"
                )
            self._ambiguous = True  # this attempt may still be working
            raise self._error(text) from exc
        except requests.RequestException as exc:
            raise self._transport_failure(exc) from None
        body, status = _json_body(response) or {}, response.status_code
        handler_error = body.get("status") == "error" and isinstance(body.get("error"), dict)
        if response.ok or handler_error or status not in (429, 500, 502, 503, 504):
            return response  # final: retrying would redo whatever the function did
        # The platform's own errors and a function that crashed outside Pipes look alike.
        what = "without an answer from the handler"
        if _json_body(response) is not None:
            what = "with a JSON body that is not the handler's error"
        failed = FailedAttempt(f"HTTP {status} {what}", status not in (429, 503), response)
        if not failed.may_have_run and handler_started is not None:
            self._recheck(failed, handler_started)
        raise failed

    def _recheck(self, refusal: FailedAttempt, handler_started: HandlerStarted) -> None:
        """A 429/503 is ambiguous if the handler left messages, or no time is left to look."""
        try:
            if not call_within(self.remaining(), lambda: handler_started(self.number)):
                return
            refusal.reason += " after the handler had started (its Pipes messages exist)"
        except TimedOut:
            refusal.reason += (
                "; whether its handler had started is unknown (the call's deadline passed "
                "before its Pipes messages could be checked)"
            )
        refusal.may_have_run = True

    def _auth_headers(self) -> dict[str, str]:
        """The ID token header; no token is an attempt that never reached the function."""
        try:
            return self.invoker.auth.headers_for(self.url, timeout=self.remaining())
        except google.auth.exceptions.GoogleAuthError as exc:
            if isinstance(exc, TokenTimeout):
                raise self._out_of_time(f"while waiting for an ID token ({exc})") from None
            if isinstance(exc, google.auth.exceptions.TransportError) or exc.retryable:
                reason = f"no ID token: google-auth failed transiently ({exc})"
                raise FailedAttempt(reason, may_have_run=False) from None
            cause = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
                cause = missing_credentials_hint(exc) + (
                    " ID tokens come from a service account: with a user's credentials, set "
                    "IdTokenAuth(impersonate_service_account=...)."
                )
            what = f"no ID token to call the Cloud Function at {self.url}, so it was not called"
            raise self._error(f"{what}: {cause}") from None

    def _transport_failure(self, exc: requests.RequestException) -> Exception:
        if isinstance(exc, requests.ConnectTimeout):
            return FailedAttempt(f"connect timeout ({exc})", may_have_run=False)
        if isinstance(exc, requests.ConnectionError) and _caused_by(exc, NewConnectionError):
            if is_loopback(self.url) and _caused_by(exc, ConnectionRefusedError):
                where = f"nothing listens on {urlsplit(self.url).netloc}"
                reason = f"connection refused: {where}; is the local function running?"
                return FailedAttempt(reason, may_have_run=False, refused_locally=True)
            return FailedAttempt(f"connection refused or host unreachable ({exc})", False)
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return FailedAttempt(f"connection lost after the request was sent ({what})", True)
        return self._error(f"calling the Cloud Function at {self.url} failed: {what}")

    def _out_of_time(self, when: str) -> CloudFunctionError:
        return self._error(
            f"the call to the Cloud Function at {self.url} ran out of time: its deadline of "
            f"{self.deadline_s:g}s passed {when} (attempt {self.number}, "
            f"{self.elapsed():.1f}s after the call began)"
        )

    def _failure(self, failed: FailedAttempt) -> CloudFunctionError:
        url, attempts, answer = self.url, self.number, failed.response
        if failed.may_have_run and not self.policy.retry_ambiguous:
            ambiguous = (
                f"ambiguous outcome calling the Cloud Function at {url} (attempt {attempts}): "
                f"{failed.reason}. The function may have run, so the call was not retried. If "
                "the function is idempotent on the invocation id (X-Dagster-Invocation-Id), "
                "allow such retries with InvocationPolicy(retry_ambiguous=True)."
            )
            return self._error(ambiguous + ("\n\n" if answer is not None else ""), answer)
        gave_up = f"gave up after {attempts} attempt(s) in {self.elapsed():.1f}s"
        if self.remaining() <= 0 or attempts < self.policy.attempts:
            gave_up += f" (deadline {self.deadline_s:g}s)"
        if answer is not None:
            return self._error("", answer, after=f"\n({gave_up})")
        return self._error(
            f"could not reach the Cloud Function at {url} after {attempts} attempt(s): "
            f"{failed.reason} ({gave_up})"
        )

    def _error(
        self,
        description: str,
        response: requests.Response | None = None,
        after: str = "",
    ) -> CloudFunctionError:
        """``description``, what ``response`` said, ``after``."""
        metadata: dict[str, Any] = {"function_url": MetadataValue.url(self.url)}
        remote_traceback = None
        if response is not None:
            details, remote_traceback, metadata["response"] = _answer(response)
            metadata["http_status"] = response.status_code
            description += details + after
        error = CloudFunctionError(description, metadata, remote_traceback)
        error.function_may_still_run = self._ambiguous
        return error
