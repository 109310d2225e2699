"""The HTTP invocation against a scripted server on 127.0.0.1: retries, errors, headers."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dagster_pipes_gcf import (
    CloudFunctionError,
    CloudFunctionInvoker,
    IdTokenAuth,
    InvocationPolicy,
)

FAST = InvocationPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05, timeout=5)
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


@pytest.fixture
def invoker() -> Iterator[CloudFunctionInvoker]:
    yield CloudFunctionInvoker(policy=FAST)


def test_success_returns_the_json_body_and_sends_headers(invoker: CloudFunctionInvoker) -> None:
    with ScriptedServer([(200, {"status": "ok", "duration_s": 0.1})]) as server:
        response = invoker.invoke(server.url, {"x": 1}, headers={"X-Dagster-Invocation-Id": "abc"})
    assert response.status == 200 and response.body["duration_s"] == 0.1 and response.attempts == 1
    (request,) = server.requests
    assert request["body"] == {"x": 1}
    assert request["headers"]["X-Dagster-Invocation-Id"] == "abc"
    assert "Authorization" not in request["headers"]  # local URL: no ID token


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_platform_errors_are_retried(invoker: CloudFunctionInvoker, status: int) -> None:
    with ScriptedServer([(status, "<html>busy</html>"), (200, {"status": "ok"})]) as server:
        response = invoker.invoke(server.url, {})
    assert response.attempts == 2 and len(server.requests) == 2


def test_retries_stop_after_the_configured_attempts(invoker: CloudFunctionInvoker) -> None:
    with (
        ScriptedServer([(503, "unavailable")]) as server,
        pytest.raises(CloudFunctionError) as error,
    ):
        invoker.invoke(server.url, {})
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
        invoker.invoke(server.url, {})
    assert len(server.requests) == 1, "the function ran; retrying would run it again"
    description = str(error.value.description)
    assert "HTTP 500: ValueError: bad" in description and "Remote traceback:\nTB" in description
    assert error.value.metadata["remote_traceback"].value == "TB"


def test_a_client_error_names_status_field_and_is_not_retried(
    invoker: CloudFunctionInvoker,
) -> None:
    body = {
        "status": "error",
        "error": {"type": "RequestError", "message": "bad", "field": "num_rows"},
    }
    with ScriptedServer([(400, body)]) as server, pytest.raises(CloudFunctionError) as error:
        invoker.invoke(server.url, {})
    assert len(server.requests) == 1
    assert "HTTP 400: RequestError: bad (field: num_rows)" in str(error.value.description)


def test_deployed_urls_get_an_id_token_for_the_base_url() -> None:
    class FixedTokens(IdTokenAuth):
        def token_for(self, audience: str) -> str:
            self.audience = audience
            return "t0ken"

    auth = FixedTokens()
    assert auth.headers_for("http://127.0.0.1:8080") == {}
    assert auth.headers_for("https://fn-abc-ew.a.run.app/path?q=1") == {
        "Authorization": "Bearer t0ken"
    }
    assert auth.audience == "https://fn-abc-ew.a.run.app"
