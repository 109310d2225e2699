"""Faults on demand: an HTTP proxy in front of the GCS endpoint (the XML-API adapter).

Every request is classified by what it does for the project, and a fault configured for
its class is injected instead of (or before) passing it on:

- ``chunk_upload``: a JSON-API upload of a Pipes chunk ``<prefix>/<n>.json``;
- ``cancel_read``: a read of a cancellation marker ``<prefix>/cancel``;
- ``data_upload``: an XML ``PUT`` (single or multipart) of a Delta data file ``*.parquet``;
- ``commit``: an XML ``PUT`` of a Delta log entry ``_delta_log/<version>.json``;
- ``list``: a listing of objects (XML ``list-type=2`` or JSON ``GET /b/<bucket>/o``).

Faults: ``503`` and ``429`` (answered here, the request not passed on), ``reset`` (the
request is read whole, then the connection is closed without an answer: the client cannot
tell whether it was done; it was not), ``reset_after_upstream`` (passed on and done, then
the answer is dropped the same way) and ``delay`` (held ``delay_s`` seconds, then passed on).

Control endpoint (strict: unknown classes, faults or fields are a 400):

- ``POST /_faults`` ``{"class", "fault", "times": 1, "after": 0, "delay_s"}``: inject
  ``fault`` into the ``times`` matching requests that follow the next ``after`` ones;
- ``GET /_faults``: the pending faults, and per class the requests seen and faults injected;
- ``DELETE /_faults``: clear faults and counters.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack.net import LOOPBACK, free_port

CONTROL_PATH = "/_faults"
REQUEST_CLASSES = ("chunk_upload", "cancel_read", "data_upload", "commit", "list")
FAULTS = ("503", "429", "reset", "reset_after_upstream", "delay")
MAX_DELAY_S = 600.0
MAX_CONTROL_BODY = 64 * 1024
UPSTREAM_TIMEOUT = 300.0
LINGER_ZERO = struct.pack("ii", 1, 0)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-authorization", "host"}
)  # fmt: skip
CHUNK_NAME = re.compile(r".+/[0-9]+\.json")
COMMIT_NAME = re.compile(r"(.+/)?_delta_log/[0-9]{20}\.json")
JSON_OBJECT = re.compile(r"^/(?:download/)?storage/v1/b/([^/]+)/o/(.+)$")
JSON_LIST = re.compile(r"^/storage/v1/b/([^/]+)/o$")
JSON_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")
# The object name in the metadata part of a JSON multipart upload (the first JSON object).
UPLOAD_NAME = re.compile(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


class FaultSpecError(ValueError):
    """A fault request that names an unknown class, fault or field, or a bad value."""


@dataclass
class Fault:
    """``fault`` for the ``times`` requests of ``request_class`` after the next ``after``."""

    request_class: str
    fault: str
    times: int = 1
    after: int = 0
    delay_s: float = 0.0

    @classmethod
    def parse(cls, spec: Any) -> Fault:
        if not isinstance(spec, dict):
            raise FaultSpecError("a fault is a JSON object")
        unknown = set(spec) - {"class", "fault", "times", "after", "delay_s"}
        if unknown:
            raise FaultSpecError(f"unknown fields: {sorted(unknown)}")
        request_class, fault = spec.get("class"), spec.get("fault")
        if request_class not in REQUEST_CLASSES:
            raise FaultSpecError(f"class must be one of {list(REQUEST_CLASSES)}")
        if fault not in FAULTS:
            raise FaultSpecError(f"fault must be one of {list(FAULTS)}")
        times, after = spec.get("times", 1), spec.get("after", 0)
        if not _is_int(times) or times < 1 or not _is_int(after) or after < 0:
            raise FaultSpecError("times must be an integer >= 1 and after an integer >= 0")
        delay = spec.get("delay_s")
        if (fault == "delay") != (delay is not None):
            raise FaultSpecError("delay_s is required for a delay, and only for a delay")
        if delay is not None and not (
            isinstance(delay, int | float) and not isinstance(delay, bool)
            and 0 < delay <= MAX_DELAY_S
        ):  # fmt: skip
            raise FaultSpecError(f"delay_s must be a number in (0, {MAX_DELAY_S}]")
        return cls(request_class, fault, times, after, float(delay or 0.0))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FaultPlan:
    """The pending faults and what was seen; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.seen: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.seen.clear()
            self.injected.clear()

    def take(self, request_class: str | None) -> Fault | None:
        """The fault for one request of ``request_class`` (None: pass it on)."""
        if request_class is None:
            return None
        with self._lock:
            self.seen[request_class] += 1
            for fault in self._faults:
                if fault.request_class != request_class:
                    continue
                if fault.after:
                    fault.after -= 1
                    return None
                fault.times -= 1
                if not fault.times:
                    self._faults.remove(fault)
                self.injected[f"{request_class}:{fault.fault}"] += 1
                return fault
        return None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending": [asdict(fault) for fault in self._faults],
                "seen": dict(self.seen),
                "injected": dict(self.injected),
            }


def classify(method: str, target: str, body: bytes) -> str | None:
    """The request class of one request to the GCS endpoint, or None (never faulted)."""
    parts = urlsplit(target)
    path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
    if path.startswith(("/storage/v1/", "/download/storage/v1/", "/upload/storage/v1/")):
        return _classify_json(method, path, query, body)
    bucket, _, key = path.removeprefix("/").partition("/")
    key = unquote(key)
    if not key:
        return "list" if method == "GET" and bucket else None
    if method in ("PUT", "POST") and "x-goog-copy-source" not in query:
        if key.endswith(".parquet"):
            return "data_upload"
        if method == "PUT" and COMMIT_NAME.fullmatch(key):
            return "commit"
    return None


def _classify_json(
    method: str, path: str, query: Mapping[str, list[str]], body: bytes
) -> str | None:
    if method == "GET" and JSON_LIST.match(path):
        return "list"
    if method == "GET" and (found := JSON_OBJECT.match(path)):
        return "cancel_read" if unquote(found.group(2)).endswith("/cancel") else None
    if method == "POST" and JSON_UPLOAD.match(path):
        name = query.get("name", [None])[0] or _upload_name(body)
        return "chunk_upload" if name and CHUNK_NAME.fullmatch(name) else None
    return None


def _upload_name(body: bytes) -> str | None:
    found = UPLOAD_NAME.search(body[: 64 * 1024])
    if found is None:
        return None
    try:
        return str(json.loads(b'"' + found.group(1) + b'"'))
    except ValueError:
        return None


class FaultProxy(ThreadingHTTPServer):
    """The proxy: a server holding the upstream's address and the :class:`FaultPlan`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: str | None = None) -> None:
        super().__init__(address, FaultProxyHandler)
        self.plan = FaultPlan()
        self.upstream: tuple[str, int] | None = None
        if upstream:
            self.set_upstream(upstream)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_upstream(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the upstream must be http://host:port, not {url!r}")
        self.upstream = (parts.hostname, parts.port)


class FaultProxyHandler(BaseHTTPRequestHandler):
    """Passes each request on, unless a fault is due for its class; serves ``/_faults``."""

    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        body = self._read_body()
        if urlsplit(self.path).path == CONTROL_PATH:
            self._control(body)
            return
        fault = self.server.plan.take(classify(self.command, self.path, body))
        if fault is not None and fault.fault in ("503", "429"):
            status = int(fault.fault)
            self._answer(status, json.dumps({"error": {"code": status, "message":
                         f"injected fault {status}"}}).encode(), {"Retry-After": "0"})  # fmt: skip
            return
        if fault is not None and fault.fault == "reset":
            self._reset()
            return
        if fault is not None and fault.fault == "delay":
            time.sleep(fault.delay_s)
        self._forward(body, drop_answer=fault is not None and fault.fault != "delay")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline(8)
            while self.rfile.readline(1024).strip():  # trailers
                pass
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _control(self, body: bytes) -> None:
        plan = self.server.plan
        if self.command == "DELETE":
            plan.clear()
        elif self.command == "POST":
            try:
                if len(body) > MAX_CONTROL_BODY:
                    raise FaultSpecError("the body is too large")
                plan.add(Fault.parse(json.loads(body or b"null")))
            except (ValueError, FaultSpecError) as error:
                message = str(error) if isinstance(error, FaultSpecError) else "not JSON"
                self._answer(400, json.dumps({"error": message}).encode())
                return
        elif self.command != "GET":
            self._answer(405, b'{"error": "GET, POST or DELETE"}')
            return
        self._answer(200, json.dumps(plan.state()).encode())

    def _answer(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] = {},
        content_type: str | None = "application/json",
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        if "Content-Length" not in headers:  # a HEAD's is the object's size, passed on as is
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _reset(self) -> None:
        """Close the connection without an answer (the request was read whole)."""
        self.close_connection = True
        with suppress(OSError):
            # linger 0: closing sends an RST, as a dropped connection looks to the client
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        self.wfile = io.BytesIO()  # whatever the server still writes is never sent

    def _forward(self, body: bytes, *, drop_answer: bool) -> None:
        if self.server.upstream is None:
            self._answer(503, b'{"error": "the fault proxy has no upstream yet"}')
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=UPSTREAM_TIMEOUT)
        with closing(connection):
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
        if drop_answer:
            self._reset()
            return
        dropped = HOP_BY_HOP | {"date", "server"}
        if self.command != "HEAD":
            dropped |= {"content-length"}  # the body is sent as read, with its own length
        headers = {
            ("Content-Length" if name.lower() == "content-length" else name): value
            for name, value in response.getheaders()
            if name.lower() not in dropped
        }
        with suppress(OSError):  # the client gave up meanwhile (e.g. its timeout)
            self._answer(response.status, data, headers, content_type=None)


def serve(port: int, upstream: str | None = None) -> FaultProxy:
    """The proxy listening on ``port`` (not yet serving), passing requests to ``upstream``."""
    return FaultProxy((LOOPBACK, port), upstream)


@contextmanager
def running_proxy(upstream: str, port: int | None = None) -> Iterator[FaultProxy]:
    """The proxy in front of ``upstream``, served from a thread of this process (tests)."""
    server = serve(port or free_port(), upstream)
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.fault_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the GCS endpoint's http://host:port")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with serve(args.port, args.upstream) as server, suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
