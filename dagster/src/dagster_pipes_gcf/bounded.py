"""Waiting for a blocking call no longer than a deadline allows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    """The call did not finish in time; it may still finish in the background."""


def call_within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result or error if it finishes within ``seconds``, else :class:`TimedOut`.
    A daemon thread runs it: a library blocking longer (google-auth's 120 s token timeout)
    holds neither the caller past its deadline nor the process at exit."""
    if seconds <= 0:
        raise TimedOut(f"no time left (deadline passed {-seconds:.1f}s ago)")
    outcome: list[tuple[Any, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((call(), None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            outcome.append((None, exc))

    worker = threading.Thread(target=run, name="bounded-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise TimedOut(f"no answer within {seconds:.1f}s")
    value, error = outcome[0]
    if error is not None:
        raise error
    return value  # type: ignore[no-any-return]
