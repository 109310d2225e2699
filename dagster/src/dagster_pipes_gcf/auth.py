"""Google ID tokens for calling a private Cloud Function, with the audience Google checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
from google.auth import impersonated_credentials
from google.oauth2 import id_token

from dagster_pipes_gcf.bounded import TimedOut, call_within

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEVSTORAGE_READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
DEVSTORAGE_READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


def missing_credentials_hint(exc: google.auth.exceptions.DefaultCredentialsError) -> str:
    """What to do when google-auth found no credentials at all (``exc`` is its error)."""
    return (
        f"no Google credentials found ({exc}). Set up Application Default Credentials: "
        "`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS naming "
        "a service-account key file. Against the local GCS emulator instead, set "
        "STORAGE_EMULATOR_HOST (e.g. http://127.0.0.1:4443) on both the Dagster and the "
        "function side."
    )


def is_loopback(url: str) -> bool:
    """True when ``url`` names this machine (127.0.0.1, localhost, ::1)."""
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def needs_id_token(url: str) -> bool:
    """True for a deployed function (https, non-local host); False for a local server."""
    return urlsplit(url).scheme == "https" and not is_loopback(url)


class AudienceRequired(ValueError):
    """The ID-token audience cannot be derived from the function URL; set it explicitly."""


def audience_for(url: str, audience: str | None = None) -> str:
    """The ID-token audience Google checks for a call to ``url``: ``audience`` when given;
    for ``https://REGION-PROJECT.cloudfunctions.net/NAME`` that URL (without query or
    subpath); otherwise the origin of a ``run.app`` or a local URL.

    Raises:
        AudienceRequired: any other host, e.g. a custom domain in front of the function.
    """
    if audience:
        return audience
    parts = urlsplit(url)
    host = parts.hostname or ""  # lowercased; Google's audiences never carry port 443
    origin = f"{parts.scheme}://{host}" + ("" if parts.port in (None, 443) else f":{parts.port}")
    if host.endswith(".cloudfunctions.net"):
        if name := parts.path.strip("/").split("/")[0]:
            return f"{origin}/{name}"
        raise AudienceRequired(
            f"{url} names no function: a cloudfunctions.net URL is "
            "https://REGION-PROJECT.cloudfunctions.net/FUNCTION_NAME"
        )
    if host.endswith(".run.app") or not needs_id_token(url):
        return origin
    raise AudienceRequired(
        f"cannot tell the ID-token audience for {origin}: it is neither a *.run.app nor a "
        "*.cloudfunctions.net URL (a custom domain?). Set the audience explicitly "
        "(IdTokenAuth(audience=...); CLOUD_FUNCTION_AUDIENCE in the demo) to the function's "
        "run.app URL or to a custom audience configured on the service."
    )


def default_id_token_credentials(audience: str) -> Any:
    """From a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``) or, on GCP, the
    metadata server. User credentials cannot mint ID tokens: impersonate an account instead."""
    request = google.auth.transport.requests.Request()
    return id_token.fetch_id_token_credentials(audience, request=request)  # type: ignore[no-untyped-call]


def impersonated(target_principal: str, scope: str) -> Any:
    """Credentials of ``target_principal`` with ``scope``, minted from the caller's
    application-default credentials (they need roles/iam.serviceAccountTokenCreator on it)."""
    source, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source, target_principal=target_principal, target_scopes=[scope]
    )


def impersonated_id_token_credentials(target_principal: str, audience: str) -> Any:
    """ID tokens of ``target_principal`` for ``audience``, minted from the caller's credentials."""
    return impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
        impersonated(target_principal, CLOUD_PLATFORM_SCOPE),
        target_audience=audience,
        include_email=True,
    )


class TokenTimeout(google.auth.exceptions.TransportError):
    """No ID token within the time the call had left (the refresh may finish later)."""

    def __init__(self, message: str):
        super().__init__(message)  # type: ignore[no-untyped-call]


class IdTokenAuth:
    """Adds ``Authorization: Bearer <ID token>`` for deployed functions; nothing for local URLs.

    Tokens come from a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``) or the
    metadata server, or, with ``impersonate_service_account``, are minted for that account
    from the caller's own credentials. One credential per audience is cached, and google-auth
    decides when its token is due for a refresh. The audience is derived from each URL
    (:func:`audience_for`); ``audience`` sets it for every call, as a custom domain needs.
    The keyword-only factories let tests replace credentials and transport.
    """

    def __init__(
        self,
        impersonate_service_account: str | None = None,
        *,
        audience: str | None = None,
        default_factory: Callable[[str], Any] = default_id_token_credentials,
        impersonated_factory: Callable[[str, str], Any] = impersonated_id_token_credentials,
        request_factory: Callable[[], Any] = google.auth.transport.requests.Request,
    ):
        self.impersonate_service_account = impersonate_service_account
        self.audience = audience
        self._default_factory = default_factory
        self._impersonated_factory = impersonated_factory
        self._request_factory = request_factory
        self._credentials: dict[str, Any] = {}
        self._lock = threading.Lock()

    def headers_for(self, url: str, timeout: float | None = None) -> dict[str, str]:
        """The ``Authorization`` header a call to ``url`` needs (none for a local URL).

        Raises:
            TokenTimeout: no token within ``timeout`` seconds.
            google.auth.exceptions.GoogleAuthError: google-auth could not get a token.
        """
        if not needs_id_token(url):
            return {}
        token = self.token_for(audience_for(url, self.audience), timeout)
        return {"Authorization": f"Bearer {token}"}

    def token_for(self, audience: str, timeout: float | None = None) -> str:
        """A valid ID token for ``audience``, waiting at most ``timeout`` seconds (None: as
        long as google-auth takes) for another caller's refresh and for this one's."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TokenTimeout(f"another call's token refresh took over {timeout:g}s")
        try:
            credentials = self._credentials.get(audience)
            if credentials is None:
                credentials = self._credentials[audience] = self._make_credentials(audience)
            if not credentials.valid:  # google-auth's own refresh threshold
                self._refresh(credentials, deadline)
            return str(credentials.token)
        finally:
            self._lock.release()

    def _refresh(self, credentials: Any, deadline: float | None) -> None:
        def refresh() -> None:
            credentials.refresh(self._request_factory())

        if deadline is None:
            return refresh()
        try:
            call_within(deadline - time.monotonic(), refresh)
        except TimedOut as exc:
            raise TokenTimeout(f"refreshing the ID token: {exc}") from None

    def _make_credentials(self, audience: str) -> Any:
        if self.impersonate_service_account:
            return self._impersonated_factory(self.impersonate_service_account, audience)
        return self._default_factory(audience)
