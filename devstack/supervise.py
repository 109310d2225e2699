"""Run the stack's processes under honcho and explain why it stopped when it was not Ctrl-C."""

from __future__ import annotations

import re
import shlex
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import honcho.manager
from honcho.manager import Manager
from honcho.printer import Printer

STOPPED = re.compile(r"^(?P<name>\S+) stopped \(rc=(?P<rc>-?\d+)\)")
SIGNAL_RECEIVED = re.compile(r"^SIG\w+ received")
TAIL_LINES = 60
# Seconds between honcho's SIGTERM and its SIGKILL (honcho's default, 5, is shorter than
# `dagster dev` needs to stop its webserver, daemon and code server).
KILL_WAIT = 10

HINTS = {
    "function": (
        "the function could not start. Fix the error above in its code (cloud_function/, or "
        "FUNCTION_SOURCE) or install what it imports (`just sync`), then start again."
    ),
    "emulator": "the GCS emulator's XML-API adapter could not start (see its output above).",
    "fake-gcs": "the GCS emulator (fake-gcs-server) could not start (see its output above).",
    "dagster": "dagster dev could not start (see its output above).",
}
LIBRARY_FRAME = re.compile(r'^\s*File "(<frozen [^>]+>|[^"]*/site-packages/[^"]*)"')


def user_traceback(lines: Sequence[str]) -> list[str]:
    """The last traceback in ``lines`` without library frames; ``lines`` if there is none."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return list(lines)
    kept: list[str] = [lines[starts[-1]]]
    skipping = False
    for line in lines[starts[-1] + 1 :]:
        if line.lstrip().startswith("File "):
            skipping = bool(LIBRARY_FRAME.match(line))
        elif not line.startswith(" "):
            skipping = False  # the exception line
        if not skipping:
            kept.append(line)
    return kept


class TailPrinter(Printer):  # type: ignore[misc]
    """honcho's prefixed, coloured printer that also keeps each process's last lines."""

    def __init__(self, output: TextIO, colour: bool) -> None:
        super().__init__(output, colour=colour, prefix=True)
        self.tails: dict[str, deque[str]] = {}
        self.first_exit: tuple[str, int] | None = None
        self.interrupted = False

    def write(self, message: Any) -> None:
        super().write(message)
        text = message.data
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if message.name == "system":
            self._system(text)
        elif message.name:
            tail = self.tails.setdefault(message.name, deque(maxlen=TAIL_LINES))
            tail.extend(text.splitlines())

    def _system(self, text: str) -> None:
        if SIGNAL_RECEIVED.match(text):
            self.interrupted = True
        stopped = STOPPED.match(text)
        if stopped and self.first_exit is None and not self.interrupted:
            self.first_exit = (stopped["name"], int(stopped["rc"]))


def failure_report(printer: TailPrinter) -> str | None:
    """Why the stack stopped on its own (a process exited first), or None after Ctrl-C."""
    if printer.interrupted or printer.first_exit is None:
        return None
    name, rc = printer.first_exit
    if name == "ready":
        return None  # `ready` prints its own error (a service that never came up)
    lines = user_traceback(list(printer.tails.get(name, [])))
    tail = "\n".join(f"    {line}" for line in lines) or "    (no output)"
    hint = HINTS.get(name, f"the {name} process stopped.")
    return (
        f"\ndevstack: error: the {name} stopped (exit code {rc}), so devstack stopped "
        f"everything. Its last output:\n{tail}\ndevstack: {hint}"
    )


def run_processes(
    commands: Mapping[str, Sequence[str] | str],
    env: Mapping[str, str],
    cwd: str,
    output: TextIO = sys.stdout,
) -> int:
    """Run every command under honcho until one stops or Ctrl-C; return the exit code."""
    honcho.manager.KILL_WAIT = KILL_WAIT
    printer = TailPrinter(output=output, colour=output.isatty())
    manager = Manager(printer)
    for name, command in commands.items():
        # `exec`: the signal honcho sends reaches the program, not an intermediate shell.
        shell = command if isinstance(command, str) else shlex.join(command)
        manager.add_process(name, f"exec {shell}", env=dict(env), cwd=cwd)
    manager.loop()
    report = failure_report(printer)
    if report:
        print(report, file=sys.stderr, flush=True)
    if printer.interrupted:
        # Ctrl-C (or SIGTERM) is how the stack is meant to stop: not a failure, so `just`
        # does not report "recipe failed" after a clean shutdown.
        print("devstack: every process stopped", file=output, flush=True)
        return 0
    return int(manager.returncode or 0)
