"""Google ID tokens for calling a private Cloud Function, with the audience Google checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
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
    """From a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``) or the metadata
    server; user credentials cannot mint ID tokens."""
    request = google.auth.transport.requests.Request()
    return id_token.fetch_id_token_credentials(audience, request=request)  # type: ignore[no-untyped-call]


def impersonated(target_principal: str, scope: str) -> Any:
    """``target_principal``'s credentials with ``scope``, minted from the caller's
    application-default credentials (roles/iam.serviceAccountTokenCreator on it)."""
    source, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source, target_principal=target_principal, target_scopes=[scope]
    )


def impersonated_id_token_credentials(target_principal: str, audience: str) -> Any:
    return impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
        impersonated(target_principal, CLOUD_PLATFORM_SCOPE),
        target_audience=audience,
        include_email=True,
    )


class TokenTimeout(google.auth.exceptions.TransportError):
    """No ID token within the time the call had left (the refresh may finish later)."""


class IdTokenAuth:
    """Adds ``Authorization: Bearer <ID token>`` for deployed functions; nothing for local URLs.

    Tokens come from a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``) or the
    metadata server, or, with ``impersonate_service_account``, are minted for that account
    from the caller's own credentials. One credential per audience is cached; google-auth
    decides when its token is due for a refresh. The audience is derived from each URL
    (:func:`audience_for`) unless ``audience`` sets it, as a custom domain needs. The
    keyword-only factories let tests replace credentials and transport.
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
        self._make_credentials: Callable[[str], Any] = (
            partial(impersonated_factory, impersonate_service_account)
            if impersonate_service_account
            else default_factory
        )
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
        """A valid ID token for ``audience`` within ``timeout`` seconds (None: as long as
        google-auth takes), waiting for another caller's refresh included."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # The caller holds the lock, never a refresh it gave up on: the next caller then
        # refreshes on its own budget instead of queueing behind a hung token request.
        if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            waited = f"another call's token refresh: no answer within {timeout:g}s"
            raise TokenTimeout(waited)  # type: ignore[no-untyped-call]
        try:
            credentials = self._credentials.get(audience) or self._make_credentials(audience)
            self._credentials[audience] = credentials
            if not credentials.valid:  # google-auth's own refresh threshold
                refresh = partial(credentials.refresh, self._request_factory())
                if deadline is None:
                    refresh()
                else:
                    call_within(deadline - time.monotonic(), refresh)
            return str(credentials.token)
        except TimedOut as exc:
            raise TokenTimeout(f"refreshing: {exc}") from None  # type: ignore[no-untyped-call]
        finally:
            self._lock.release()
