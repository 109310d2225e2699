"""Calling the Cloud Function over HTTP: auth, timeouts, retries and error reporting."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from dagster import Failure, MetadataValue
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dagster_pipes_gcf.auth import IdTokenAuth

# Statuses worth another attempt when they come from the platform (not from our handler).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class InvocationPolicy:
    """Timeouts and retries of the HTTP call.

    Attributes:
        timeout: seconds to wait for the function's response; match the function's own
            limit (Terraform's ``function_timeout_seconds``).
        connect_timeout: seconds to establish the connection.
        attempts: total attempts for connection errors, 429 and platform 5xx responses.
        initial_backoff: first backoff in seconds (exponential, with jitter).
        max_backoff: upper bound of one backoff.
    """

    timeout: float = 540.0
    connect_timeout: float = 10.0
    attempts: int = 4
    initial_backoff: float = 1.0
    max_backoff: float = 30.0


@dataclass(frozen=True)
class FunctionResponse:
    """A 2xx response of the function."""

    status: int
    body: Mapping[str, Any]
    elapsed_s: float
    attempts: int


class CloudFunctionError(Failure):
    """The function call failed; the description names the cause (remote error included)."""


class _RetryableResponse(Exception):
    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _json_body(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _is_handler_error(response: requests.Response) -> bool:
    """True when the body is our handler's structured error: retrying would redo the work."""
    body = _json_body(response)
    return bool(body and body.get("status") == "error" and isinstance(body.get("error"), dict))


def _should_retry(exc: BaseException) -> bool:
    if isinstance(exc, _RetryableResponse):
        return True
    # A read timeout means the function may still be working: never retried.
    return isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout)


def describe_error_response(url: str, response: requests.Response) -> CloudFunctionError:
    """Turn a non-2xx response into a Failure that names the status and the remote error."""
    body = _json_body(response)
    error = body.get("error") if body else None
    metadata: dict[str, Any] = {
        "function_url": MetadataValue.url(url),
        "http_status": response.status_code,
    }
    if isinstance(error, dict):
        kind, message = error.get("type", "Error"), error.get("message", "")
        where = f" (field: {error['field']})" if error.get("field") else ""
        description = (
            f"Cloud Function returned HTTP {response.status_code}: {kind}: {message}{where}"
        )
        if error.get("traceback"):
            description += f"\n\nRemote traceback:\n{error['traceback']}"
            metadata["remote_traceback"] = MetadataValue.text(str(error["traceback"]))
        metadata["response"] = MetadataValue.json(dict(body or {}))
    else:
        text = response.text[:2000]
        description = f"Cloud Function returned HTTP {response.status_code}: {text}"
        metadata["response"] = MetadataValue.text(text)
    return CloudFunctionError(description=description, metadata=metadata)


class CloudFunctionInvoker:
    """POSTs a JSON payload to a function URL with an ID token, timeouts and retries."""

    def __init__(
        self,
        policy: InvocationPolicy | None = None,
        auth: IdTokenAuth | None = None,
        session: requests.Session | None = None,
    ):
        self.policy = policy or InvocationPolicy()
        self.auth = auth or IdTokenAuth()
        self.session = session or requests.Session()

    def invoke(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> FunctionResponse:
        """Call the function; return its 2xx response or raise :class:`CloudFunctionError`."""
        policy = self.policy
        data = json.dumps(payload)
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential_jitter(multiplier=policy.initial_backoff, max=policy.max_backoff),
            retry=retry_if_exception(_should_retry),
            reraise=True,
        )
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    response = self._post(url, data, headers, timeout or policy.timeout)
        except _RetryableResponse as exc:
            raise describe_error_response(url, exc.response) from None
        except requests.Timeout as exc:
            raise CloudFunctionError(
                description=f"Cloud Function at {url} did not answer within "
                f"{timeout or policy.timeout:g}s ({type(exc).__name__}: {exc})"
            ) from exc
        except requests.RequestException as exc:
            raise CloudFunctionError(
                description=f"could not reach the Cloud Function at {url} after {attempts} "
                f"attempt(s): {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            # Run terminated mid-call: drop the connection now instead of leaving it open.
            self.session.close()
            raise
        if not response.ok:
            raise describe_error_response(url, response)
        return FunctionResponse(
            status=response.status_code,
            body=_json_body(response) or {},
            elapsed_s=time.monotonic() - started,
            attempts=attempts,
        )

    def _post(
        self, url: str, data: str, headers: Mapping[str, str] | None, timeout: float
    ) -> requests.Response:
        response = self.session.post(
            url,
            data=data,
            headers={
                "Content-Type": "application/json",
                **self.auth.headers_for(url),
                **(headers or {}),
            },
            timeout=(self.policy.connect_timeout, timeout),
        )
        if response.status_code in RETRYABLE_STATUSES and not _is_handler_error(response):
            raise _RetryableResponse(response)
        return response
