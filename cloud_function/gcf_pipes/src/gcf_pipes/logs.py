"""Structured log lines on stdout that Cloud Logging groups per call and filters by Dagster run.

Cloud Run (and so a 2nd-gen function) turns each JSON line on stdout into a log entry; the
special keys ``logging.googleapis.com/trace``, ``…/spanId`` and ``…/labels`` become the entry's
trace, span and labels. The trace comes from the request's ``traceparent`` (W3C) or
``X-Cloud-Trace-Context`` header, the labels from the Dagster client's ``X-Dagster-*``
headers. Every header value is untrusted: a malformed trace header is ignored (the lines then
carry no trace) and a label that is too long or not printable ASCII is left out — neither is
ever a failure. Values are written with ``json.dumps``, so nothing can break out of a line.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeAlias

if TYPE_CHECKING:  # flask only serves HTTP: a Cloud Run task imports this module without it
    import flask

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
LABELS_KEY = "logging.googleapis.com/labels"

TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"
# Request header -> log label.
LABEL_HEADERS = {
    "X-Dagster-Run-Id": "dagster_run_id",
    "X-Dagster-Asset-Key": "dagster_asset_key",
    "X-Dagster-Partition-Key": "dagster_partition_key",
    "X-Dagster-Invocation-Id": "dagster_invocation_id",
}
MAX_LABEL_CHARS = 256

# W3C trace context, version 00 (a later version starts with the same fields).
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
    r"(?:-.*)?"
)
# TRACE_ID/SPAN_ID;o=OPTIONS, the span a decimal unsigned 64-bit integer.
_CLOUD_TRACE = re.compile(
    r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>[0-9]{1,20}))?(?:;o=(?P<o>[0-9]))?"
)  # ASCII digits only (``\d`` would take any script's, and int() reads them)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

_current_trace: ContextVar[RequestTrace | None] = ContextVar("request_trace", default=None)
_stdout_lock = threading.Lock()


class Headers(Protocol):
    """Request headers: werkzeug's (case-insensitive) or a plain mapping in tests."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class RequestTrace:
    """What one request's log lines carry: its trace (if the headers had a valid one) and
    the Dagster labels (only those whose header was well-formed)."""

    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_headers(cls, headers: Headers) -> RequestTrace:
        trace = _parse_traceparent(headers.get(TRACEPARENT_HEADER) or "") or _parse_cloud_trace(
            headers.get(CLOUD_TRACE_HEADER) or ""
        )
        labels = {
            label: value
            for header, label in LABEL_HEADERS.items()
            if (value := _label_value(headers.get(header))) is not None
        }
        if trace is None:
            return cls(labels=labels)
        return cls(trace_id=trace[0], span_id=trace[1], sampled=trace[2], labels=labels)

    def fields(self, project: str | None) -> dict[str, Any]:
        """The special keys of a structured log line for this request."""
        entry: dict[str, Any] = {}
        if self.trace_id:
            # Cloud Logging links ``projects/P/traces/ID``; without a project (locally) the
            # bare id still lets a reader match lines to the call.
            entry[TRACE_KEY] = (
                f"projects/{project}/traces/{self.trace_id}" if project else self.trace_id
            )
            if self.span_id:
                entry[SPAN_KEY] = self.span_id
            entry[SAMPLED_KEY] = self.sampled
        if self.labels:
            entry[LABELS_KEY] = dict(self.labels)
        return entry


def _parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    match = _TRACEPARENT.fullmatch(value.strip()) if len(value) <= 512 else None
    if match is None or match["version"] == "ff":
        return None
    if match["version"] == "00" and len(value.strip()) != 55:
        return None  # version 00 has exactly four fields
    if match["trace"] == _ZERO_TRACE or match["span"] == _ZERO_SPAN:
        return None
    return match["trace"], match["span"], bool(int(match["flags"], 16) & 1)


def _parse_cloud_trace(value: str) -> tuple[str, str | None, bool] | None:
    match = _CLOUD_TRACE.fullmatch(value.strip()) if len(value) <= 128 else None
    if match is None or match["trace"].lower() == _ZERO_TRACE:
        return None
    if match["span"] is None:  # the span is optional in this format
        return match["trace"].lower(), None, match["o"] == "1"
    span = int(match["span"])
    if not 0 < span < 2**64:
        return None
    return match["trace"].lower(), f"{span:016x}", match["o"] == "1"


def _label_value(value: str | None) -> str | None:
    if value is None or len(value) > MAX_LABEL_CHARS or not _PRINTABLE.fullmatch(value):
        return None
    return value


def current_trace() -> RequestTrace:
    """The trace of the request being served (empty outside a request)."""
    return _current_trace.get() or RequestTrace()


@contextmanager
def request_trace(trace: RequestTrace) -> Iterator[RequestTrace]:
    token = _current_trace.set(trace)
    try:
        yield trace
    finally:
        _current_trace.reset(token)


class StructuredLogWriter:
    """Writes one JSON object per line to stdout (whole lines, even from several threads)."""

    def __init__(self, project: str | None = None, stream: Callable[[], Any] | None = None):
        self.project = project
        self._stream = stream or (lambda: sys.stdout)

    def write(self, severity: str, message: str, trace: RequestTrace, **extra: Any) -> None:
        entry = {"severity": severity, "message": message, **extra, **trace.fields(self.project)}
        line = json.dumps(entry, default=str, ensure_ascii=True) + "\n"
        with _stdout_lock:
            stream = self._stream()
            stream.write(line)
            stream.flush()


class StructuredLogHandler(logging.Handler):
    """A ``logging`` handler writing records as structured lines of one request's trace
    (bound when the handler is made: records from the job's own threads carry it too)."""

    def __init__(self, writer: StructuredLogWriter, trace: RequestTrace):
        super().__init__(level=logging.INFO)
        self._writer = writer
        self._trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write(record.levelname, record.getMessage(), self._trace)
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)


class CurrentRequestLogHandler(logging.Handler):
    """A ``logging`` handler writing every record as a structured line, with the trace of the
    request its thread serves (none outside a request): the platform's log of what does not
    reach Dagster. A record with an exception gets its traceback in the message."""

    def __init__(self, writer: StructuredLogWriter | None = None):
        super().__init__(level=logging.INFO)
        self._writer = writer or _writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._writer.write(record.levelname, message, current_trace(), logger=record.name)
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)


# Cloud Run's metadata server: the id of the instance serving (asked once per instance).
METADATA_INSTANCE_ID_URL = "http://metadata.google.internal/computeMetadata/v1/instance/id"
_INSTANCE_ID = re.compile(r"[0-9A-Za-z._-]{1,256}")


class ServingInstance:
    """What serves the requests, reported in each JSON response: the revision (the
    platform's ``K_REVISION``) and, on the platform, the instance id from the metadata
    server (asked on the first request, then cached; unknown if it does not answer)."""

    def __init__(
        self, revision: str | None = None, instance_id_url: str = METADATA_INSTANCE_ID_URL
    ):
        self.revision = revision
        self._instance_id_url = instance_id_url
        self._instance_id: str | None = None
        self._asked = False
        self._lock = threading.Lock()

    def fields(self) -> dict[str, str]:
        if self.revision is None:  # not on Cloud Run: no metadata server to ask
            return {}
        with self._lock:
            if not self._asked:
                self._asked = True
                self._instance_id = _fetch_instance_id(self._instance_id_url)
        fields = {"revision": self.revision}
        if self._instance_id:
            fields["instance_id"] = self._instance_id
        return fields


def _fetch_instance_id(url: str) -> str | None:
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=1.0) as answer:
            value = answer.read(512).decode("ascii").strip()
    except (OSError, ValueError):
        return None
    return value if _INSTANCE_ID.fullmatch(value) else None


_writer = StructuredLogWriter()
_serving = ServingInstance()


def install_structured_logging(
    project: str | None,
    revision: str | None = None,
    *,
    instance_id_url: str = METADATA_INSTANCE_ID_URL,
) -> None:
    """Call once at start. ``project`` (the function's ``GOOGLE_CLOUD_PROJECT``) names the
    trace of each line, ``projects/<project>/traces/<id>``; ``revision`` (the platform's
    ``K_REVISION``, unset locally) and the instance are reported in every JSON response, so
    the caller knows what served it."""
    global _serving
    _writer.project = project
    _serving = ServingInstance(revision, instance_id_url)


def request_log_handler() -> StructuredLogHandler:
    """A handler for the current request's Pipes logger: its lines reach stdout too."""
    return StructuredLogHandler(_writer, current_trace())


P = ParamSpec("P")
HttpHandler: TypeAlias = "Callable[P, tuple[flask.Response, int]]"


def traced_request(handler: HttpHandler[P]) -> HttpHandler[P]:
    """Wrap an HTTP handler whose first argument is the request: its log lines carry the
    request's trace and labels, a line is written when the request arrives and when it is
    answered, and a JSON response body gets ``trace_id``, ``revision`` and ``instance_id``
    when known."""

    @functools.wraps(handler)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> tuple[flask.Response, int]:
        import flask  # loaded already: the handler serves a flask request

        request = args[0] if args else kwargs["request"]
        headers: Headers = request.headers if isinstance(request, flask.Request) else {}
        trace = RequestTrace.from_headers(headers)
        started = time.monotonic()
        _writer.write("INFO", "request received", trace)
        with request_trace(trace):
            response, status = handler(*args, **kwargs)
        _annotate(response, trace)
        elapsed = time.monotonic() - started
        severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        _writer.write(severity, f"answered HTTP {status} in {elapsed:.3f}s", trace)
        return response, status

    return wrapper


def _annotate(response: flask.Response, trace: RequestTrace) -> None:
    serving = _serving.fields()
    if response.mimetype != "application/json" or not (trace.trace_id or serving):
        return
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return
    if isinstance(body, dict):
        if trace.trace_id:
            body["trace_id"] = trace.trace_id
        body.update(serving)
        response.set_data(json.dumps(body))
