"""Cancellation of a request by the orchestrator: the marker ``<key_prefix>/cancel``.

When Dagster terminates a run, its client writes the object ``<key_prefix>/cancel`` next to
the request's Pipes chunks (the orchestrator may create only objects named ``*/cancel``, and
the function's runtime account may read only those, by IAM condition). Any instance serving
the request sees it: the message writer's thread looks for it on its flush cadence, at most
every ``CancellationPolicy.poll_interval`` seconds (one GET of a known name: about 2 GETs a
second per running request at most, nothing when idle).

Business logic asks with :func:`cancelled` or :func:`raise_if_cancelled` at points where
stopping leaves nothing half-done (between batches, right before a commit). A job that
raises :class:`RequestCancelled` is answered with HTTP 409 and body status ``"cancelled"``;
its Pipes context is closed with that exception, so its last messages still go out.

A request may also have a deadline of its own (the platform's timeout minus a margin): once
it has passed, the same checks raise :class:`DeadlineExceeded` (HTTP 504), so a job the
platform has already answered 504 for stops before it commits instead of committing unseen.

What cancellation cannot do: stop work already past the last check. A commit that started
before the marker was seen completes (the caller's run has ended by then), and a job that
never checks runs to its end. The marker is seen up to ``poll_interval`` plus one GET after
it was written; a check with ``fresh=True`` looks at the marker right now.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import storage
from requests import exceptions as rexc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gcf_pipes.errors import TRANSIENT_GCS_ERRORS

CANCEL_MARKER = "cancel"
CANCELLED_STATUS = 409
DEADLINE_STATUS = 504


logger = logging.getLogger(__name__)


def cancel_marker_key(key_prefix: str) -> str:
    """Object name of the request's cancellation marker (shared with the Dagster client)."""
    return f"{key_prefix}/{CANCEL_MARKER}"


class RequestCancelled(Exception):
    """The orchestrator cancelled this request (its run was terminated): HTTP 409."""

    status = CANCELLED_STATUS


class DeadlineExceeded(RequestCancelled):
    """The request's own deadline passed before the job finished: HTTP 504. A cancellation
    (the job stops at its next check) whose reason is the clock, not the orchestrator."""

    status = DEADLINE_STATUS


@dataclass(frozen=True)
class CancellationPolicy:
    """How a request looks for its cancellation marker.

    Attributes:
        poll_interval: least seconds between two looks (the writer flushes every 0.2 s; the
            marker is looked for at most this often). At least 0.25.
        request_timeout: seconds one look may take; a slow look delays the writer's next
            flush by at most this.
        fresh_look_attempts: tries of the look right before a commit when the marker's GET
            fails transiently (429, 5xx, a lost connection): a cancelled request must not
            commit because of one failed GET.
    """

    poll_interval: float = 0.5
    request_timeout: float = 2.0
    fresh_look_attempts: int = 4

    def __post_init__(self) -> None:
        if not self.poll_interval >= 0.25:
            raise ValueError("CancellationPolicy.poll_interval must be >= 0.25 s")
        if not self.request_timeout > 0:
            raise ValueError("CancellationPolicy.request_timeout must be > 0")
        if self.fresh_look_attempts < 1:
            raise ValueError("CancellationPolicy.fresh_look_attempts must be >= 1")


class Cancellation:
    """Whether the orchestrator cancelled one request; safe to use from any thread.

    ``bucket`` None: the request cannot be cancelled (nothing is looked for).
    ``deadline_s``: seconds after ``started`` (a time of ``clock``; default: now) after which
    every check raises :class:`DeadlineExceeded` (None: no deadline).
    """

    def __init__(
        self,
        bucket: storage.Bucket | None,
        key_prefix: str,
        policy: CancellationPolicy | None = None,
        *,
        deadline_s: float | None = None,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._bucket = bucket
        self.key = cancel_marker_key(key_prefix)
        self.policy = policy or CancellationPolicy()
        self._clock = clock
        self.deadline_s = deadline_s
        start = clock() if started is None else started
        self._deadline = None if deadline_s is None else start + deadline_s
        self._event = threading.Event()
        self._looking = threading.Lock()  # one GET at a time
        self._next_look = 0.0
        self._warned = False
        self.looks = 0
        self.stopped_by: RequestCancelled | None = None  # what a check raised: the job stopped
        self._stop_error: Exception | None = None  # the request must stop, not cancelled
        self._stopped = False  # raise_if_cancelled raised _stop_error
        # Also told about a failed look (the request's Pipes log, so Dagster shows it).
        self.warn: Callable[[str], None] = lambda message: None

    @property
    def location(self) -> str:
        bucket = self._bucket.name if self._bucket is not None else "?"
        return f"gs://{bucket}/{self.key}"

    def is_set(self) -> bool:
        """True once the marker was seen (it is never unset)."""
        return self._event.is_set()

    def deadline_passed(self) -> bool:
        """True once the request's deadline (if it has one) has passed."""
        return self._deadline is not None and self._clock() >= self._deadline

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout``; True when cancelled."""
        return self._event.wait(timeout)

    def poll_if_due(self) -> None:
        """Look for the marker unless seen already or looked at less than an interval ago."""
        if self._bucket is None or self._event.is_set() or self._clock() < self._next_look:
            return
        self.look()

    def look(self, *, attempts: int = 1) -> bool:
        """A GET of the marker now; True when it exists. A failed look is tried again up to
        ``attempts`` times in all when the error is transient (429, 5xx, a lost connection);
        then it counts as "not cancelled" and is reported once (the request then runs on as
        if never cancelled)."""
        if self._bucket is None or self._event.is_set():
            return self._event.is_set()
        with self._looking:
            self._next_look = self._clock() + self.policy.poll_interval
            try:
                for attempt in Retrying(
                    stop=stop_after_attempt(attempts),
                    wait=wait_exponential(multiplier=0.1, max=1.0),
                    retry=retry_if_exception_type(TRANSIENT_GCS_ERRORS),
                    reraise=True,
                ):
                    with attempt:
                        self.looks += 1
                        self._bucket.blob(self.key).download_as_text(
                            timeout=self.policy.request_timeout, retry=None
                        )
            except gexc.NotFound:
                return False
            except (gexc.GoogleAPICallError, rexc.RequestException) as exc:
                self._report(exc)
                return False
        if not self._event.is_set():
            self._event.set()
            logger.warning("cancelled by the orchestrator (%s)", self.location)
        return True

    def stop_with(self, error: Exception) -> None:
        """Make every later check raise ``error``: the request's outcome can no longer reach
        Dagster (its Pipes messages could not be delivered), so committing would be a success
        nobody sees. Set by the message writer; not a cancellation (no 409)."""
        self._stop_error = error

    def raise_if_cancelled(self, *, fresh: bool = False) -> None:
        """Raise :class:`RequestCancelled` when cancelled, :class:`DeadlineExceeded` once the
        deadline has passed; ``fresh``: look at the marker now instead of trusting the last
        look (for the check right before a commit). Raises the error given to
        :meth:`stop_with` first, when there is one."""
        if self._stop_error is not None:
            self._stopped = True
            raise self._stop_error
        if self.deadline_passed():
            self.stopped_by = self._deadline_error()
            raise self.stopped_by
        if fresh:  # the last look before a commit: a transient error must not let it through
            self.look(attempts=self.policy.fresh_look_attempts)
        if self._event.is_set():
            self.stopped_by = self._error()
            raise self.stopped_by

    @contextmanager
    def surfacing(self) -> Iterator[None]:
        """Re-raise an error as the :class:`RequestCancelled` (or :class:`DeadlineExceeded`)
        a check inside raised, when a library turned it into its own error (delta-rs reports
        an exception of the Arrow stream it reads as a ``DeltaError``)."""
        try:
            yield
        except RequestCancelled:
            raise
        except Exception as exc:
            if self.stopped_by is not None:
                raise type(self.stopped_by)(*self.stopped_by.args) from exc
            if self._stopped and self._stop_error is not None and exc is not self._stop_error:
                raise self._stop_error from exc
            raise

    def _error(self) -> RequestCancelled:
        return RequestCancelled(
            f"the orchestrator cancelled this request ({self.location}); the job stopped"
        )

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request's deadline passed ({self.deadline_s:g} s after it started: the "
            "platform's timeout minus a margin); the job stopped at its next check, before "
            "finishing"
        )

    def _report(self, exc: BaseException) -> None:
        if self._warned:
            return
        self._warned = True
        message = (
            f"cannot look for the cancellation marker {self.location} "
            f"({type(exc).__name__}: {exc}); this request cannot be cancelled by Dagster"
        )
        logger.warning(message)
        with contextlib.suppress(Exception):  # e.g. the Pipes context closed meanwhile
            self.warn(message)


_current: ContextVar[Cancellation | None] = ContextVar("request_cancellation", default=None)


@contextmanager
def current_request_cancellation(cancellation: Cancellation) -> Iterator[Cancellation]:
    """Make ``cancellation`` the current request's (for :func:`cancelled` in this thread)."""
    token = _current.set(cancellation)
    try:
        yield cancellation
    finally:
        _current.reset(token)


def current_cancellation() -> Cancellation:
    """The current request's :class:`Cancellation`.

    Only the request's own thread knows its request: code that runs elsewhere (a thread of
    your own, or a library's, such as the one delta-rs reads an Arrow stream in) must get
    the object here, in the request's thread, and take it along.

    Raises:
        RuntimeError: called outside a request handled by ``handle_pipes_request``.
    """
    cancellation = _current.get()
    if cancellation is None:
        raise RuntimeError(
            "no current request in this thread: call current_cancellation() in the request's "
            "thread and pass the object to other threads"
        )
    return cancellation


def cancelled() -> bool:
    """True when the orchestrator cancelled the current request or its deadline passed."""
    cancellation = current_cancellation()
    return cancellation.is_set() or cancellation.deadline_passed()


def raise_if_cancelled() -> None:
    """Raise :class:`RequestCancelled` when the orchestrator cancelled the current request,
    :class:`DeadlineExceeded` when its deadline passed."""
    current_cancellation().raise_if_cancelled()
