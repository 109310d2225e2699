"""What ``just bench`` shows while it runs: progress on the terminal, everything else in a log.

Dagster logs every event of every run (thousands of lines per scenario) and the services
print their own output; :func:`output_to_log` sends this process's stdout and stderr (file
descriptors 1 and 2, so subprocesses and logging handlers too) to a log file, and keeps a
stream to the terminal for the progress lines and bars (tqdm, a dependency of dagster).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]

_terminal: TextIO = sys.stderr
_log_dir: Path | None = None
# Folders of a scenario's work directory that hold data, not output (lakes, emulator objects).
DATA_DIRS = frozenset({"lake", "objects"})


def log_dir() -> Path:
    """Where scenarios keep the logs of the services they start (``output_to_log``'s)."""
    if _log_dir is None:
        raise RuntimeError("output_to_log() is not active")
    return _log_dir


def terminal() -> TextIO:
    """The stream progress goes to: the real terminal while output goes to the log."""
    return _terminal


def bar(total: int, description: str, unit: str = "day") -> Any:
    """A progress bar on the terminal (none when the output is not a terminal)."""
    stream = terminal()
    return tqdm(
        total=total,
        desc=f"  {description}",
        unit=unit,
        file=stream,
        leave=True,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not stream.isatty(),
    )


@contextmanager
def output_to_log(log_path: Path) -> Iterator[TextIO]:
    """Redirect fds 1 and 2 to ``log_path`` (appending); yield a stream to the terminal."""
    global _terminal, _log_dir
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _log_dir = log_path.parent
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    previous, _terminal = _terminal, console
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            _terminal, _log_dir = previous, None
            console.close()


@contextmanager
def work_dir(scenario: str) -> Iterator[Path]:
    """A temporary work directory for a scenario's services; when the block exits (also on
    failure), their logs in it are copied to this run's log directory first."""
    logs = log_dir()
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario}-") as tmp:
        work = Path(tmp)
        try:
            yield work
        finally:
            keep_service_logs(work, logs, scenario)


def keep_service_logs(work: Path, logs: Path, scenario: str) -> list[Path]:
    """Copy every ``*.log`` under ``work`` (not under its data folders) to ``logs`` as
    ``<scenario>-<its path, '/' as '-'>``; return the copies."""
    kept = []
    for path in sorted(work.rglob("*.log")):
        parts = path.relative_to(work).parts
        if DATA_DIRS.intersection(parts) or not path.is_file():
            continue
        copy = logs / "-".join((scenario, *parts))
        shutil.copyfile(path, copy)
        kept.append(copy)
    return kept
