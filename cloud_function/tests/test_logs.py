"""Structured log lines: trace and Dagster labels from untrusted headers, one JSON object a line."""

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import flask
import pytest
from dagster_pipes import PipesContext

from devstack.fake_gcs import FakeClient
from gcf_pipes import WriterSettings, handle_pipes_request, install_logging_bridge
from gcf_pipes.logs import (
    LABELS_KEY,
    SPAN_KEY,
    TRACE_KEY,
    RequestTrace,
    ServingInstance,
    StructuredLogWriter,
    install_structured_logging,
)

from .conftest import PIPES_BUCKET, pipes_body
from .conftest import messages as messages_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"
app = flask.Flask(__name__)


def test_a_w3c_traceparent_gives_trace_span_and_sampling() -> None:
    trace = RequestTrace.from_headers({"traceparent": TRACEPARENT})
    assert (trace.trace_id, trace.span_id, trace.sampled) == (TRACE, SPAN, True)
    unsampled = RequestTrace.from_headers({"traceparent": f"00-{TRACE}-{SPAN}-00"})
    assert unsampled.trace_id == TRACE and unsampled.sampled is False


def test_a_future_traceparent_version_is_read_by_its_known_fields() -> None:
    trace = RequestTrace.from_headers({"traceparent": f"01-{TRACE}-{SPAN}-01-extra"})
    assert trace.trace_id == TRACE and trace.span_id == SPAN


def test_the_cloud_trace_header_is_the_fallback_with_a_decimal_span() -> None:
    trace = RequestTrace.from_headers({"X-Cloud-Trace-Context": f"{TRACE.upper()}/123;o=1"})
    assert (trace.trace_id, trace.span_id, trace.sampled) == (TRACE, f"{123:016x}", True)
    both = RequestTrace.from_headers(
        {"traceparent": TRACEPARENT, "X-Cloud-Trace-Context": f"{'1' * 32}/5;o=1"}
    )
    assert both.trace_id == TRACE, "traceparent wins"
    without_span = RequestTrace.from_headers({"X-Cloud-Trace-Context": TRACE})
    assert (without_span.trace_id, without_span.span_id) == (TRACE, None)
    assert SPAN_KEY not in without_span.fields("p")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": ""},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"},  # W3C ids are lowercase
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},  # all-zero trace id
        {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},  # all-zero span id
        {"traceparent": f"ff-{TRACE}-{SPAN}-01"},  # forbidden version
        {"traceparent": f"00-{TRACE}-{SPAN}-01-more"},  # version 00 has four fields
        {"traceparent": f'00-{TRACE}-{SPAN}-01\n{{"severity": "ALERT"}}'},
        {"traceparent": f"01-{TRACE}-{SPAN}-01-" + "x" * 1000},  # too long
        {"X-Cloud-Trace-Context": f"{TRACE}/{2**64};o=1"},  # span beyond 64 bits
        {"X-Cloud-Trace-Context": f"{TRACE}/0;o=1"},
        {"X-Cloud-Trace-Context": f"{TRACE[:-1]}/1"},
        {"X-Cloud-Trace-Context": f'{TRACE}/1;o=1" injected'},
    ],
)
def test_a_malformed_trace_header_is_ignored_without_failing(headers: dict[str, str]) -> None:
    trace = RequestTrace.from_headers(headers)
    assert trace.trace_id is None and trace.span_id is None
    assert TRACE_KEY not in trace.fields("proj")


def test_well_formed_dagster_headers_become_labels_and_bad_ones_are_left_out() -> None:
    trace = RequestTrace.from_headers(
        {
            "X-Dagster-Run-Id": "2f1e7a0c-6a55-4e0c-9d1b-2b1f4c1d2e3f",
            "X-Dagster-Asset-Key": "x" * 257,  # too long
            "X-Dagster-Partition-Key": "2024-01-01\r\nX-Evil: 1",  # control characters
            "X-Dagster-Invocation-Id": "caf\u00e9",  # not ASCII
        }
    )
    assert trace.labels == {"dagster_run_id": "2f1e7a0c-6a55-4e0c-9d1b-2b1f4c1d2e3f"}
    labelled = RequestTrace.from_headers(
        {"X-Dagster-Asset-Key": "people/daily", "X-Dagster-Partition-Key": "2024-01-01..2024-01-31"}
    )
    assert labelled.labels == {
        "dagster_asset_key": "people/daily",
        "dagster_partition_key": "2024-01-01..2024-01-31",
    }


def test_the_trace_names_the_project_when_known() -> None:
    trace = RequestTrace.from_headers({"traceparent": TRACEPARENT, "X-Dagster-Run-Id": "r1"})
    assert trace.fields("my-proj") == {
        TRACE_KEY: f"projects/my-proj/traces/{TRACE}",
        SPAN_KEY: SPAN,
        "logging.googleapis.com/trace_sampled": True,
        LABELS_KEY: {"dagster_run_id": "r1"},
    }
    assert trace.fields(None)[TRACE_KEY] == TRACE


def test_each_entry_is_one_json_line_whatever_the_message() -> None:
    out = io.StringIO()
    writer = StructuredLogWriter("p", stream=lambda: out)
    trace = RequestTrace.from_headers({"traceparent": TRACEPARENT})
    writer.write("INFO", 'two\nlines "quoted" }{', trace)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == 'two\nlines "quoted" }{' and entry["severity"] == "INFO"
    assert entry[TRACE_KEY] == f"projects/p/traces/{TRACE}"


# --- through the HTTP wrapper ----------------------------------------------------------------


class MetadataServer(BaseHTTPRequestHandler):
    """Answers like Cloud Run's metadata server, only to requests that say Metadata-Flavor."""

    calls: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.calls.append(self.path)
        ok = self.headers.get("Metadata-Flavor") == "Google"
        self.send_response(200 if ok else 403)
        self.end_headers()
        self.wfile.write(b"00f4a1b2c3d4e5" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata_url() -> Iterator[str]:
    MetadataServer.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetadataServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/computeMetadata/v1/instance/id"
    server.shutdown()
    server.server_close()


@pytest.fixture
def project(metadata_url: str) -> Iterator[None]:
    install_structured_logging("my-proj", "people-00042-abc", instance_id_url=metadata_url)
    yield
    install_structured_logging(None, None)


def chatty_job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    pipes.log.info("working on it")
    return {}


def call(headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    client = FakeClient()
    client.create_bucket(PIPES_BUCKET)
    with app.test_request_context("/", method="POST", json=pipes_body(), headers=headers):
        response, status = handle_pipes_request(
            flask.request,
            chatty_job,
            storage_client=client,  # type: ignore[arg-type]
            pipes_bucket=PIPES_BUCKET,
            writer_settings=WriterSettings(flush_interval=0.01),
        )
    return status, json.loads(response.get_data())


def stdout_entries(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_request_s_lines_carry_its_trace_and_labels(
    project: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = call({"traceparent": TRACEPARENT, "X-Dagster-Run-Id": "run-1"})

    assert status == 200
    assert body["trace_id"] == TRACE and body["revision"] == "people-00042-abc"
    assert body["instance_id"] == "00f4a1b2c3d4e5"
    entries = stdout_entries(capsys)
    messages = [entry["message"] for entry in entries]
    assert messages[0] == "request received" and "working on it" in messages
    assert messages[-1].startswith("answered HTTP 200 in ")
    for entry in entries:
        assert entry[TRACE_KEY] == f"projects/my-proj/traces/{TRACE}"
        assert entry[LABELS_KEY] == {"dagster_run_id": "run-1"}


def test_a_request_with_a_malformed_trace_is_served_and_logged_without_one(
    project: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = call({"traceparent": "00-not-a-trace", "X-Cloud-Trace-Context": "nope"})

    assert status == 200 and "trace_id" not in body
    entries = stdout_entries(capsys)
    assert entries and all(TRACE_KEY not in entry for entry in entries)


def test_the_instance_id_is_asked_once_and_only_on_the_platform(metadata_url: str) -> None:
    serving = ServingInstance("people-00042-abc", metadata_url)
    assert serving.fields() == {"revision": "people-00042-abc", "instance_id": "00f4a1b2c3d4e5"}
    assert serving.fields()["instance_id"] == "00f4a1b2c3d4e5"
    assert len(MetadataServer.calls) == 1
    assert ServingInstance(None, metadata_url).fields() == {}, "locally: no revision"
    assert len(MetadataServer.calls) == 1


def test_an_unreachable_metadata_server_leaves_the_instance_unknown() -> None:
    serving = ServingInstance("people-00042-abc", "http://127.0.0.1:9/instance/id")
    assert serving.fields() == {"revision": "people-00042-abc"}


# --- records that do not go to Dagster still reach stdout ------------------------------------

OUTSIDE_A_REQUEST = """
import logging
from gcf_pipes import install_logging_bridge, install_structured_logging

install_logging_bridge()
install_structured_logging("my-proj")
logging.getLogger("gcf_pipes.http").warning("cancelled too late: the job had finished")
logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
logging.getLogger("business").info("loaded at start")
logging.getLogger("business").debug("below the level")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("business").exception("failed at start")
"""


def test_records_outside_a_request_are_structured_lines_on_stdout() -> None:
    done = subprocess.run(
        [sys.executable, "-c", OUTSIDE_A_REQUEST],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["severity"], e["message"].splitlines()[0], e["logger"]) for e in entries] == [
        ("WARNING", "cancelled too late: the job had finished", "gcf_pipes.http"),
        ("WARNING", "Retrying after connection broken", "urllib3.connectionpool"),
        ("INFO", "loaded at start", "business"),
        ("ERROR", "failed at start", "business"),
    ]
    assert "ZeroDivisionError: division by zero" in entries[-1]["message"]
    assert all(TRACE_KEY not in entry for entry in entries)
    assert "cancelled too late" not in done.stderr, "once is enough"


def test_in_a_request_each_record_is_one_line_with_its_trace_forwarded_or_not(
    project: None, capsys: pytest.CaptureFixture[str]
) -> None:
    install_logging_bridge()
    client = FakeClient()
    client.create_bucket(PIPES_BUCKET)

    def job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        logging.getLogger("business").info("to Dagster")
        logging.getLogger("urllib3.connectionpool").warning("transport noise")
        return {}

    headers = {"traceparent": TRACEPARENT}
    with app.test_request_context("/", method="POST", json=pipes_body(), headers=headers):
        handle_pipes_request(
            flask.request,
            job,
            storage_client=client,  # type: ignore[arg-type]
            pipes_bucket=PIPES_BUCKET,
            writer_settings=WriterSettings(flush_interval=0.01),
        )
    logging.getLogger("gcf_pipes.http").warning("after the request")

    entries = stdout_entries(capsys)
    by_message = {entry["message"]: entry for entry in entries}
    messages = [entry["message"] for entry in entries]
    assert messages.count("to Dagster") == 1 and messages.count("transport noise") == 1
    assert by_message["transport noise"][TRACE_KEY] == f"projects/my-proj/traces/{TRACE}"
    assert by_message["to Dagster"][TRACE_KEY] == f"projects/my-proj/traces/{TRACE}"
    assert TRACE_KEY not in by_message["after the request"]
    pipes_lines = [m["params"]["message"] for m in messages_of(client) if m["method"] == "log"]
    assert pipes_lines == ["to Dagster"]
