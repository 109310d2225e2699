"""Run ``python -m devstack`` as a user would, and find every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.net import LOOPBACK, free_port
from devstack.services import REPO_ROOT

MARKER = "DEVSTACK_TEST_MARKER"


def marked_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``MARKER=marker`` (a /proc scan)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; its parent just has not reaped it
                    found.append(int(entry.name))
    return found


@dataclass
class Devstack:
    """A ``python -m devstack`` run in its own process group, like a terminal job."""

    env: dict[str, str]
    marker: str
    work: Path
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[str]:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack", *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=open(self.work / "stdout.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
        )
        return self.process

    def run(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        process = self.start(*args)
        code = process.wait(timeout=timeout)
        return code, self.log()

    def log(self) -> str:
        return (self.work / "stdout.log").read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.process is not None and self.process.poll() is not None:
                return text in self.log()
            time.sleep(0.25)
        return False

    def survivors(self, timeout: float = 5.0) -> list[int]:
        """Processes of this run still alive after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (alive := marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive


@pytest.fixture
def devstack(tmp_path: Path) -> Iterator[Devstack]:
    """Environment for a devstack run on free ports; kills whatever is left at the end."""
    marker = uuid.uuid4().hex
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    env = {
        **os.environ,
        MARKER: marker,
        "CLOUD_FUNCTION_URL": f"http://{LOOPBACK}:{free_port()}",
        "STORAGE_EMULATOR_HOST": f"http://{LOOPBACK}:{free_port()}",
        "DAGSTER_PORT": str(free_port()),
        "CLOUD_RUN_JOBS_ENDPOINT": f"{LOOPBACK}:{free_port()}",
        "DAGSTER_HOME": str(home),
        "DATA_LAKE_URI": "gs://devstack-test-lake/lake",  # as `just dd` (its bucket created)
        "EMULATOR_DATA_DIR": str(tmp_path / "emulator-data"),
        "PIPES_BUCKET": "devstack-test",
        "THREADS": "2",
        "CI": "1",
    }
    env.pop("FUNCTION_SOURCE", None)
    stack = Devstack(env=env, marker=marker, work=tmp_path)
    yield stack
    for pid in marked_processes(marker):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if stack.process is not None and stack.process.poll() is None:
        stack.process.kill()
        stack.process.wait()
