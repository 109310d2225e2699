"""Every call traceable: trace headers per invocation and a Cloud Logging link for that call.

The client sends a W3C ``traceparent`` and its Cloud Trace equivalent
``X-Cloud-Trace-Context`` (same trace id, sampled) with every HTTP attempt of one ``run()``
call, plus ``X-Dagster-Run-Id``, ``X-Dagster-Asset-Key`` and ``X-Dagster-Partition-Key``.
Cloud Run keeps the trace id, and the function's structured log lines
(``gcf_pipes.logs``) carry it, so one Cloud Logging query finds exactly that call's lines.
"""

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

TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"
RUN_ID_HEADER = "X-Dagster-Run-Id"
ASSET_KEY_HEADER = "X-Dagster-Asset-Key"
PARTITION_KEY_HEADER = "X-Dagster-Partition-Key"
# The function drops a label longer than this (gcf_pipes.logs.MAX_LABEL_CHARS).
MAX_LABEL_CHARS = 256
LOGS_CONSOLE = "https://console.cloud.google.com/logs/query"

_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
# Cloud regions are "<area>-<direction><n>": us-central1, europe-west4, northamerica-northeast2.
_REGION = r"[a-z]+-[a-z]+[0-9]+"
_REGION_ID = re.compile(_REGION)
_SERVICE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
# https://REGION-PROJECT.cloudfunctions.net/NAME
_CLOUDFUNCTIONS_HOST = re.compile(rf"(?P<region>{_REGION})-(?P<project>[a-z][a-z0-9-]+)")
# https://SERVICE-PROJECTNUMBER.REGION.run.app (deterministic URL)
_RUN_APP_DETERMINISTIC = re.compile(rf"(?P<service>[a-z0-9-]+)-[0-9]+\.(?P<region>{_REGION})")
# https://SERVICE-HASH-REGIONCODE.a.run.app (the region code does not say which region)
_RUN_APP_HASHED = re.compile(r"(?P<service>[a-z0-9-]+)-[a-z0-9]+-[a-z]{2,4}\.a")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_REVISION = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_INSTANCE_ID = re.compile(r"[0-9A-Za-z._-]{1,256}")


@dataclass(frozen=True)
class FunctionLocation:
    """Where a deployed function runs, as far as its URL (or configuration) says.

    Set any field to override what the URL gives; ``project`` is needed for a Cloud Logging
    link and only the ``cloudfunctions.net`` URL form contains it (``run.app`` URLs carry the
    project number or nothing).
    """

    project: str | None = None
    region: str | None = None
    service: str | None = None

    def __post_init__(self) -> None:
        checks = [
            ("project", self.project, _PROJECT_ID),
            ("region", self.region, _REGION_ID),
            ("service", self.service, _SERVICE),
        ]
        for name, value, pattern in checks:
            if value is not None and not pattern.fullmatch(value):
                raise ValueError(f"FunctionLocation.{name} {value!r} is not a valid {name}")

    @classmethod
    def from_url(cls, url: str) -> FunctionLocation:
        """Project, region and service from a function URL (unknown parts are None)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host.endswith(".cloudfunctions.net"):
            match = _CLOUDFUNCTIONS_HOST.fullmatch(host.removesuffix(".cloudfunctions.net"))
            name = parts.path.strip("/").split("/")[0]
            if match and _PROJECT_ID.fullmatch(match["project"]):
                return cls(match["project"], match["region"], _service_name(name))
            return cls(service=_service_name(name))
        if host.endswith(".run.app"):
            prefix = host.removesuffix(".run.app")
            match = _RUN_APP_DETERMINISTIC.fullmatch(prefix)
            if match:
                return cls(region=match["region"], service=_service_name(match["service"]))
            match = _RUN_APP_HASHED.fullmatch(prefix)
            if match:
                return cls(service=_service_name(match["service"]))
        return cls()

    def overridden_by(self, explicit: FunctionLocation | None) -> FunctionLocation:
        if explicit is None:
            return self
        return FunctionLocation(
            project=explicit.project or self.project,
            region=explicit.region or self.region,
            service=explicit.service or self.service,
        )


def _service_name(function_name: str) -> str | None:
    """The Cloud Run service of a 2nd-gen function: its name in lowercase, ``_`` as ``-``."""
    service = function_name.lower().replace("_", "-")
    return service if _SERVICE.fullmatch(service) else None


@dataclass(frozen=True)
class CallTrace:
    """The trace of one ``run()`` call: its ids, request headers, log link and metadata."""

    trace_id: str
    span_id: str
    run_id: str
    asset_key: str
    partition_key: str
    location: FunctionLocation
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
        """A new trace for a call to ``function_url``; ``location`` overrides what the URL
        says about where the function runs."""
        return cls(
            trace_id=_random_hex_id(16),
            span_id=_random_hex_id(8),
            run_id=run_id,
            asset_key=asset_key,
            partition_key=partition_key,
            location=FunctionLocation.from_url(function_url).overridden_by(location),
            started=datetime.now(UTC),
        )

    @property
    def headers(self) -> dict[str, str]:
        """Sent with every HTTP attempt of the call (labels only when the function would
        accept them: printable ASCII, at most 256 characters)."""
        headers = {
            TRACEPARENT_HEADER: f"00-{self.trace_id}-{self.span_id}-01",
            CLOUD_TRACE_HEADER: f"{self.trace_id}/{int(self.span_id, 16)};o=1",
        }
        labels = {
            RUN_ID_HEADER: self.run_id,
            ASSET_KEY_HEADER: self.asset_key,
            PARTITION_KEY_HEADER: self.partition_key,
        }
        headers.update({name: value for name, value in labels.items() if _is_label(value)})
        return headers

    @property
    def logging_url(self) -> str | None:
        """A Cloud Logging link showing exactly this call's log lines (None without a
        project: a local function, or a ``run.app`` URL and no project configured)."""
        location = self.location
        if location.project is None:
            return None
        query = []
        if location.service:
            query += [
                'resource.type="cloud_run_revision"',
                f'resource.labels.service_name="{location.service}"',
            ]
        if location.region:
            query.append(f'resource.labels.location="{location.region}"')
        query.append(f'trace="projects/{location.project}/traces/{self.trace_id}"')
        time_range = (
            f"{_iso(self.started - timedelta(minutes=5))}/{_iso(self.started + timedelta(hours=1))}"
        )
        return (
            f"{LOGS_CONSOLE};query={quote(chr(10).join(query), safe='')}"
            f";timeRange={quote(time_range, safe=':')}?project={location.project}"
        )

    def describe(self) -> str:
        """For the run's log: the trace id and, when known, where the call's logs are."""
        url = self.logging_url
        return f"trace {self.trace_id}" + (f", logs: {url}" if url else "")

    def metadata(self, response_body: Any = None) -> dict[str, Any]:
        """``trace_id``, ``cloud_logging_url`` and what served the call,
        ``function_revision`` and ``function_instance`` (when the function reports them),
        for the materialization or the failure."""
        metadata: dict[str, Any] = {"trace_id": self.trace_id}
        if self.logging_url:
            metadata["cloud_logging_url"] = dg.MetadataValue.url(self.logging_url)
        body = response_body if isinstance(response_body, dict) else {}
        revision, instance = body.get("revision"), body.get("instance_id")
        if isinstance(revision, str) and _REVISION.fullmatch(revision):
            metadata["function_revision"] = revision
        if isinstance(instance, str) and _INSTANCE_ID.fullmatch(instance):
            metadata["function_instance"] = instance
        return metadata

    @contextmanager
    def annotating_failures(self) -> Iterator[None]:
        """A :class:`CloudFunctionError` raised inside carries this trace's metadata too, and
        keeps saying whether the function may still run."""
        try:
            yield
        except CloudFunctionError as error:
            # Annotated in place: a copy raised from it would print the same error twice.
            normalized = dg.Failure(metadata=self.metadata()).metadata
            error.metadata = {**error.metadata, **normalized}
            raise


def _random_hex_id(n_bytes: int) -> str:
    while True:  # an all-zero id is invalid in both header formats
        value = secrets.token_hex(n_bytes)
        if int(value, 16):
            return value


def _is_label(value: str) -> bool:
    return 0 < len(value) <= MAX_LABEL_CHARS and bool(_PRINTABLE.fullmatch(value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
