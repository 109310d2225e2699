"""Ctrl-C in a terminal, under ``just``: the stack stops and nobody reports a failure.

A terminal sends SIGINT to its whole foreground process group; ``just`` (1.38+) reports a
recipe it saw interrupted as "error: interrupted by SIGINT" even when the recipe then exits 0.
The stack takes the terminal's foreground while it runs, so only the stack gets Ctrl-C.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time
from pathlib import Path

import pytest

from devstack.services import REPO_ROOT
from devstack.tests.conftest import Devstack

JUST = shutil.which("just")


def read_until(fd: int, text: bytes, timeout: float, seen: bytearray) -> bool:
    """Collect the terminal's output into ``seen`` until ``text`` appears (or EOF/timeout)."""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: everything exited
                return text in seen
            if not chunk:
                return text in seen
            seen.extend(chunk)
    return text in seen


@pytest.mark.skipif(JUST is None, reason="just is not installed")
def test_ctrl_c_under_just_stops_cleanly_without_an_error(
    devstack: Devstack, tmp_path: Path
) -> None:
    justfile = tmp_path / "justfile"
    justfile.write_text(f"emulator:\n    {sys.executable} -m devstack emulator\n")
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `just` as a terminal's foreground job
        os.chdir(REPO_ROOT)
        command = [str(JUST), "--justfile", str(justfile), "--working-directory", ".", "emulator"]
        os.execve(command[0], command, devstack.env)
    seen = bytearray()
    try:
        assert read_until(terminal, b"Local stack is up", 60, seen), seen.decode(errors="replace")
        os.write(terminal, b"\x03")  # Ctrl-C, as typed
        read_until(terminal, b"\0", 30, seen)  # until the terminal closes
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
    output = seen.decode(errors="replace")
    assert "devstack: every process stopped" in output
    assert "interrupted" not in output.lower(), output
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert devstack.survivors() == []
