"""The fault proxy: request classes, the strict control endpoint, and each fault as a client
sees it (against a small upstream in this process; the real stack is in test_faults.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests

from devstack.fault_proxy import FaultProxy, classify, serve
from devstack.net import LOOPBACK, free_port

UPLOAD_BODY = (
    b"--b\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
    b'{"name": "runs/r1/1/3.json", "contentType": "application/x-ndjson"}\r\n--b\r\n'
    b"Content-Type: application/x-ndjson\r\n\r\n{}\r\n--b--\r\n"
)


@pytest.mark.parametrize(
    ("method", "target", "body", "expected"),
    [
        ("POST", "/upload/storage/v1/b/pipes/o?uploadType=multipart&ifGenerationMatch=0",
         UPLOAD_BODY, "chunk_upload"),
        ("POST", "/upload/storage/v1/b/pipes/o?uploadType=multipart",
         UPLOAD_BODY.replace(b"3.json", b"cancel"), None),
        ("GET", "/download/storage/v1/b/pipes/o/runs%2Fr1%2F1%2Fcancel?alt=media", b"",
         "cancel_read"),
        ("GET", "/storage/v1/b/pipes/o/runs%2Fr1%2F1%2F3.json?alt=media", b"", None),
        ("PUT", "/lake/t/people/part-00001-abc-c000.snappy.parquet", b"x", "data_upload"),
        ("POST", "/lake/t/people/part-1.parquet?uploads", b"", "data_upload"),
        ("PUT", "/lake/t/people/part-1.parquet?partNumber=1&uploadId=u", b"x", "data_upload"),
        ("PUT", "/lake/t/people/_delta_log/00000000000000000001.json", b"{}", "commit"),
        ("PUT", "/lake/t/people/_delta_log/_last_checkpoint", b"{}", None),
        ("GET", "/lake/t/people/_delta_log/00000000000000000001.json", b"", None),
        ("GET", "/lake?list-type=2&prefix=t%2Fpeople%2F_delta_log%2F", b"", "list"),
        ("GET", "/storage/v1/b/pipes/o?prefix=runs%2F", b"", "list"),
    ],
)  # fmt: skip
def test_requests_are_classified_as_the_project_uses_them(
    method: str, target: str, body: bytes, expected: str | None
) -> None:
    assert classify(method, target, body) == expected


class Upstream(BaseHTTPRequestHandler):
    """Answers every request 200 with its method and path, and counts what it served."""

    protocol_version = "HTTP/1.1"
    served: ClassVar[list[str]] = []

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Upstream.served.append(f"{self.command} {self.path}")
        body = json.dumps({"served": f"{self.command} {self.path}"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    upstream = ThreadingHTTPServer((LOOPBACK, free_port()), Upstream)
    server = serve(free_port(), f"http://{LOOPBACK}:{upstream.server_address[1]}")
    for running in (upstream, server):
        threading.Thread(target=running.serve_forever, daemon=True).start()
    Upstream.served = []
    yield server
    for running in (server, upstream):
        running.shutdown()
        running.server_close()


COMMIT = "/lake/t/_delta_log/00000000000000000001.json"


def configure(proxy: FaultProxy, spec: Any) -> requests.Response:
    return requests.post(f"{proxy.url}/_faults", json=spec, timeout=5)


@pytest.mark.parametrize(
    "spec",
    [
        {"class": "commits", "fault": "503"},
        {"class": "commit", "fault": "500"},
        {"class": "commit", "fault": "503", "count": 1},
        {"class": "commit", "fault": "503", "times": 0},
        {"class": "commit", "fault": "503", "times": True},
        {"class": "commit", "fault": "delay"},
        {"class": "commit", "fault": "503", "delay_s": 1},
        {"class": "commit", "fault": "delay", "delay_s": -1},
        ["commit", "503"],
    ],
)
def test_an_unknown_class_fault_or_field_is_refused(proxy: FaultProxy, spec: Any) -> None:
    answer = configure(proxy, spec)

    assert answer.status_code == 400, answer.text
    assert requests.get(f"{proxy.url}/_faults", timeout=5).json()["pending"] == []


def test_a_head_passes_on_the_objects_size(proxy: FaultProxy) -> None:
    """object_store sizes a file by its HEAD before reading it: a length of 0 reads nothing."""
    through = requests.head(f"{proxy.url}{COMMIT}", timeout=5)
    upstream_body = json.dumps({"served": f"HEAD {COMMIT}"}).encode()

    assert through.status_code == 200
    assert through.headers["Content-Length"] == str(len(upstream_body))


@pytest.mark.parametrize("status", [503, 429])
def test_an_error_status_is_answered_without_passing_the_request_on(
    proxy: FaultProxy, status: int
) -> None:
    assert configure(proxy, {"class": "commit", "fault": str(status)}).status_code == 200

    first = requests.put(f"{proxy.url}{COMMIT}", data=b"{}", timeout=5)
    second = requests.put(f"{proxy.url}{COMMIT}", data=b"{}", timeout=5)

    assert (first.status_code, second.status_code) == (status, 200)
    assert Upstream.served == [f"PUT {COMMIT}"]


@pytest.mark.parametrize(("fault", "served"), [("reset", 0), ("reset_after_upstream", 1)])
def test_a_reset_closes_the_connection_without_an_answer(
    proxy: FaultProxy, fault: str, served: int
) -> None:
    configure(proxy, {"class": "commit", "fault": fault})

    with pytest.raises(requests.ConnectionError):
        requests.put(f"{proxy.url}{COMMIT}", data=b"{}", timeout=5)

    assert len(Upstream.served) == served


def test_a_delay_holds_the_request_then_passes_it_on_and_after_skips_requests(
    proxy: FaultProxy,
) -> None:
    configure(proxy, {"class": "list", "fault": "delay", "delay_s": 0.5, "after": 1})
    url = f"{proxy.url}/lake?list-type=2"

    timings = []
    for _ in range(3):
        started = time.monotonic()
        assert requests.get(url, timeout=5).status_code == 200
        timings.append(time.monotonic() - started)

    assert timings[0] < 0.4 and timings[1] >= 0.5 and timings[2] < 0.4, timings
    state = requests.get(f"{proxy.url}/_faults", timeout=5).json()
    assert state == {"pending": [], "seen": {"list": 3}, "injected": {"list:delay": 1}}
