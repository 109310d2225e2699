"""Measure how long each failure path takes to fail a step (the table in
docs/troubleshooting.md), from the repository root:
``PYTHONPATH=. uv run --no-sync python dagster/tests/integration/failure_paths.py``.

Every case runs through the real client with the DEFAULT ``InvocationPolicy`` (timeout case:
a 5 s timeout) against the local stack, a stand-in server, or no server at all; the time is
from the client's "[pipes] invoking" line to the step failure in the run's event log.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_pipes_gcf import (
    CloudFunctionInvoker,
    InvocationPolicy,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
)
from devstack.net import free_port
from devstack.stack import LocalStack, local_stack


@contextmanager
def answering(status: int, delay: float = 0.0) -> Iterator[str]:
    """A server answering every POST with ``status`` and a plain page after ``delay`` s."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay)
            page = f"<html><body>Error {status}</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def own_address() -> str:
    """This machine's non-loopback address (a "remote" host that refuses connections)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the interface
        return str(sock.getsockname()[0])


def run_asset(
    stack: LocalStack,
    url: str,
    event: dict[str, Any],
    policy: InvocationPolicy | None = None,
    interrupt_after: float | None = None,
) -> tuple[float, str]:
    """Seconds from the call to the step's end, and the first line of the failure."""
    client = PipesCloudFunctionClient(
        message_reader=PipesCloudStorageMessageReader(bucket=stack.pipes_bucket),
        invoker=CloudFunctionInvoker(policy=policy),
    )

    @dg.asset(name="cloud_function_pipes_asset")
    def asset(context: dg.AssetExecutionContext, fn: PipesCloudFunctionClient) -> Any:
        if interrupt_after is not None:
            # A real SIGINT, as Dagster sends a terminated run's process.
            pid = os.getpid()
            threading.Timer(interrupt_after, lambda: os.kill(pid, signal.SIGINT)).start()
        return fn.run(context=context, function_url=url, event=event).get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [asset], resources={"fn": client}, instance=instance, raise_on_error=False
    )
    entries = instance.all_logs(result.run_id)
    called = next(e for e in entries if e.user_message.startswith("[pipes] invoking"))
    ended = next(
        e
        for e in entries
        if e.is_dagster_event and e.dagster_event_type in ("STEP_FAILURE", "RUN_CANCELED")
    )
    if interrupt_after is not None:
        called_at = called.timestamp + interrupt_after
    else:
        called_at = called.timestamp
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    error = failure.step_failure_data.error if failure else None
    first_line = error.message.splitlines()[0] if error else ended.user_message
    return ended.timestamp - called_at, first_line


def crash_inside_pipes(stack: LocalStack) -> tuple[float, str]:
    lake = stack.fresh_lake()
    lake.put("cloud_function_pipes_asset/_delta_log/00000000000000000000.json", "not JSON\n")
    event = {"num_rows": 5, "dl_bucket": str(lake)}
    return run_asset(stack, stack.function_url, event)


MISSING_CREDENTIALS = """
import time, dagster as dg
from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader
@dg.asset
def people(context: dg.AssetExecutionContext, fn: PipesCloudFunctionClient):
    return fn.run(context=context, function_url="http://127.0.0.1:9").get_materialize_result()
client = PipesCloudFunctionClient(PipesCloudStorageMessageReader(bucket="pipes"))
instance = dg.DagsterInstance.ephemeral()
result = dg.materialize([people], resources={"fn": client}, instance=instance,
                        raise_on_error=False)
entries = instance.all_logs(result.run_id)
start = next(e for e in entries if e.dagster_event_type == "STEP_START").timestamp
end = next(e for e in entries if e.dagster_event_type == "STEP_FAILURE").timestamp
print(round(end - start, 2))
"""


def missing_credentials() -> tuple[float, str]:
    """No emulator, no ADC, no metadata server (its address a closed local port)."""
    hidden = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    closed = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        env |= {"HOME": home, "CLOUDSDK_CONFIG": home, "GCE_METADATA_HOST": closed}
        env["GCE_METADATA_IP"] = closed
        done = subprocess.run(
            [sys.executable, "-c", MISSING_CREDENTIALS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(done.stdout.strip().splitlines()[-1]), "DagsterPipesExecutionError"


def main() -> None:
    with local_stack(Path(tempfile.mkdtemp())) as stack:
        os.environ["STORAGE_EMULATOR_HOST"] = stack.emulator_url
        cases: dict[str, Any] = {
            "connection refused, local": lambda: run_asset(
                stack, f"http://127.0.0.1:{free_port()}", {}
            ),
            "connection refused, remote": lambda: run_asset(
                stack, f"http://{own_address()}:{free_port()}", {}
            ),
            "DNS failure": lambda: run_asset(stack, "http://no-such-function.invalid", {}),
            "bad request 400": lambda: run_asset(stack, stack.function_url, {"num_rows": -1}),
            "crash inside Pipes": lambda: crash_inside_pipes(stack),
            "missing credentials": missing_credentials,
        }
        for status in (403, 429, 500):
            cases[f"HTTP {status}"] = lambda status=status: _with_server(stack, status)
        cases["timeout (5 s)"] = lambda: _timeout(stack)
        cases["terminated run"] = lambda: _terminated(stack)
        for name, case in cases.items():
            seconds, what = case()
            print(f"{name:32} {seconds:6.2f} s  {what[:150]}", flush=True)


def _with_server(stack: LocalStack, status: int) -> tuple[float, str]:
    with answering(status) as url:
        return run_asset(stack, url, {})


def _timeout(stack: LocalStack) -> tuple[float, str]:
    with answering(200, delay=30) as url:
        return run_asset(stack, url, {}, policy=InvocationPolicy(timeout=5))


def _terminated(stack: LocalStack) -> tuple[float, str]:
    with answering(200, delay=30) as url:
        return run_asset(stack, url, {}, interrupt_after=1.0)


if __name__ == "__main__":
    main()
