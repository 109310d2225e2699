"""Waiting for a blocking call no longer than a deadline allows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    """The call did not finish in the time given; it may still finish in the background."""


def call_within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, or its error, if it finishes within ``seconds``.

    The call runs in a daemon thread, so a library that blocks longer than the caller may
    wait (google-auth's 120 s token timeout, google-cloud-storage's 120 s retry deadline)
    cannot hold the caller past its deadline, nor the process at exit.

    Raises:
        TimedOut: ``seconds`` passed first (at once when ``seconds`` <= 0).
    """
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
