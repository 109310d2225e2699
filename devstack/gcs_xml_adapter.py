"""The Cloud Storage XML API that delta-rs speaks, served in front of fake-gcs-server.

delta-rs (object_store) writes to GCS through the XML API; fake-gcs-server answers an XML
``PUT`` with 400 and ignores ``start-after`` in XML lists. This server translates each XML
request delta-rs makes into the emulator's JSON API, keeping GCS semantics:

- create-only ``PUT`` (``x-goog-if-generation-match: 0``) becomes a JSON multipart upload
  with ``ifGenerationMatch=0``, which the emulator enforces atomically: the loser gets 412;
- multipart uploads (``POST ?uploads``, ``PUT ?partNumber&uploadId``, ``POST ?uploadId``,
  ``DELETE ?uploadId``) keep their parts on disk and upload the assembled object once;
- lists (``list-type=2``) honour ``prefix``, ``delimiter``, ``start-after``, ``max-keys``
  and continuation tokens, paging here over the JSON list;
- answers carry ``ETag``, ``x-goog-generation``, ``Last-Modified`` and ``Content-Length``.

JSON-API traffic (``/storage/v1``, ``/upload/storage/v1``, ``/download/storage/v1``) passes
through unchanged, so one endpoint serves google-cloud-storage and delta-rs. Anything else
is answered 501 (never a silent success).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import http.client
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from devstack.net import LOOPBACK

JSON_API_PREFIXES = ("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-authorization", "host", "date", "server"}
)  # fmt: skip
# Request headers that change what a write or read means, and are not translated here.
UNSUPPORTED_HEADERS = frozenset(
    {"cache-control", "content-disposition", "content-encoding", "content-language",
     "content-md5", "if-modified-since", "if-unmodified-since", "expect"}
)  # fmt: skip
HANDLED_GOOG_HEADERS = frozenset({"x-goog-if-generation-match", "x-goog-copy-source"})
MAX_LIST_KEYS = 1000
MIN_PART_BYTES = 5 * 1024 * 1024  # GCS: every part but the last is at least 5 MiB
MAX_PARTS = 10_000
MAX_XML_BODY = 1024 * 1024
SPOOL_BYTES = 16 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
UPSTREAM_TIMEOUT = 300.0


class XmlError(Exception):
    """An XML-API error answer: HTTP status, GCS error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_implemented(what: str) -> XmlError:
    return XmlError(501, "NotImplemented", f"the local XML-API adapter does not implement {what}")


# --- the emulator's JSON API ---------------------------------------------------------------


@dataclass
class Upstream:
    """The JSON API of fake-gcs-server at ``host:port``."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the emulator URL must be http://host:port, not {url!r}")
        return cls(parts.hostname, parts.port)

    def open(
        self,
        method: str,
        target: str,
        body: IO[bytes] | bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; the caller reads the response and closes the connection."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(method, target, body=body, headers=dict(headers or {}))
            return connection, connection.getresponse()
        except BaseException:
            connection.close()
            raise

    def call(
        self,
        method: str,
        target: str,
        body: IO[bytes] | bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A JSON-API call: its status and decoded JSON answer (None when empty)."""
        connection, response = self.open(method, target, body, headers)
        with closing(connection):
            data = response.read()
        try:
            return response.status, json.loads(data) if data.strip() else None
        except ValueError:
            return response.status, None

    def create_bucket(self, name: str) -> None:
        """Create ``name`` unless it exists."""
        status, _ = self.call(
            "POST", "/storage/v1/b", json.dumps({"name": name}).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        if status not in (200, 409):
            raise RuntimeError(f"the emulator did not create bucket {name}: HTTP {status}")


def object_path(bucket: str, key: str) -> str:
    return f"/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"


def json_error(status: int, bucket: str, key: str) -> XmlError:
    """An emulator error answer, as GCS's XML API names it."""
    if status == 412:
        return XmlError(412, "PreconditionFailed", "At least one of the pre-conditions you "
                        "specified did not hold.")  # fmt: skip
    if status == 404:
        return XmlError(404, "NoSuchKey", f"No such object: {bucket}/{key}")
    if status == 400:
        return XmlError(400, "InvalidArgument", "the emulator refused the request")
    return XmlError(status if status >= 400 else 502, "InternalError", "emulator error")


@dataclass
class Payload:
    """A request body spooled to memory or disk, with its length."""

    file: IO[bytes]
    size: int

    def chunks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(COPY_CHUNK):
            yield chunk


def upload(
    upstream: Upstream,
    bucket: str,
    key: str,
    payload: Payload,
    *,
    content_type: str,
    if_generation_match: str | None,
) -> dict[str, Any]:
    """One JSON multipart upload (atomic, with its precondition enforced by the emulator)."""
    boundary = uuid.uuid4().hex
    metadata = json.dumps({"name": key, "contentType": content_type}).encode()
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode()
        + metadata
        + f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    query = "uploadType=multipart"
    if if_generation_match is not None:
        query += f"&ifGenerationMatch={if_generation_match}"
    status, answer = upstream.call(
        "POST",
        f"/upload/storage/v1/b/{quote(bucket, safe='')}/o?{query}",
        body=_chain(head, payload.chunks(), tail),
        headers={
            "Content-Type": f"multipart/related; boundary={boundary}",
            "Content-Length": str(len(head) + payload.size + len(tail)),
        },
    )
    if status != 200 or not isinstance(answer, dict):
        raise json_error(status, bucket, key)
    return answer


def _chain(head: bytes, middle: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    yield from middle
    yield tail


def object_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    """The headers GCS's XML API answers a write with (and object_store reads)."""
    updated = datetime.fromisoformat(str(resource["updated"]).replace("Z", "+00:00"))
    return {
        "ETag": f'"{resource["etag"]}"',
        "x-goog-generation": str(resource["generation"]),
        "x-goog-metageneration": str(resource.get("metageneration", "1")),
        "Last-Modified": email.utils.format_datetime(updated, usegmt=True),
    }


# --- multipart uploads ---------------------------------------------------------------------


@dataclass
class MultipartUpload:
    bucket: str
    key: str
    content_type: str
    directory: Path
    etags: dict[int, str] = field(default_factory=dict)


class MultipartUploads:
    """Uploads in progress; each part is a file until the upload completes or is aborted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads: dict[str, MultipartUpload] = {}
        self.lock = threading.Lock()

    def start(self, bucket: str, key: str, content_type: str) -> str:
        upload_id = uuid.uuid4().hex
        directory = Path(tempfile.mkdtemp(prefix="upload-", dir=self.root))
        with self.lock:
            self.uploads[upload_id] = MultipartUpload(bucket, key, content_type, directory)
        return upload_id

    def get(self, upload_id: str, bucket: str, key: str) -> MultipartUpload:
        with self.lock:
            found = self.uploads.get(upload_id)
        if found is None or (found.bucket, found.key) != (bucket, key):
            raise XmlError(404, "NoSuchUpload", "The specified multipart upload does not exist.")
        return found

    def put_part(self, upload: MultipartUpload, number: int, payload: Payload) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        part = upload.directory / f"{number}.part"
        with open(part.with_suffix(".tmp"), "wb") as out:
            for chunk in payload.chunks():
                digest.update(chunk)
                out.write(chunk)
        part.with_suffix(".tmp").replace(part)  # a retried part replaces the earlier one
        etag = f'"{digest.hexdigest()}"'
        with self.lock:
            upload.etags[number] = etag
        return etag

    def assemble(self, upload: MultipartUpload, parts: list[tuple[int, str]]) -> Payload:
        """The object from ``parts`` (number, ETag), checked as GCS checks them."""
        if not parts:
            raise XmlError(400, "MalformedXML", "a multipart upload needs at least one part")
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            raise XmlError(400, "InvalidPartOrder", "parts must be listed in ascending order")
        out = tempfile.TemporaryFile(dir=self.root)  # noqa: SIM115 - closed by the caller
        size = 0
        for index, (number, etag) in enumerate(parts):
            if upload.etags.get(number) != _quoted(etag):
                out.close()
                raise XmlError(400, "InvalidPart", f"part {number} was not uploaded as listed")
            part = upload.directory / f"{number}.part"
            part_size = part.stat().st_size
            if part_size < MIN_PART_BYTES and index < len(parts) - 1:
                out.close()
                raise XmlError(400, "EntityTooSmall", f"part {number} is smaller than 5 MiB")
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out, COPY_CHUNK)
            size += part_size
        return Payload(out, size)

    def finish(self, upload_id: str) -> None:
        with self.lock:
            upload = self.uploads.pop(upload_id, None)
        if upload is not None:
            shutil.rmtree(upload.directory, ignore_errors=True)


def _quoted(etag: str) -> str:
    etag = etag.strip()
    return etag if etag.startswith('"') else f'"{etag}"'


def parse_complete_body(data: bytes) -> list[tuple[int, str]]:
    """The (PartNumber, ETag) pairs of a CompleteMultipartUpload document."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        raise XmlError(400, "MalformedXML", "the CompleteMultipartUpload body is not XML") from None
    if _local_name(root.tag) != "CompleteMultipartUpload":
        raise XmlError(400, "MalformedXML", "expected a CompleteMultipartUpload document")
    parts = []
    for part in root:
        fields = {_local_name(child.tag): (child.text or "").strip() for child in part}
        number, etag = fields.get("PartNumber", ""), fields.get("ETag", "")
        if _local_name(part.tag) != "Part" or not number.isdigit() or not etag:
            raise XmlError(400, "MalformedXML", "each Part needs a PartNumber and an ETag")
        parts.append((int(number), etag))
    return parts


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


# --- lists ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """A ``list-type=2`` request."""

    prefix: str = ""
    delimiter: str = ""
    start_after: str = ""
    after_entry: str = ""  # decoded continuation token: the last entry already returned
    max_keys: int = MAX_LIST_KEYS

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListQuery:
        allowed = {"list-type", "prefix", "delimiter", "start-after", "continuation-token",
                   "max-keys"}  # fmt: skip
        if query.get("list-type") != "2" or set(query) - allowed:
            raise not_implemented(f"this bucket request (parameters {sorted(query)})")
        max_keys = query.get("max-keys", str(MAX_LIST_KEYS))
        if not (max_keys.isascii() and max_keys.isdigit()):
            raise XmlError(400, "InvalidArgument", "max-keys must be a whole number")
        token = query.get("continuation-token")
        return cls(
            prefix=query.get("prefix", ""),
            delimiter=query.get("delimiter", ""),
            start_after=query.get("start-after", ""),
            after_entry=decode_token(token) if token is not None else "",
            max_keys=min(int(max_keys), MAX_LIST_KEYS),
        )

    def entry(self, name: str) -> str:
        """What ``name`` is listed as: itself, or its common prefix under the delimiter."""
        if self.delimiter:
            cut = name.find(self.delimiter, len(self.prefix))
            if cut >= 0:
                return name[: cut + len(self.delimiter)]
        return name


def encode_token(entry: str) -> str:
    return base64.urlsafe_b64encode(entry.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise XmlError(400, "InvalidArgument", "the continuation token is not valid") from None


@dataclass
class ListPage:
    objects: list[dict[str, Any]]
    prefixes: list[str]
    next_entry: str | None  # set when truncated: the last entry of this page


def list_page(objects: Iterable[dict[str, Any]], query: ListQuery) -> ListPage:
    """One page of a list over ``objects`` (JSON resources, in name order, under the prefix)."""
    page = ListPage([], [], None)
    if query.max_keys == 0:
        return page
    last = ""
    for resource in objects:
        name = str(resource["name"])
        if name <= query.start_after or not name.startswith(query.prefix):
            continue
        entry = query.entry(name)
        if (query.after_entry and entry <= query.after_entry) or entry == last:
            continue
        if len(page.objects) + len(page.prefixes) == query.max_keys:
            page.next_entry = last
            break
        if entry == name:
            page.objects.append(resource)
        else:
            page.prefixes.append(entry)
        last = entry
    return page


def json_objects(upstream: Upstream, bucket: str, query: ListQuery) -> Iterator[dict[str, Any]]:
    """Every object under the prefix from the first one a page may list, in name order."""
    offset = max(query.start_after, query.after_entry)
    token = None
    while True:
        params = f"prefix={quote(query.prefix, safe='')}&startOffset={quote(offset, safe='')}"
        params += "&maxResults=1000" + (f"&pageToken={quote(token, safe='')}" if token else "")
        status, answer = upstream.call("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o?{params}")
        if status == 404:
            raise XmlError(404, "NoSuchBucket", f"The specified bucket does not exist: {bucket}")
        if status != 200 or not isinstance(answer, dict):
            raise XmlError(502, "InternalError", f"the emulator's list answered HTTP {status}")
        yield from sorted(answer.get("items", []), key=lambda item: str(item["name"]))
        token = answer.get("nextPageToken")
        if not token:
            return


def list_xml(bucket: str, query: ListQuery, page: ListPage) -> bytes:
    root = ET.Element("ListBucketResult", xmlns="http://doc.s3.amazonaws.com/2006-03-01")
    fields = {"Name": bucket, "Prefix": query.prefix, "KeyCount": str(
        len(page.objects) + len(page.prefixes)), "MaxKeys": str(query.max_keys)}  # fmt: skip
    if query.delimiter:
        fields["Delimiter"] = query.delimiter
    if query.start_after:
        fields["StartAfter"] = query.start_after
    fields["IsTruncated"] = "true" if page.next_entry is not None else "false"
    _add(root, fields)
    for resource in page.objects:
        headers = object_headers(resource)
        updated = datetime.fromisoformat(str(resource["updated"]).replace("Z", "+00:00"))
        _add(ET.SubElement(root, "Contents"), {
            "Key": str(resource["name"]), "Generation": headers["x-goog-generation"],
            "MetaGeneration": headers["x-goog-metageneration"],
            "LastModified": updated.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "ETag": headers["ETag"], "Size": str(resource.get("size", "0")),
        })  # fmt: skip
    for prefix in page.prefixes:
        _add(ET.SubElement(root, "CommonPrefixes"), {"Prefix": prefix})
    if page.next_entry is not None:
        _add(root, {"NextContinuationToken": encode_token(page.next_entry)})
    return _document(root)


def _add(parent: ET.Element, fields: Mapping[str, str]) -> None:
    for tag, text in fields.items():
        ET.SubElement(parent, tag).text = text


def _document(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="unicode")
    return b"<?xml version='1.0' encoding='UTF-8'?>" + body.encode()


def error_xml(error: XmlError) -> bytes:
    root = ET.Element("Error")
    _add(root, {"Code": error.code, "Message": error.message})
    return _document(root)


# --- the HTTP server -----------------------------------------------------------------------


@dataclass(frozen=True)
class XmlTarget:
    bucket: str
    key: str  # "" for the bucket itself
    query: dict[str, str]


def parse_target(raw_path: str) -> XmlTarget:
    """``/bucket/key?query``: the key percent-decoded (object_store encodes every ``/``)."""
    parts = urlsplit(raw_path)
    bucket, _, key = parts.path.removeprefix("/").partition("/")
    try:
        values = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False,
                          errors="strict")  # fmt: skip
        decoded_key = unquote(key, errors="strict")
        decoded_bucket = unquote(bucket, errors="strict")
    except UnicodeError:
        raise XmlError(400, "InvalidArgument", "the URL is not valid UTF-8") from None
    if any(len(found) > 1 for found in values.values()):
        raise XmlError(400, "InvalidArgument", "a query parameter is repeated")
    if not decoded_bucket:
        raise not_implemented("listing buckets")
    return XmlTarget(decoded_bucket, decoded_key, {k: v[0] for k, v in values.items()})


class AdapterServer(ThreadingHTTPServer):
    """The adapter: an HTTP server holding the upstream and the multipart uploads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], upstream: Upstream, work_dir: Path, log_requests: bool
    ) -> None:
        super().__init__(address, AdapterHandler)
        self.upstream = upstream
        self.uploads = MultipartUploads(work_dir)
        self.log_requests = log_requests


class AdapterHandler(BaseHTTPRequestHandler):
    """Routes each request: JSON API through, XML API translated, anything else 501."""

    protocol_version = "HTTP/1.1"
    server: AdapterServer

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def do_PATCH(self) -> None:
        self._route()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.log_requests:  # else quiet: errors are logged by _route
            print(f"gcs-xml-adapter: {self.command} {self.path} {code}", flush=True)

    @property
    def upstream(self) -> Upstream:
        return self.server.upstream

    def _route(self) -> None:
        try:
            payload = self._read_body()
        except XmlError as error:
            self.close_connection = True
            self._send_error(error)
            return
        try:
            if self.path.startswith(JSON_API_PREFIXES):
                self._pass_through(payload)
            else:
                self._xml(parse_target(self.path), payload)
        except XmlError as error:
            if error.status == 501:
                print(f"gcs-xml-adapter: 501 for {self.command} {self.path}: {error.message}",
                      file=sys.stderr, flush=True)  # fmt: skip
            self._send_error(error)
        except (OSError, http.client.HTTPException) as error:
            print(f"gcs-xml-adapter: {self.command} {self.path}: {error!r}", file=sys.stderr)
            self.close_connection = True
            self._send_error(XmlError(502, "InternalError", "the emulator did not answer"))
        finally:
            payload.file.close()

    # --- bodies

    def _read_body(self) -> Payload:
        spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - closed by _route
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            size = self._read_chunked(spool)
        else:
            length = self.headers.get("Content-Length", "0").strip() or "0"
            if not length.isdigit():
                raise XmlError(400, "InvalidArgument", "Content-Length is not a number")
            size = int(length)
            left = size
            while left:
                chunk = self.rfile.read(min(left, COPY_CHUNK))
                if not chunk:
                    raise XmlError(400, "IncompleteBody", "the body ended early")
                spool.write(chunk)
                left -= len(chunk)
        spool.seek(0)
        return Payload(spool, size)

    def _read_chunked(self, out: IO[bytes]) -> int:
        size = 0
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                chunk_size = int(line, 16)
            except ValueError:
                raise XmlError(400, "InvalidArgument", "bad chunked encoding") from None
            if chunk_size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return size
            out.write(self.rfile.read(chunk_size))
            self.rfile.readline(8)
            size += chunk_size

    # --- answers

    def _send(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, error: XmlError) -> None:
        self._send(error.status, {"Content-Type": "application/xml"}, error_xml(error))

    def _relay(self, response: http.client.HTTPResponse, extra: Mapping[str, str] = {}) -> None:
        """Send ``response`` on, streaming its body (with its length, or chunked)."""
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        for name, value in extra.items():
            self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304)
        chunked = response.getheader("Content-Length") is None and not no_body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        while chunk := response.read(COPY_CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    # --- JSON API

    def _pass_through(self, payload: Payload) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(payload.size)
        body = payload.chunks() if payload.size else None
        connection, response = self.upstream.open(self.command, self.path, body, headers)
        with closing(connection):
            self._relay(response)

    # --- XML API

    def _xml(self, target: XmlTarget, payload: Payload) -> None:
        self._check_headers()
        if not target.key:
            if self.command != "GET":
                raise not_implemented(f"{self.command} on a bucket")
            self._list(target.bucket, ListQuery.parse(target.query))
            return
        handler = {
            ("GET", ()): self._get,
            ("HEAD", ()): self._get,
            ("GET", ("generation",)): self._get,
            ("HEAD", ("generation",)): self._get,
            ("PUT", ()): self._put,
            ("DELETE", ()): self._delete,
            ("POST", ("uploads",)): self._start_multipart,
            ("PUT", ("partNumber", "uploadId")): self._put_part,
            ("POST", ("uploadId",)): self._complete_multipart,
            ("DELETE", ("uploadId",)): self._abort_multipart,
        }.get((self.command, tuple(sorted(target.query))))
        if handler is None:
            raise not_implemented(f"{self.command} with parameters {sorted(target.query)}")
        handler(target, payload)

    def _check_headers(self) -> None:
        for name in self.headers:
            lower = name.lower()
            if lower in UNSUPPORTED_HEADERS or (
                lower.startswith(("x-goog-", "x-amz-")) and lower not in HANDLED_GOOG_HEADERS
            ):
                raise not_implemented(f"the {name} header")

    def _generation_match(self) -> str | None:
        value = self.headers.get("x-goog-if-generation-match")
        if value is not None and not (value.isascii() and value.strip().isdigit()):
            raise XmlError(400, "InvalidArgument", "x-goog-if-generation-match is not a number")
        return value.strip() if value is not None else None

    def _get(self, target: XmlTarget, payload: Payload) -> None:
        if self.headers.get("x-goog-if-generation-match") is not None:
            raise not_implemented("x-goog-if-generation-match on a read")
        query = "alt=media"
        if "generation" in target.query:
            query += f"&generation={quote(target.query['generation'], safe='')}"
        headers = {"Range": self.headers["Range"]} if "Range" in self.headers else {}
        connection, response = self.upstream.open(
            self.command, f"/download/storage/v1{object_path(target.bucket, target.key)}?{query}",
            headers=headers,
        )  # fmt: skip
        with closing(connection):
            if response.status == 404:
                raise json_error(404, target.bucket, target.key)
            etag = response.getheader("ETag", "")
            if (match := self.headers.get("If-Match")) is not None and match not in (etag, "*"):
                raise json_error(412, target.bucket, target.key)
            if self.headers.get("If-None-Match") in (etag, "*"):
                self._send(304, {"ETag": etag})
                return
            self._relay(response)

    def _put(self, target: XmlTarget, payload: Payload) -> None:
        source = self.headers.get("x-goog-copy-source")
        if source is not None:
            self._copy(target, source)
            return
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        resource = upload(
            self.upstream, target.bucket, target.key, payload,
            content_type=content_type, if_generation_match=self._generation_match(),
        )  # fmt: skip
        self._send(200, object_headers(resource))

    def _copy(self, target: XmlTarget, source: str) -> None:
        bucket, _, key = source.removeprefix("/").partition("/")
        bucket, key = unquote(bucket), unquote(key)
        connection, response = self.upstream.open(
            "GET", f"/download/storage/v1{object_path(bucket, key)}?alt=media"
        )
        with closing(connection), tempfile.TemporaryFile(dir=self.server.uploads.root) as copy:
            if response.status != 200:
                raise json_error(response.status, bucket, key)
            shutil.copyfileobj(response, copy, COPY_CHUNK)
            content_type = response.getheader("Content-Type") or "application/octet-stream"
            resource = upload(
                self.upstream, target.bucket, target.key, Payload(copy, copy.tell()),
                content_type=content_type, if_generation_match=self._generation_match(),
            )  # fmt: skip
        headers = object_headers(resource)
        root = ET.Element("CopyObjectResult")
        _add(root, {"LastModified": str(resource["updated"]), "ETag": headers["ETag"]})
        self._send(200, {**headers, "Content-Type": "application/xml"}, _document(root))

    def _delete(self, target: XmlTarget, payload: Payload) -> None:
        if self.headers.get("x-goog-if-generation-match") is not None:
            raise not_implemented("x-goog-if-generation-match on a delete")
        path = f"/storage/v1{object_path(target.bucket, target.key)}"
        status, _ = self.upstream.call("DELETE", path)
        if status not in (200, 204):
            raise json_error(status, target.bucket, target.key)
        self._send(204, {})

    def _list(self, bucket: str, query: ListQuery) -> None:
        page = list_page(json_objects(self.upstream, bucket, query), query)
        self._send(200, {"Content-Type": "application/xml"}, list_xml(bucket, query, page))

    def _start_multipart(self, target: XmlTarget, payload: Payload) -> None:
        if self._generation_match() is not None:
            raise not_implemented("x-goog-if-generation-match on a multipart upload")
        status, _ = self.upstream.call("GET", f"/storage/v1/b/{quote(target.bucket, safe='')}")
        if status != 200:
            raise XmlError(404, "NoSuchBucket", f"The specified bucket does not exist: "
                           f"{target.bucket}")  # fmt: skip
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        upload_id = self.server.uploads.start(target.bucket, target.key, content_type)
        root = ET.Element("InitiateMultipartUploadResult")
        _add(root, {"Bucket": target.bucket, "Key": target.key, "UploadId": upload_id})
        self._send(200, {"Content-Type": "application/xml"}, _document(root))

    def _put_part(self, target: XmlTarget, payload: Payload) -> None:
        number = target.query["partNumber"]
        if not (number.isascii() and number.isdigit() and 1 <= int(number) <= MAX_PARTS):
            raise XmlError(400, "InvalidArgument", f"partNumber must be 1 to {MAX_PARTS}")
        uploads = self.server.uploads
        upload_ = uploads.get(target.query["uploadId"], target.bucket, target.key)
        self._send(200, {"ETag": uploads.put_part(upload_, int(number), payload)})

    def _complete_multipart(self, target: XmlTarget, payload: Payload) -> None:
        uploads = self.server.uploads
        upload_id = target.query["uploadId"]
        found = uploads.get(upload_id, target.bucket, target.key)
        if payload.size > MAX_XML_BODY:
            raise XmlError(400, "MalformedXML", "the CompleteMultipartUpload body is too large")
        parts = parse_complete_body(payload.file.read())
        assembled = uploads.assemble(found, parts)
        with assembled.file:
            resource = upload(
                self.upstream, target.bucket, target.key, assembled,
                content_type=found.content_type, if_generation_match=None,
            )  # fmt: skip
        uploads.finish(upload_id)
        headers = object_headers(resource)
        root = ET.Element("CompleteMultipartUploadResult")
        _add(root, {"Bucket": target.bucket, "Key": target.key, "ETag": headers["ETag"]})
        self._send(200, {**headers, "Content-Type": "application/xml"}, _document(root))

    def _abort_multipart(self, target: XmlTarget, payload: Payload) -> None:
        upload_id = target.query["uploadId"]
        self.server.uploads.get(upload_id, target.bucket, target.key)
        self.server.uploads.finish(upload_id)
        self._send(204, {})


def wait_for_upstream(upstream: Upstream, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            upstream.call("GET", "/storage/v1/b")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve(
    port: int,
    upstream_url: str,
    buckets: Iterable[str],
    work_dir: Path,
    *,
    log_requests: bool = False,
    timeout: float = 30.0,
) -> AdapterServer:
    """Wait for the emulator, create ``buckets``, then listen on ``port`` (not yet serving)."""
    upstream = Upstream.from_url(upstream_url)
    wait_for_upstream(upstream, timeout)
    for bucket in buckets:
        upstream.create_bucket(bucket)
    work_dir.mkdir(parents=True, exist_ok=True)
    return AdapterServer((LOOPBACK, port), upstream, work_dir, log_requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.gcs_xml_adapter", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="fake-gcs-server's http://host:port")
    parser.add_argument("--bucket", action="append", default=[], help="created if missing")
    parser.add_argument("--work-dir", type=Path, help="parts of multipart uploads (default: a "
                        "temporary directory)")  # fmt: skip
    parser.add_argument("--log-requests", action="store_true", help="one line per request")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="gcs-xml-adapter-") as temporary:
        work = args.work_dir or Path(temporary)
        server = serve(args.port, args.upstream, args.bucket, work, log_requests=args.log_requests)
        with server, suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
