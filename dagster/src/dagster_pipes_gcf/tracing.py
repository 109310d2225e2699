"""Every call traceable: one trace per ``run()`` call, sent with each HTTP attempt, and a
Cloud Logging link to the function's log lines of that trace (``gcf_pipes.logs``)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import dagster as dg

from dagster_pipes_gcf.invocation import CloudFunctionError

LOGS_CONSOLE = "https://console.cloud.google.com/logs/query"
_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
# https://REGION-PROJECT.cloudfunctions.net/NAME, REGION as in us-central1 or europe-west4.
_CLOUDFUNCTIONS_HOST = re.compile(r"[a-z]+-[a-z]+[0-9]+-(?P<project>.+)\.cloudfunctions\.net")
# What the function keeps as a log label (gcf_pipes.logs): printable ASCII, 1-256 characters.
_LABEL = re.compile(r"[\x20-\x7e]{1,256}")
# Fields of the function's answer kept in the metadata, if well-formed.
_ANSWER_FIELDS = {
    "function_revision": ("revision", re.compile(r"[a-z0-9][a-z0-9-]{0,127}")),
    "function_instance": ("instance_id", re.compile(r"[0-9A-Za-z._-]{1,256}")),
}


@dataclass(frozen=True)
class FunctionLocation:
    """The Google Cloud project a function runs in, for its Cloud Logging link: a
    ``https://REGION-PROJECT.cloudfunctions.net/NAME`` URL names it, a ``run.app`` one does not.
    """

    project: str | None = None

    def __post_init__(self) -> None:
        if self.project is not None and not _PROJECT_ID.fullmatch(self.project):
            raise ValueError(f"FunctionLocation.project {self.project!r} is not a valid project")

    @classmethod
    def from_url(cls, url: str) -> FunctionLocation:
        """The project a ``cloudfunctions.net`` URL names (None for any other URL)."""
        match = _CLOUDFUNCTIONS_HOST.fullmatch(urlsplit(url).hostname or "")
        project = match["project"] if match else ""
        return cls(project if _PROJECT_ID.fullmatch(project) else None)


@dataclass(frozen=True)
class CallTrace:
    """The trace of one ``run()`` call: its ids, request headers, log link and metadata."""

    trace_id: str
    span_id: str
    run_id: str
    asset_key: str
    partition_key: str
    project: str | None
    started: datetime

    @classmethod
    def start(
        cls,
        function_url: str,
        *,
        run_id: str,
        asset_key: str,
        partition_key: str = "",
        location: FunctionLocation | None = None,
    ) -> CallTrace:
        """A new trace for a call to ``function_url``; ``location`` overrides its project."""
        project = (location and location.project) or FunctionLocation.from_url(function_url).project
        # W3C trace context: random, and never all zeros.
        trace_id, span_id = (
            f"{secrets.randbits(128) or 1:032x}",
            f"{secrets.randbits(64) or 1:016x}",
        )
        return cls(trace_id, span_id, run_id, asset_key, partition_key, project, datetime.now(UTC))

    @property
    def headers(self) -> dict[str, str]:
        """Sent with every HTTP attempt; a label only when the function would keep it."""
        labels = {
            "X-Dagster-Run-Id": self.run_id,
            "X-Dagster-Asset-Key": self.asset_key,
            "X-Dagster-Partition-Key": self.partition_key,
        }
        return {
            "traceparent": f"00-{self.trace_id}-{self.span_id}-01",
            "X-Cloud-Trace-Context": f"{self.trace_id}/{int(self.span_id, 16)};o=1",
            **{name: value for name, value in labels.items() if _LABEL.fullmatch(value)},
        }

    @property
    def logging_url(self) -> str | None:
        """A Cloud Logging link to exactly this call's log lines (None without a project)."""
        if self.project is None:
            return None
        query = f'trace="projects/{self.project}/traces/{self.trace_id}"'
        since, until = self.started - timedelta(minutes=5), self.started + timedelta(hours=1)
        time_range = f"{since:%Y-%m-%dT%H:%M:%SZ}/{until:%Y-%m-%dT%H:%M:%SZ}"
        return (
            f"{LOGS_CONSOLE};query={quote(query, safe='')}"
            f";timeRange={quote(time_range, safe=':')}?project={self.project}"
        )

    def describe(self) -> str:
        """For the run's log: the trace id and, when known, where the call's logs are."""
        url = self.logging_url
        return f"trace {self.trace_id}" + (f", logs: {url}" if url else "")

    def metadata(self, response_body: Any = None) -> dict[str, Any]:
        """``trace_id``, ``cloud_logging_url``, and the ``function_revision`` and
        ``function_instance`` that served the call when its answer names them well-formed."""
        metadata: dict[str, Any] = {"trace_id": self.trace_id}
        if self.logging_url:
            metadata["cloud_logging_url"] = dg.MetadataValue.url(self.logging_url)
        body = response_body if isinstance(response_body, dict) else {}
        for key, (field, pattern) in _ANSWER_FIELDS.items():
            if isinstance(value := body.get(field), str) and pattern.fullmatch(value):
                metadata[key] = value
        return metadata

    @contextmanager
    def annotating_failures(self) -> Iterator[None]:
        """A :class:`CloudFunctionError` raised inside carries this trace's metadata too."""
        try:
            yield
        except CloudFunctionError as error:
            # Annotated in place: a copy raised from it would print the same error twice.
            error.metadata = {**error.metadata, **dg.Failure(metadata=self.metadata()).metadata}
            raise
