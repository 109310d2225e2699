"""Forwarding a run's termination: dropping the HTTP connection does not stop a Cloud Function,
so the client writes ``<key_prefix>/cancel`` beside each running attempt's Pipes chunks, which the
function's Pipes layer (``gcf_pipes.cancel``) stops at. IAM lets it create only ``*/cancel``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import dagster as dg
from google.api_core import exceptions as gexc
from google.cloud import storage

from dagster_pipes_gcf.bounded import TimedOut, call_within
from dagster_pipes_gcf.invocation import CloudFunctionError

# Bound on writing the markers, client creation included: a terminated run stops waiting
# within 2 s (the reader's poller winds down meanwhile, within 1 s).
CANCEL_TIMEOUT_S = 1.5
JSON = "application/json"


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
    """Create ``<prefix>/cancel`` for each prefix in order (one there already counts), within
    ``timeout`` overall with ``bucket()`` made inside it; never retries, never raises."""
    written: list[str] = []
    problems: list[str] = []

    def write_all() -> None:
        try:
            target = bucket()
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            problems.append(f"no client for the Pipes bucket ({type(exc).__name__}: {exc})")
            return
        for prefix in key_prefixes:
            location, body = f"gs://{target.name}/{prefix}/cancel", json.dumps(dict(reason))
            try:
                with suppress(gexc.PreconditionFailed):  # cancelled before: the marker is there
                    target.blob(f"{prefix}/cancel").upload_from_string(
                        body, content_type=JSON, if_generation_match=0, timeout=timeout, retry=None
                    )
                written.append(location)
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                problems.append(f"{location}: {type(exc).__name__}: {exc}")

    try:
        call_within(timeout, write_all)
    except TimedOut:  # it may still land; the step does not wait for it
        problems.append(f"GCS did not confirm within {timeout:g}s")
    return CancelOutcome(tuple(written), tuple(problems))


@contextmanager
def forwarding_termination(
    cancel: Callable[[str], CancelOutcome | None] | None, report: Callable[[str], None]
) -> Iterator[None]:
    """``cancel`` (told why) and ``report`` its outcome when the run is terminated in the block,
    or the call fails while the function may still run; the interrupt or error goes on."""

    def ask(why: str) -> None:
        with suppress(Exception):  # the error that ended the call must propagate
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
