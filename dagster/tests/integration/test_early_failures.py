"""A call that fails before the function wrote any Pipes message fails at once through the
real stack: no `closed` can come, so none is waited for, and an attempt that never reached
a function gets no cancel marker."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud import storage

from dagster_pipes_gcf import InvocationPolicy
from devstack.net import free_port
from devstack.stack import LocalStack

from .conftest import PeopleRun, pipes_client
from .test_transport import run_event

pytestmark = pytest.mark.integration
FAILS_WITHIN_S = 1.5  # the drain used to wait 5 s for a `closed` that could not come
QUICK_RETRIES = InvocationPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.05)


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A server that answers every call with ``status`` and a plain page, as a platform
    front end (429) or a function that crashed outside Pipes (500) does."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            page = f"<html><body>Error {status}</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def markers(stack: LocalStack) -> set[str]:
    blobs = storage.Client(project="test").list_blobs(stack.pipes_bucket)
    return {blob.name for blob in blobs if blob.name.endswith("/cancel")}


def seconds_from_call_to_failure(run: PeopleRun) -> float:
    entries = run.instance.all_logs(run.result.run_id)
    (called,) = [e for e in entries if e.user_message.startswith("[pipes] invoking")]
    (failed,) = [e for e in entries if e.is_dagster_event and e.dagster_event.is_step_failure]
    return failed.timestamp - called.timestamp


@contextmanager
def unreachable() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (unreachable, "could not reach the Cloud Function"),
        (lambda: answering(429), "HTTP 429"),
    ],
    ids=["connection-refused", "429s-exhausted"],
)
def test_a_call_that_never_reached_a_function_fails_at_once_without_a_marker(
    stack: LocalStack, server: object, error: str
) -> None:
    before = markers(stack)
    with server() as url:  # type: ignore[operator]
        run = run_event(stack, pipes_client(stack, invocation=QUICK_RETRIES), url, {})
    assert not run.success
    assert error in run.failure_message() and "after 2 attempt(s)" in run.failure_message()
    assert seconds_from_call_to_failure(run) < FAILS_WITHIN_S
    assert markers(stack) == before, "nothing ran, so nothing is to be cancelled"


def test_a_plain_500_from_a_function_that_crashed_outside_pipes_fails_at_once(
    stack: LocalStack,
) -> None:
    with answering(500) as url:
        run = run_event(stack, pipes_client(stack, invocation=QUICK_RETRIES), url, {})
    assert not run.success and "HTTP 500" in run.failure_message()
    assert seconds_from_call_to_failure(run) < FAILS_WITHIN_S
