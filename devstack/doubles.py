"""Test doubles more than one test suite uses (stdlib and google-auth only, so the client's
unit tests can use them at every supported version): an HTTP stand-in served on 127.0.0.1,
and Application Default Credentials of a user."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import google.auth
from google.oauth2 import credentials as user_credentials

from devstack.net import LOOPBACK

if TYPE_CHECKING:
    import pytest

USER_ACCESS_TOKEN = "user-access-token"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that answers in one call and prints no access log."""

    def answer(self, status: int, body: bytes, content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free port of 127.0.0.1 in a daemon thread: its base URL."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def user_adc(monkeypatch: pytest.MonkeyPatch, project: str) -> list[Any]:
    """``google.auth.default()`` answers a user's credentials (token ``USER_ACCESS_TOKEN``)
    in ``project``; the list it returns collects the scopes each call asked for."""
    scopes_asked: list[Any] = []
    source = user_credentials.Credentials(token=USER_ACCESS_TOKEN)  # type: ignore[no-untyped-call]

    def default(scopes: Any = None, **_: Any) -> tuple[Any, str]:
        scopes_asked.append(scopes)
        return source, project

    monkeypatch.setattr(google.auth, "default", default)
    return scopes_asked
