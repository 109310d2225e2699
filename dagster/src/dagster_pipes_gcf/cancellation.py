"""Forwarding a run's termination to the function: the marker ``<key_prefix>/cancel``.

An HTTP call cannot be taken back: dropping the connection does not stop a Cloud Function
(the platform lets the handler run on). So when Dagster terminates a run while the client
waits, the client writes the object ``<key_prefix>/cancel`` next to the call's Pipes chunks,
for the key prefix of every attempt that may still be running. The function's Pipes layer
looks for it about twice a second and its business logic stops at its next check, committing
nothing (``gcf_pipes.cancel`` on the function side).

Writing the marker takes at most :data:`CANCEL_TIMEOUT_S` and never raises: the step ends
either way, promptly, and a marker that could not be written is reported in the run. IAM
lets the orchestrator create objects named ``*/cancel`` only (Terraform, ``infra/iam.tf``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from dagster._core.errors import DagsterExecutionInterruptedError
from google.api_core import exceptions as gexc
from google.cloud import storage

from dagster_pipes_gcf.invocation import CloudFunctionError

CANCEL_MARKER = "cancel"
# Bound on writing the markers (client creation and token refresh included): a terminated
# run stops waiting within 2 s; the reader's poller winds down meanwhile (within 1 s).
CANCEL_TIMEOUT_S = 1.5


def cancel_marker_key(key_prefix: str) -> str:
    """Object name of the cancellation marker of the attempt writing under ``key_prefix``."""
    return f"{key_prefix}/{CANCEL_MARKER}"


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
    """Create ``<prefix>/cancel`` for each prefix (in order), within ``timeout`` overall.

    ``bucket`` makes the Pipes bucket handle (inside the time bound: creating a client may
    refresh credentials). Each marker is created once (``if_generation_match=0``); one that
    exists already counts as written. Nothing is retried and nothing raises: what failed or
    did not finish in time is in :attr:`CancelOutcome.problems`.
    """
    written: list[str] = []
    problems: list[str] = []
    payload = json.dumps(dict(reason))

    def write_all() -> None:
        try:
            target = bucket()
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            problems.append(f"no client for the Pipes bucket ({type(exc).__name__}: {exc})")
            return
        for prefix in key_prefixes:
            location = f"gs://{target.name}/{cancel_marker_key(prefix)}"
            try:
                target.blob(cancel_marker_key(prefix)).upload_from_string(
                    payload,
                    content_type="application/json",
                    if_generation_match=0,
                    timeout=timeout,
                    retry=None,
                )
            except gexc.PreconditionFailed:
                pass  # cancelled before: the marker is there
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                problems.append(f"{location}: {type(exc).__name__}: {exc}")
                continue
            written.append(location)

    thread = threading.Thread(target=write_all, name="pipes-cancel-marker", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():  # it may still land; the step does not wait for it
        problems.append(f"GCS did not confirm within {timeout:g}s")
    return CancelOutcome(tuple(written), tuple(problems))


@contextmanager
def forwarding_termination(
    cancel: Callable[[str], CancelOutcome | None] | None, report: Callable[[str], None]
) -> Iterator[None]:
    """When the run is terminated inside the block (Dagster's interrupt, or Ctrl-C), call
    ``cancel`` with the reason and ``report`` its outcome, then let the interrupt go on unchanged.

    The same when the call fails while the function may still be working on it (a read
    timeout, a connection lost after sending): the step fails, so work that would commit
    later is stopped too. The call's error goes on unchanged."""
    try:
        yield
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        _cancel(cancel, report, "run terminated while the function was working")
        raise
    except CloudFunctionError as error:
        if error.function_may_still_run:
            _cancel(cancel, report, "the call failed while the function may still be working")
        raise


def _cancel(
    cancel: Callable[[str], CancelOutcome | None] | None, report: Callable[[str], None], why: str
) -> None:
    if cancel is not None:
        with contextlib.suppress(Exception):  # the error that ended the call must propagate
            if outcome := cancel(why):
                report(f"[pipes] {why}: {outcome.describe()}")
