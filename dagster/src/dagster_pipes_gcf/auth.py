"""Google ID tokens for calling a private Cloud Function (audience = the function URL)."""

from __future__ import annotations

import threading
from typing import Any, Protocol
from urllib.parse import urlsplit

import google.auth
import google.auth.transport.requests
from google.auth import impersonated_credentials
from google.oauth2 import id_token

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def needs_id_token(url: str) -> bool:
    """True for a deployed function (https, non-local host); False for a local server."""
    parts = urlsplit(url)
    return parts.scheme == "https" and (parts.hostname or "") not in LOCAL_HOSTS


def audience_for(url: str) -> str:
    """The token audience: the function's base URL (scheme and host, no path or query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _TokenCredentials(Protocol):
    token: Any

    @property
    def valid(self) -> bool: ...

    def refresh(self, request: Any) -> None: ...


class IdTokenAuth:
    """Adds ``Authorization: Bearer <ID token>`` for deployed functions; nothing for local URLs.

    Tokens come from a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``) or the
    metadata server, or, with ``impersonate_service_account``, are minted for that service
    account from the caller's own credentials. They are cached until shortly before expiry.
    """

    def __init__(self, impersonate_service_account: str | None = None):
        self.impersonate_service_account = impersonate_service_account
        self._credentials: dict[str, _TokenCredentials] = {}
        self._lock = threading.Lock()

    def headers_for(self, url: str) -> dict[str, str]:
        if not needs_id_token(url):
            return {}
        return {"Authorization": f"Bearer {self.token_for(audience_for(url))}"}

    def token_for(self, audience: str) -> str:
        with self._lock:
            credentials = self._credentials.get(audience)
            if credentials is None:
                credentials = self._credentials[audience] = self._make_credentials(audience)
            if not credentials.valid:  # google-auth treats tokens near expiry as invalid
                credentials.refresh(google.auth.transport.requests.Request())
            return str(credentials.token)

    def _make_credentials(self, audience: str) -> _TokenCredentials:
        if self.impersonate_service_account:
            source, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
            target = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                source_credentials=source,
                target_principal=self.impersonate_service_account,
                target_scopes=["https://www.googleapis.com/auth/cloud-platform"],
            )
            return impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
                target, target_audience=audience, include_email=True
            )
        request = google.auth.transport.requests.Request()
        return id_token.fetch_id_token_credentials(audience, request=request)  # type: ignore[no-untyped-call,no-any-return]
