"""Local stand-ins for Google's token services, and a GCS front that checks token scopes.

Real google-auth code runs against them unchanged, so impersonation and scopes are tested the
way they work in the cloud, where fake-gcs-server lets every caller do anything:

- :class:`TokenService` serves the OAuth2 token endpoint a service-account key file (the
  caller's application-default credentials) gets its tokens from and the IAM Credentials API's
  ``generateAccessToken`` (a service account's token, with the scopes asked for). Point
  ``google.auth.impersonated_credentials`` at it with ``iam_endpoint_override``
  (:meth:`TokenService.access_token_url`), or, for code that builds its credentials itself,
  with ``google.auth.iam._IAM_ENDPOINT = access_token_url("{}")``. It remembers every token
  it minted: principal and scopes.
- :class:`ScopedGcs` is an HTTP front for a GCS server (fake-gcs-server) that answers as GCS
  does: 401 without a token it knows, 403 for a write made with a read-only token, and
  otherwise forwards the request unchanged.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from devstack.net import LOOPBACK

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Scopes a caller of the IAM Credentials API needs (google-auth asks for the narrower one).
IAM_SCOPES = frozenset({CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam"})
STORAGE_READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
STORAGE_READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"
STORAGE_FULL_CONTROL = "https://www.googleapis.com/auth/devstorage.full_control"
# Which OAuth scopes allow which GCS requests (cloud.google.com/storage/docs/oauth-scopes).
STORAGE_WRITE_SCOPES = frozenset({STORAGE_READ_WRITE, STORAGE_FULL_CONTROL, CLOUD_PLATFORM})
STORAGE_READ_SCOPES = STORAGE_WRITE_SCOPES | {
    STORAGE_READ_ONLY,
    "https://www.googleapis.com/auth/cloud-platform.read-only",
}
TOKEN_LIFETIME = timedelta(hours=1)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


@dataclass(frozen=True)
class Token:
    """An access token the service minted: whose it is and what it may do."""

    value: str
    principal: str
    scopes: tuple[str, ...]


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "message": message}}


class _JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet in tests

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def bearer(self) -> str:
        kind, _, value = (self.headers.get("Authorization") or "").partition(" ")
        return value if kind.lower() == "bearer" else ""

    def answer(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class TokenService:
    """OAuth2 token endpoint and IAM Credentials ``generateAccessToken`` on ``127.0.0.1``.

    Args:
        caller: the service account whose key file (:meth:`write_adc_file`) is the caller's
            application-default credentials; its tokens come from this endpoint.
        token_creators: service account -> principals allowed to mint its tokens (holders of
            ``roles/iam.serviceAccountTokenCreator`` on it); anyone else gets 403.
    """

    caller: str = "developer@p.iam.gserviceaccount.com"
    token_creators: Mapping[str, frozenset[str]] = field(default_factory=dict)
    minted: list[Token] = field(default_factory=list)
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the service is not running"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def token_uri(self) -> str:
        return f"{self.url}/token"

    def access_token_url(self, service_account: str) -> str:
        """The ``iam_endpoint_override`` for impersonating ``service_account``."""
        return f"{self.url}/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken"

    def token(self, value: str) -> Token | None:
        """The token minted with this value, if any."""
        with self._lock:
            return next((token for token in self.minted if token.value == value), None)

    def write_adc_file(self, path: Path) -> Path:
        """A service-account key file of ``caller`` whose ``token_uri`` is this service (for
        ``GOOGLE_APPLICATION_CREDENTIALS``; google-auth honours a key file's token URI)."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = {
            "type": "service_account",
            "project_id": "devstack",
            "private_key_id": "devstack",
            "private_key": pem.decode(),
            "client_email": self.caller,
            "client_id": "1",
            "token_uri": self.token_uri(),
        }
        path.write_text(json.dumps(key))
        return path

    def _mint(self, principal: str, scopes: list[str]) -> Token:
        token = Token(f"devstack-{secrets.token_hex(16)}", principal, tuple(scopes))
        with self._lock:
            self.minted.append(token)
        return token

    @contextmanager
    def serving(self) -> Iterator[TokenService]:
        """Serve on a free port until the block exits."""
        with _served(self._handler()) as server:
            self._server = server
            try:
                yield self
            finally:
                self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(_JsonHandler):
            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                if path == "/token":
                    self.answer(*service._grant(parse_qs(self.body().decode())))
                elif path.endswith(":generateAccessToken"):
                    account = path.removesuffix(":generateAccessToken").rsplit("/", 1)[-1]
                    self.answer(*service._generate(account, self.bearer(), self.body()))
                else:
                    self.answer(404, _error(404, "NOT_FOUND", f"no such method: {path}"))

        return Handler

    def _grant(self, form: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """The JWT-bearer grant of a service-account key: the assertion must be signed with
        ``caller``'s key (google-auth addresses it to Google's token URI, wherever it posts)."""
        public = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                form["assertion"][0], certs=public, audience=[GOOGLE_TOKEN_URI, self.token_uri()]
            )
        except (KeyError, ValueError) as error:
            return 400, {"error": "invalid_grant", "error_description": str(error)}
        if claims.get("iss") != self.caller:
            return 400, {"error": "invalid_grant", "error_description": "unknown issuer"}
        scopes = str(claims.get("scope") or CLOUD_PLATFORM).split()
        token = self._mint(self.caller, scopes)
        expires_in = int(TOKEN_LIFETIME.total_seconds())
        return 200, {"access_token": token.value, "expires_in": expires_in, "token_type": "Bearer"}

    def _generate(self, account: str, bearer: str, body: bytes) -> tuple[int, dict[str, Any]]:
        caller = self.token(bearer)
        if caller is None:
            return 401, _error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        if IAM_SCOPES.isdisjoint(caller.scopes):
            return 403, _error(403, "PERMISSION_DENIED", "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
        if caller.principal not in self.token_creators.get(account, frozenset()):
            return 403, _error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                f"(or it may not exist): {caller.principal} on {account}",
            )
        try:
            scopes = [str(scope) for scope in json.loads(body)["scope"]]
        except (ValueError, KeyError, TypeError):
            return 400, _error(400, "INVALID_ARGUMENT", "scope is required")
        token = self._mint(account, scopes)
        expires = (datetime.now(UTC) + TOKEN_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {"accessToken": token.value, "expireTime": expires}


@dataclass(frozen=True)
class GcsRequest:
    """One request :class:`ScopedGcs` saw, and its answer."""

    method: str
    path: str
    principal: str | None
    scopes: tuple[str, ...]
    status: int


@dataclass
class ScopedGcs:
    """A front for the GCS server at ``upstream`` that enforces OAuth scopes as GCS does.

    Reads (GET, HEAD) need a token of ``tokens`` with a storage read scope; anything else a
    storage write scope. A request without a known token is 401, one without the scope 403
    (GCS: "Provided scope(s) are not authorized"); the rest is forwarded unchanged.
    Point ``STORAGE_EMULATOR_HOST`` at :attr:`url`.
    """

    upstream: str
    tokens: TokenService
    seen: list[GcsRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the front is not running"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @contextmanager
    def serving(self) -> Iterator[ScopedGcs]:
        """Serve on a free port until the block exits."""
        with _served(self._handler()) as server:
            self._server = server
            try:
                yield self
            finally:
                self._server = None

    def refusal(self, method: str, token: Token | None) -> tuple[int, dict[str, Any]] | None:
        """GCS's answer to a request this token may not make, or None when it may."""
        if token is None:
            return 401, _error(401, "UNAUTHENTICATED", "Invalid Credentials")
        needed = STORAGE_READ_SCOPES if method in ("GET", "HEAD") else STORAGE_WRITE_SCOPES
        if needed.isdisjoint(token.scopes):
            return 403, _error(403, "PERMISSION_DENIED", "Provided scope(s) are not authorized")
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(_JsonHandler):
            def handle_any(self) -> None:
                body = self.body()
                token = front.tokens.token(self.bearer())
                refused = front.refusal(self.command, token)
                if refused:
                    self.record(token, refused[0])
                    self.answer(*refused)
                    return
                status, headers, data = self.upstream(body)
                self.record(token, status)
                self.relay(status, headers, data)

            def record(self, token: Token | None, status: int) -> None:
                # Before the answer: a caller that saw the answer finds the request in `seen`.
                principal, scopes = (token.principal, token.scopes) if token else (None, ())
                front.seen.append(GcsRequest(self.command, self.path, principal, scopes, status))

            def upstream(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                connection = http.client.HTTPConnection(urlsplit(front.upstream).netloc, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS
                    }
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    connection.close()

            def relay(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_HEADERS | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        return Handler


_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "host"})


@contextmanager
def _served(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="devstack-stand-in", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
