"""Commands for each local service, and a context manager that runs one (tests, bench)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from devstack.net import LOOPBACK, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTION_SOURCE = REPO_ROOT / "cloud_function" / "main.py"
BIN = Path(sys.executable).parent


def emulator_command(port: int, bucket: str) -> list[str]:
    return [
        str(BIN / "gcp-storage-emulator"), "start", "--host", LOOPBACK, "--port", str(port),
        "--default-bucket", bucket, "--in-memory", "--quiet",
    ]  # fmt: skip


def function_command(
    port: int, *, source: str | Path = FUNCTION_SOURCE, target: str = "main"
) -> list[str]:
    return [
        str(BIN / "functions-framework"), "--source", str(source), "--target", target,
        "--host", LOOPBACK, "--port", str(port),
    ]  # fmt: skip


def dagster_command(port: int) -> list[str]:
    return [sys.executable, "-m", "devstack.dagster_dev", "--host", LOOPBACK, "--port", str(port)]


class ServiceFailed(RuntimeError):
    """A service did not come up; the message includes its output."""


@contextmanager
def running(
    name: str,
    command: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block exits; wait until it listens on ``port``."""
    log_file = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        list(command),
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        listening = wait_for_port(port, timeout=timeout, alive=lambda: process.poll() is None)
        if not listening or process.poll() is not None:
            output = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise ServiceFailed(f"{name} did not start listening on {LOOPBACK}:{port}\n{output}")
        yield process
    finally:
        _stop(process)
        log_file.close()


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
