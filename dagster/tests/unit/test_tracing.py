"""Trace headers per call, where a function runs (from its URL) and its Cloud Logging link."""

import re
from datetime import UTC, datetime
from urllib.parse import unquote

import dagster as dg
import pytest

from dagster_pipes_gcf.invocation import CloudFunctionError
from dagster_pipes_gcf.tracing import CallTrace, FunctionLocation


@pytest.mark.parametrize(
    ("url", "project"),
    [
        ("https://europe-west4-my-proj.cloudfunctions.net/people_fn?x=1", "my-proj"),
        ("https://northamerica-northeast1-acme-data-42.cloudfunctions.net/people", "acme-data-42"),
        ("https://europe-west4-X.cloudfunctions.net/people", None),
        ("https://people-123456789012.europe-west1.run.app/", None),
        ("https://dagster-pipes-gcp-uc4nxbnnua-ez.a.run.app", None),
        ("https://people.example.com/run", None),
        ("http://127.0.0.1:8080", None),
    ],
)
def test_only_a_cloudfunctions_net_url_names_the_project(url: str, project: str | None) -> None:
    assert FunctionLocation.from_url(url) == FunctionLocation(project)


def test_a_configured_project_overrides_the_url() -> None:
    url = "https://europe-west4-my-proj.cloudfunctions.net/people"
    assert trace_for(url, location=FunctionLocation("other-proj")).project == "other-proj"
    assert trace_for(url, location=FunctionLocation()).project == "my-proj"


def test_an_invalid_project_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid"):
        FunctionLocation("My Project")


def trace_for(url: str, **kwargs: object) -> CallTrace:
    defaults: dict[str, object] = {"run_id": "run-1", "asset_key": "people", "partition_key": ""}
    return CallTrace.start(url, **{**defaults, **kwargs})  # type: ignore[arg-type]


def test_the_headers_carry_one_trace_in_both_formats_and_the_dagster_labels() -> None:
    trace = trace_for(
        "https://people-x-ew.a.run.app", asset_key="a/b,c", partition_key="2024-01-01..2024-01-31"
    )
    headers = trace.headers
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace.trace_id, "01")
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and re.fullmatch(r"[0-9a-f]{16}", span_id)
    assert headers["X-Cloud-Trace-Context"] == f"{trace_id}/{int(span_id, 16)};o=1"
    assert headers["X-Dagster-Run-Id"] == "run-1"
    assert headers["X-Dagster-Asset-Key"] == "a/b,c"
    assert headers["X-Dagster-Partition-Key"] == "2024-01-01..2024-01-31"


def test_every_call_gets_its_own_trace() -> None:
    ids = {trace_for("http://127.0.0.1:8080").trace_id for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize("partition", ["", "caf\u00e9", "x" * 257, "a\r\nX-Evil: 1"])
def test_a_label_the_function_would_drop_is_not_sent(partition: str) -> None:
    assert "X-Dagster-Partition-Key" not in trace_for("http://h", partition_key=partition).headers


def test_the_logging_link_shows_exactly_the_call() -> None:
    trace = trace_for("https://europe-west4-my-proj.cloudfunctions.net/people")
    trace = CallTrace(**{**trace.__dict__, "started": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    url = trace.logging_url
    assert url is not None
    assert url.startswith("https://console.cloud.google.com/logs/query;query=")
    assert url.endswith("?project=my-proj")
    query = unquote(url.split(";query=")[1].split(";")[0])
    assert query == f'trace="projects/my-proj/traces/{trace.trace_id}"'
    assert ";timeRange=2026-01-02T02:59:05Z%2F2026-01-02T04:04:05Z?" in url
    assert trace.describe() == f"trace {trace.trace_id}, logs: {url}"


def test_no_link_without_a_project() -> None:
    trace = trace_for("https://people-x-ew.a.run.app")
    assert trace.logging_url is None
    assert trace.metadata() == {"trace_id": trace.trace_id}
    configured = trace_for("https://people-x-ew.a.run.app", location=FunctionLocation("proj-123"))
    assert f"projects%2Fproj-123%2Ftraces%2F{configured.trace_id}" in (configured.logging_url or "")


def test_the_metadata_has_the_trace_the_link_and_a_well_formed_revision_and_instance() -> None:
    trace = trace_for("https://europe-west4-my-proj.cloudfunctions.net/people")
    metadata = trace.metadata(
        {"revision": "people-00042-abc", "instance_id": "00f4a1b2", "trace_id": "ignored"}
    )
    assert metadata["trace_id"] == trace.trace_id
    assert metadata["cloud_logging_url"] == dg.MetadataValue.url(trace.logging_url or "")
    assert metadata["function_revision"] == "people-00042-abc"
    assert metadata["function_instance"] == "00f4a1b2"
    hostile = trace.metadata({"revision": "<script>", "instance_id": "a b"})
    assert "function_revision" not in hostile and "function_instance" not in hostile
    assert "function_revision" not in trace.metadata(None)


def test_a_failed_call_carries_the_trace_in_its_metadata() -> None:
    trace = trace_for("https://europe-west4-my-proj.cloudfunctions.net/people")
    with pytest.raises(CloudFunctionError) as raised:
        with trace.annotating_failures():
            raise CloudFunctionError(description="HTTP 500", metadata={"status": 500})
    assert raised.value.description == "HTTP 500"
    assert raised.value.metadata["trace_id"] == dg.MetadataValue.text(trace.trace_id)
    assert raised.value.metadata["status"] == dg.MetadataValue.int(500)
    assert "cloud_logging_url" in raised.value.metadata


@pytest.mark.parametrize("may_still_run", [True, False])
def test_an_annotated_failure_still_says_whether_the_function_may_still_run(
    may_still_run: bool,
) -> None:
    trace = trace_for("https://europe-west4-my-proj.cloudfunctions.net/people")
    error = CloudFunctionError(description="read timeout")
    error.function_may_still_run = may_still_run
    with pytest.raises(CloudFunctionError) as raised:
        with trace.annotating_failures():
            raise error
    assert "trace_id" in raised.value.metadata
    assert raised.value.function_may_still_run is may_still_run
    # The same error, annotated: a copy raised from it would print the chain twice.
    assert raised.value is error and raised.value.__cause__ is None
