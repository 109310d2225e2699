"""The HTTP invocation against a scripted server on 127.0.0.1: retries, errors, headers."""

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import google.auth.credentials
import google.auth.exceptions
import pytest
import requests
from dagster_pipes import DAGSTER_PIPES_MESSAGES_ENV_VAR
from urllib3.exceptions import NewConnectionError, ProtocolError

from dagster_pipes_gcf import (
    CloudFunctionError,
    CloudFunctionInvoker,
    FunctionResponse,
    IdTokenAuth,
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesSharedLocationReader,
)
from dagster_pipes_gcf.invocation import HandlerStarted
from devstack.net import free_port

FAST = InvocationPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05, timeout=5)
AMBIGUOUS_OK = InvocationPolicy(
    attempts=3, initial_backoff=0.01, max_backoff=0.05, timeout=5, retry_ambiguous=True
)
DROP = object()  # scripted "answer": close the connection without a response
SLOW = object()  # scripted "answer": none for 2 s, then close
HANDLER_ERROR = {
    "status": "error",
    "error": {"type": "ValueError", "message": "bad", "traceback": "TB"},
}


class ScriptedServer:
    """Answers each POST with the next scripted (status, body) and records the requests."""

    def __init__(self, script: list[tuple[int, Any]]):
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append(
                    {"headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
                )
                status, body = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                if body is DROP or body is SLOW:
                    time.sleep(2 if body is SLOW else 0)
                    self.close_connection = True
                    return
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ScriptedServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def invoke(
    invoker: CloudFunctionInvoker,
    url: str,
    payload: Mapping[str, Any],
    handler_started: HandlerStarted | None = None,
    **start: Any,
) -> FunctionResponse:
    """One call whose every attempt sends ``payload``, driven as the client drives it."""
    call = invoker.start(url, **start)
    for attempt in call.attempts():
        with attempt:
            call.post(payload, handler_started)
    return call.result()


@pytest.fixture
def invoker() -> Iterator[CloudFunctionInvoker]:
    yield CloudFunctionInvoker(policy=FAST)


def test_success_returns_the_json_body_and_sends_headers(invoker: CloudFunctionInvoker) -> None:
    with ScriptedServer([(200, {"status": "ok", "duration_s": 0.1})]) as server:
        response = invoke(invoker, server.url, {"x": 1}, headers={"X-Dagster-Invocation-Id": "abc"})
    assert response.status == 200 and response.body["duration_s"] == 0.1 and response.attempts == 1
    (request,) = server.requests
    assert request["body"] == {"x": 1}
    assert request["headers"]["X-Dagster-Invocation-Id"] == "abc"
    assert "Authorization" not in request["headers"]  # local URL: no ID token


@pytest.mark.parametrize("status", [429, 503])
def test_platform_refusals_are_retried_by_default(
    invoker: CloudFunctionInvoker, status: int
) -> None:
    with ScriptedServer([(status, "<html>busy</html>"), (200, {"status": "ok"})]) as server:
        response = invoke(invoker, server.url, {})
    assert response.attempts == 2 and len(server.requests) == 2


@pytest.mark.parametrize("status", [429, 503])
def test_a_platform_refusal_after_the_handler_started_is_ambiguous(status: int) -> None:
    """Cloud Run answers a bare 503 also when an instance dies mid-request: once the
    attempt's handler left messages, the refusal no longer proves the work was not done."""
    asked: list[int] = []

    def handler_started(attempt: int) -> bool:
        asked.append(attempt)
        return True

    script = [(status, "<html>busy</html>"), (200, {"status": "ok"})]
    strict = CloudFunctionInvoker(policy=InvocationPolicy(attempts=3, initial_backoff=0.01))
    with ScriptedServer(script) as server, pytest.raises(CloudFunctionError) as error:
        invoke(strict, server.url, {}, handler_started=handler_started)
    assert len(server.requests) == 1 and asked == [1]
    description = str(error.value.description)
    assert "ambiguous outcome" in description and "after the handler had started" in description
    assert error.value.function_may_still_run

    opted_in = InvocationPolicy(attempts=3, initial_backoff=0.01, retry_ambiguous=True)
    with ScriptedServer(script) as server:
        response = invoke(
            CloudFunctionInvoker(policy=opted_in), server.url, {}, handler_started=handler_started
        )
    assert response.attempts == 2 and len(server.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_platform_errors_fail_naming_the_ambiguity_without_the_opt_in(
    invoker: CloudFunctionInvoker, status: int
) -> None:
    with (
        ScriptedServer([(status, "<html>oops</html>"), (200, {"status": "ok"})]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert len(server.requests) == 1, "the function may have run: not retried by default"
    description = str(error.value.description)
    assert "ambiguous outcome" in description and f"HTTP {status}" in description
    assert "retry_ambiguous=True" in description and "<html>oops</html>" in description
    assert error.value.function_may_still_run  # the client asks the function to cancel
    # A bare error page may come from the platform or from a function that crashed
    # outside Pipes: the client cannot tell, so it does not say.
    assert "without an answer from the handler" in description
    assert "platform" not in description


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_platform_errors_are_retried_with_the_opt_in(status: int) -> None:
    invoker = CloudFunctionInvoker(policy=AMBIGUOUS_OK)
    with ScriptedServer([(status, "<html>oops</html>"), (200, {"status": "ok"})]) as server:
        response = invoke(invoker, server.url, {})
    assert response.attempts == 2 and len(server.requests) == 2


def test_a_connection_dropped_after_sending_is_ambiguous(invoker: CloudFunctionInvoker) -> None:
    with (
        ScriptedServer([(200, DROP), (200, {"status": "ok"})]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert len(server.requests) == 1
    description = str(error.value.description)
    assert "ambiguous outcome" in description and "connection lost after the request" in description
    assert "retry_ambiguous=True" in description


def test_a_connection_dropped_after_sending_is_retried_with_the_opt_in() -> None:
    invoker = CloudFunctionInvoker(policy=AMBIGUOUS_OK)
    with ScriptedServer([(200, DROP), (200, {"status": "ok"})]) as server:
        response = invoke(invoker, server.url, {})
    assert response.attempts == 2 and len(server.requests) == 2


def test_a_refused_connection_is_retried_by_default(invoker: CloudFunctionInvoker) -> None:
    with pytest.raises(CloudFunctionError) as error:
        invoke(invoker, f"http://127.0.0.1:{free_port()}", {})
    description = str(error.value.description)
    assert "could not reach the Cloud Function" in description
    assert "after 3 attempt(s)" in description


class CountingSession(requests.Session):
    """Answers every POST with ``status`` (a platform page), or raises ``error``; counts them."""

    def __init__(self, error: Exception | None = None, status: int = 502) -> None:
        super().__init__()
        self.error, self.status, self.posts = error, status, 0

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.posts += 1
        if self.error is not None:
            raise self.error
        response = requests.Response()
        response.status_code, response._content = self.status, b"<html>platform page</html>"
        return response


REFUSED = requests.ConnectionError(NewConnectionError(None, "refused"))  # type: ignore[arg-type]
RESET = requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))


@pytest.mark.parametrize(
    ("error", "posts", "may_still_run"),
    [
        (requests.ConnectTimeout(), 3, False),  # never reached the function: retried
        (REFUSED, 3, False),
        (RESET, 1, True),  # may have reached it: not retried without the opt-in
        (requests.exceptions.ChunkedEncodingError(), 1, True),
        (requests.ReadTimeout(), 1, True),  # may still be working: never retried
    ],
)
def test_only_transport_errors_before_the_request_was_sent_are_retried(
    error: Exception, posts: int, may_still_run: bool
) -> None:
    session = CountingSession(error)
    with pytest.raises(CloudFunctionError) as raised:
        invoke(CloudFunctionInvoker(policy=FAST, session=session), "http://fn.invalid", {})
    assert session.posts == posts
    assert raised.value.function_may_still_run is may_still_run


def test_each_attempt_gets_its_own_payload_told_why_the_previous_one_was_abandoned(
    invoker: CloudFunctionInvoker,
) -> None:
    calls: list[tuple[int, tuple[str, bool] | None]] = []

    with ScriptedServer([(503, "busy"), (200, {"status": "ok"})]) as server:
        call = invoker.start(server.url)
        for attempt in call.attempts():
            with attempt:
                abandoned = call.abandoned
                calls.append(
                    (call.number, abandoned and (abandoned.reason, abandoned.may_have_run))
                )
                call.post({"attempt": call.number})
        assert call.result().attempts == 2
    assert calls == [
        (1, None),
        (2, ("HTTP 503 without an answer from the handler", False)),
    ]
    assert [request["body"] for request in server.requests] == [{"attempt": 1}, {"attempt": 2}]
    assert all(r["headers"]["Connection"] == "close" for r in server.requests)


def test_the_deadline_bounds_all_attempts_and_backoffs() -> None:
    policy = InvocationPolicy(attempts=100, initial_backoff=0.2, max_backoff=0.2, deadline=1.0)
    invoker = CloudFunctionInvoker(policy=policy)
    started = time.monotonic()
    with ScriptedServer([(503, "busy")]) as server, pytest.raises(CloudFunctionError) as error:
        invoke(invoker, server.url, {})
    assert time.monotonic() - started < 2.5
    assert 2 <= len(server.requests) < 10
    assert "deadline 1s" in str(error.value.description)


@pytest.mark.parametrize(
    "field", [{"attempts": 0}, {"timeout": 0}, {"deadline": -1}, {"initial_backoff": 0}]
)
def test_the_policy_validates_itself(field: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        InvocationPolicy(**field)  # type: ignore[arg-type]


def test_retries_stop_after_the_configured_attempts(invoker: CloudFunctionInvoker) -> None:
    with (
        ScriptedServer([(503, "unavailable")]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert len(server.requests) == 3
    assert "HTTP 503" in str(error.value.description) and "unavailable" in str(
        error.value.description
    )


def test_a_handler_error_is_not_retried_and_names_the_remote_exception(
    invoker: CloudFunctionInvoker,
) -> None:
    with (
        ScriptedServer([(500, HANDLER_ERROR)]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert len(server.requests) == 1, "the function ran; retrying would run it again"
    description = str(error.value.description)
    assert "HTTP 500: ValueError: bad" in description and "Remote traceback:\nTB" in description
    assert description.count("TB") == 1, "the remote traceback is shown once"
    assert "TB" not in json.dumps(error.value.metadata["response"].value)


def test_a_client_error_names_status_field_and_is_not_retried(
    invoker: CloudFunctionInvoker,
) -> None:
    body = {
        "status": "error",
        "error": {"type": "RequestError", "message": "bad", "field": "num_rows"},
    }
    with ScriptedServer([(400, body)]) as server, pytest.raises(CloudFunctionError) as error:
        invoke(invoker, server.url, {})
    assert len(server.requests) == 1
    assert "HTTP 400: RequestError: bad (field: num_rows)" in str(error.value.description)


def test_deployed_urls_get_an_id_token_for_the_base_url() -> None:
    class FixedTokens(IdTokenAuth):
        def token_for(self, audience: str, timeout: float | None = None) -> str:
            self.audience = audience
            return "t0ken"

    auth = FixedTokens()
    assert auth.headers_for("http://127.0.0.1:8080") == {}
    assert auth.headers_for("https://fn-abc-ew.a.run.app/path?q=1") == {
        "Authorization": "Bearer t0ken"
    }
    assert auth.audience == "https://fn-abc-ew.a.run.app"


def test_a_read_timeout_may_leave_the_function_running() -> None:
    invoker = CloudFunctionInvoker(policy=InvocationPolicy(timeout=0.3, attempts=3))
    with ScriptedServer([(200, SLOW)]) as server, pytest.raises(CloudFunctionError) as error:
        invoke(invoker, server.url, {})
    assert len(server.requests) == 1 and "did not answer within 0.3s" in str(error.value)
    assert error.value.function_may_still_run


def test_a_final_answer_leaves_nothing_running_unless_an_earlier_attempt_was_ambiguous() -> None:
    with (
        ScriptedServer([(400, HANDLER_ERROR)]) as server,
        pytest.raises(CloudFunctionError) as refused,
    ):
        invoke(CloudFunctionInvoker(policy=FAST), server.url, {})
    assert not refused.value.function_may_still_run
    with (
        ScriptedServer([(502, "<html>lost</html>"), (400, HANDLER_ERROR)]) as server,
        pytest.raises(CloudFunctionError) as after_retry,
    ):
        invoke(CloudFunctionInvoker(policy=AMBIGUOUS_OK), server.url, {})
    assert after_retry.value.function_may_still_run  # attempt 1 may still be working


# --- the overall deadline and google-auth's errors -------------------------------------------


class ScriptedCredentials(google.auth.credentials.Credentials):
    """google-auth credentials whose refreshes take ``delay`` s and raise ``errors`` in turn
    (then mint a token)."""

    def __init__(self, delay: float = 0.0, errors: list[Exception] | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.errors = list(errors or [])
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        time.sleep(self.delay)
        if self.errors:
            raise self.errors.pop(0)
        self.token = f"token-{self.refreshes}"


class TokenForEveryUrl(IdTokenAuth):
    """Gets a token for a local URL too, so a scripted server can stand in for the function."""

    def headers_for(self, url: str, timeout: float | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_for('https://fn-abc-ew.a.run.app', timeout)}"}


def token_auth(credentials: ScriptedCredentials) -> IdTokenAuth:
    return TokenForEveryUrl(default_factory=lambda _: credentials, request_factory=object)


def test_a_token_refresh_counts_against_the_deadline_and_is_named_as_the_cause() -> None:
    slow = ScriptedCredentials(delay=3.0)
    invoker = CloudFunctionInvoker(policy=InvocationPolicy(deadline=0.5), auth=token_auth(slow))
    started = time.monotonic()
    with (
        ScriptedServer([(200, {"status": "ok"})]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert time.monotonic() - started < 1.5
    assert server.requests == [], "no attempt was sent"
    description = str(error.value.description)
    assert "deadline of 0.5s passed while waiting for an ID token" in description
    assert "did not answer" not in description
    assert not error.value.function_may_still_run


def test_a_transport_error_getting_the_token_is_retried_as_never_reached() -> None:
    flaky = ScriptedCredentials(errors=[google.auth.exceptions.TransportError("metadata down")])
    invoker = CloudFunctionInvoker(policy=FAST, auth=token_auth(flaky))
    with ScriptedServer([(200, {"status": "ok"})]) as server:
        response = invoke(invoker, server.url, {})
    assert response.attempts == 2 and len(server.requests) == 1
    assert server.requests[0]["headers"]["Authorization"] == "Bearer token-2"


def test_a_transient_refresh_error_is_retried_and_a_permanent_one_fails_the_call() -> None:
    transient = google.auth.exceptions.RefreshError("503 from the token service", retryable=True)
    invoker = CloudFunctionInvoker(
        policy=FAST, auth=token_auth(ScriptedCredentials(errors=[transient]))
    )
    with ScriptedServer([(200, {"status": "ok"})]) as server:
        assert invoke(invoker, server.url, {}).attempts == 2

    denied = google.auth.exceptions.RefreshError(
        "Permission 'iam.serviceAccounts.getOpenIdToken' denied"
    )
    credentials = ScriptedCredentials(errors=[denied, denied])
    invoker = CloudFunctionInvoker(policy=FAST, auth=token_auth(credentials))
    with (
        ScriptedServer([(200, {"status": "ok"})]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoke(invoker, server.url, {})
    assert server.requests == [] and credentials.refreshes == 1, "not retried"
    assert "no ID token" in str(error.value.description)
    assert "getOpenIdToken" in str(error.value.description)
    assert not error.value.function_may_still_run


def test_a_deadline_shorter_than_the_attempt_timeout_is_named_when_it_cuts_the_wait() -> None:
    invoker = CloudFunctionInvoker(policy=InvocationPolicy(timeout=5, deadline=0.5))
    with ScriptedServer([(200, SLOW)]) as server, pytest.raises(CloudFunctionError) as error:
        invoke(invoker, server.url, {})
    description = str(error.value.description)
    assert "did not answer before the call's deadline of 0.5s" in description
    assert error.value.function_may_still_run


def test_time_spent_before_a_retry_counts_against_the_deadline() -> None:
    """E.g. writing the cancel marker of the abandoned attempt: a retry that has no time
    left is not sent with a tiny timeout and then blamed on the function."""
    policy = InvocationPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.01, deadline=0.5)
    with (
        ScriptedServer([(503, "busy"), (200, {"status": "ok"})]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        call = CloudFunctionInvoker(policy=policy).start(server.url)
        for attempt in call.attempts():
            with attempt:
                if call.number == 2:
                    time.sleep(0.6)
                call.post({"attempt": call.number})
    assert len(server.requests) == 1
    description = str(error.value.description)
    assert "deadline of 0.5s passed before the attempt could be sent (attempt 2" in description


def test_the_handler_started_check_is_bounded_by_the_deadline() -> None:
    def slow_check(attempt: int) -> bool:
        time.sleep(3)
        return False

    policy = InvocationPolicy(attempts=3, initial_backoff=0.01, deadline=0.5)
    started = time.monotonic()
    with ScriptedServer([(503, "busy")]) as server, pytest.raises(CloudFunctionError) as error:
        invoke(CloudFunctionInvoker(policy=policy), server.url, {}, handler_started=slow_check)
    assert time.monotonic() - started < 1.5
    assert len(server.requests) == 1
    assert "whether its handler had started is unknown" in str(error.value.description)
    assert error.value.function_may_still_run


def test_an_interrupt_leaves_the_shared_session_open_for_the_other_calls() -> None:
    closed: list[bool] = []

    class RecordingSession(requests.Session):
        def close(self) -> None:
            closed.append(True)
            super().close()

    invoker = CloudFunctionInvoker(policy=FAST, session=RecordingSession())
    with ScriptedServer([(200, {"status": "ok"})]) as server:
        with pytest.raises(KeyboardInterrupt):
            for attempt in invoker.start(server.url).attempts():
                with attempt:
                    raise KeyboardInterrupt
        assert invoke(invoker, server.url, {}).status == 200
    assert closed == []


def test_an_interrupt_drops_its_own_connection_at_once() -> None:
    """Without closing the shared session: urllib3 closes a connection whose request is
    interrupted, so the function's server sees the caller leave."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, float] = {}

    def wait_for_the_caller_to_leave() -> None:
        connection, _ = listener.accept()
        request = b""
        while not request.endswith(b"{}"):  # headers, then the JSON body
            request += connection.recv(65536)
        received = time.monotonic()
        assert connection.recv(1) == b""  # end of stream: the caller closed
        seen["closed_after"] = time.monotonic() - received

    class Interrupt(BaseException):
        pass

    def interrupt(*_: Any) -> None:
        raise Interrupt

    server = threading.Thread(target=wait_for_the_caller_to_leave, daemon=True)
    server.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(Interrupt):
            invoke(
                CloudFunctionInvoker(policy=InvocationPolicy(timeout=10)),
                f"http://127.0.0.1:{listener.getsockname()[1]}",
                {},
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    server.join(5)
    listener.close()
    assert seen["closed_after"] < 1.0


def test_any_reader_wrapped_sends_every_attempt_the_sessions_one_location() -> None:
    """Through PipesSharedLocationReader, a reader that knows nothing of attempts serves the
    client: each retry is sent the session's messages params, and no cancel is asked for."""
    inner = dg.PipesTempFileMessageReader()
    reader = PipesSharedLocationReader(inner)
    assert reader.no_messages_debug_text() == inner.no_messages_debug_text()
    client = PipesCloudFunctionClient(
        message_reader=reader, invoker=CloudFunctionInvoker(policy=AMBIGUOUS_OK)
    )
    # A lost answer (the function may have run: the abandoned attempt would be cancelled),
    # then a refusal (never reached it), then the answer.
    with ScriptedServer([(502, "lost"), (503, "busy"), (200, {"status": "ok"})]) as server:

        @dg.asset
        def people(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            return client.run(context=context, function_url=server.url).get_materialize_result()

        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([people], instance=instance, raise_on_error=False)
    assert result.success
    sent = [request["body"][DAGSTER_PIPES_MESSAGES_ENV_VAR] for request in server.requests]
    assert len(sent) == 3 and len(set(sent)) == 1
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert not any("cancel" in line for line in logs), logs


class DeniedAfterFirst(google.auth.credentials.Credentials):
    """The first ID token is granted, every later refresh denied."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        if self.refreshes > 1:
            raise google.auth.exceptions.RefreshError("getOpenIdToken denied")  # type: ignore[no-untyped-call]
        self.token = "token-1"


def test_no_token_for_a_retry_after_an_ambiguous_attempt_says_that_attempt_may_run_on() -> None:
    credentials = DeniedAfterFirst()
    auth = IdTokenAuth(default_factory=lambda _: credentials, request_factory=object)
    session = CountingSession(status=502)  # the handler may have run
    call = CloudFunctionInvoker(AMBIGUOUS_OK, auth, session).start("https://fn-abc-ew.a.run.app")
    with pytest.raises(CloudFunctionError) as error:
        for attempt in call.attempts():
            with attempt:
                if call.number == 2:
                    credentials.token = None  # attempt 2 needs a refresh, which is denied
                call.post({})
    assert session.posts == 1
    assert "no ID token" in str(error.value.description)
    assert error.value.function_may_still_run  # attempt 1 (a 502) may still be working
