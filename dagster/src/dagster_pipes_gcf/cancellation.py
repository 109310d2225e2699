"""Forwarding a run's termination to the function: the marker ``<key_prefix>/cancel``.

Dropping an HTTP connection does not stop a Cloud Function. So when Dagster terminates a run
while the client waits, the client writes ``<key_prefix>/cancel`` next to the Pipes chunks of
every attempt that may still be running; the function's Pipes layer sees it within about half
a second and its business logic stops at its next check, committing nothing
(``gcf_pipes.cancel``). IAM lets the orchestrator create objects named ``*/cancel`` only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
from google.api_core import exceptions as gexc
from google.cloud import storage

from dagster_pipes_gcf.bounded import TimedOut, call_within
from dagster_pipes_gcf.invocation import CloudFunctionError

# Bound on writing the markers (client creation and token refresh included): a terminated
# run stops waiting within 2 s; the reader's poller winds down meanwhile (within 1 s).
CANCEL_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class CancelOutcome:
    """Which markers were written, and what went wrong with the others."""

    written: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return bool(self.written) and not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"asked the function to cancel ({', '.join(self.written)})"
        done = f"wrote {', '.join(self.written)}; " if self.written else ""
        return (
            f"could not ask the function to cancel: {done}{'; '.join(self.problems)}. "
            "It may run to its end and commit its work."
        )


def write_cancel_markers(
    bucket: Callable[[], storage.Bucket],
    key_prefixes: Sequence[str],
    *,
    reason: Mapping[str, str],
    timeout: float = CANCEL_TIMEOUT_S,
) -> CancelOutcome:
    """Create ``<prefix>/cancel`` once for each prefix, in order, within ``timeout`` overall
    (``bucket`` makes the bucket handle inside that bound). A marker that exists already counts
    as written. Nothing is retried and nothing raises: failures are in ``problems``."""
    written: list[str] = []
    problems: list[str] = []

    def write_all() -> None:
        try:
            target = bucket()
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            problems.append(f"no client for the Pipes bucket ({type(exc).__name__}: {exc})")
            return
        for prefix in key_prefixes:
            key = f"{prefix}/cancel"
            try:
                target.blob(key).upload_from_string(
                    json.dumps(dict(reason)),
                    content_type="application/json",
                    if_generation_match=0,
                    timeout=timeout,
                    retry=None,
                )
            except gexc.PreconditionFailed:
                pass  # cancelled before: the marker is there
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                problems.append(f"gs://{target.name}/{key}: {type(exc).__name__}: {exc}")
                continue
            written.append(f"gs://{target.name}/{key}")

    try:
        call_within(timeout, write_all)
    except TimedOut:  # it may still land; the step does not wait for it
        problems.append(f"GCS did not confirm within {timeout:g}s")
    return CancelOutcome(tuple(written), tuple(problems))


@contextmanager
def forwarding_termination(
    cancel: Callable[[str], CancelOutcome | None] | None, report: Callable[[str], None]
) -> Iterator[None]:
    """When the run is terminated inside the block (Dagster's interrupt, or Ctrl-C), or the
    call fails while the function may still be working (a read timeout, a connection lost
    after sending), ``cancel`` with the reason and ``report`` its outcome; the interrupt or
    the call's error goes on unchanged."""

    def ask(why: str) -> None:
        with contextlib.suppress(Exception):  # the error that ended the call must propagate
            if cancel is not None and (outcome := cancel(why)):
                report(f"[pipes] {why}: {outcome.describe()}")

    try:
        yield
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        ask("run terminated while the function was working")
        raise
    except CloudFunctionError as error:
        if error.function_may_still_run:
            ask("the call failed while the function may still be working")
        raise
