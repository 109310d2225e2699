"""ID-token selection and caching of IdTokenAuth, without network (fakes and a 127.0.0.1 server)."""

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import google.auth
import google.auth.credentials
import google.auth.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import _helpers as google_auth_helpers
from google.auth import impersonated_credentials
from google.oauth2 import service_account

from dagster_pipes_gcf import AudienceRequired, IdTokenAuth, needs_id_token
from dagster_pipes_gcf.auth import TokenTimeout, audience_for, impersonated_id_token_credentials
from devstack.doubles import USER_ACCESS_TOKEN, QuietHandler, serving, user_adc

FUNCTION_URL = "https://dagster-pipes-gcp-abc123-ez.a.run.app/run?x=1"
AUDIENCE = "https://dagster-pipes-gcp-abc123-ez.a.run.app"
SA = "dagster-pipes-orchestrator@my-proj.iam.gserviceaccount.com"
NOW = datetime(2026, 1, 1, 12, 0)  # google-auth keeps naive UTC times


class MintingCredentials(google.auth.credentials.Credentials):
    """Real google-auth credentials (its validity rules and refresh threshold) whose refresh
    mints token-N, valid for an hour by google-auth's clock, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        assert request == "request", "refresh must use the injected transport"
        time.sleep(self.delay)
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"
        self.expiry = google_auth_helpers.utcnow() + timedelta(hours=1)


class Clock:
    """google-auth's clock, set by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Factories:
    """Records which credential source IdTokenAuth picks, and for which audience."""

    def __init__(self, refresh_delay: float = 0.0) -> None:
        self.refresh_delay = refresh_delay
        self.default_calls: list[str] = []
        self.impersonated_calls: list[tuple[str, str]] = []
        self.made: list[MintingCredentials] = []

    def default(self, audience: str) -> MintingCredentials:
        self.default_calls.append(audience)
        return self._make()

    def impersonated(self, target: str, audience: str) -> MintingCredentials:
        self.impersonated_calls.append((target, audience))
        return self._make()

    def _make(self) -> MintingCredentials:
        self.made.append(MintingCredentials(self.refresh_delay))
        return self.made[-1]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    google_clock = Clock()
    monkeypatch.setattr(google_auth_helpers, "utcnow", google_clock)
    return google_clock


@pytest.fixture
def factories(clock: Clock) -> Factories:
    return Factories()


def auth_with(
    factories: Factories, impersonate: str | None = None, audience: str | None = None
) -> IdTokenAuth:
    return IdTokenAuth(
        impersonate,
        audience=audience,
        default_factory=factories.default,
        impersonated_factory=factories.impersonated,
        request_factory=lambda: "request",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080/", False),
        ("https://localhost:8443", False),
        ("https://[::1]:8443", False),
        ("http://example.com", False),
        (FUNCTION_URL, True),
        ("https://europe-west4-my-proj.cloudfunctions.net/fn", True),
    ],
)
def test_only_deployed_https_urls_need_a_token(url: str, expected: bool) -> None:
    assert needs_id_token(url) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # run.app (both the hash and the deterministic form): the service origin.
        (FUNCTION_URL, AUDIENCE),
        ("https://people-123456789012.europe-west1.run.app/", "https://people-123456789012.europe-west1.run.app"),
        ("https://People-abc-ew.a.run.app:443/x#frag", "https://people-abc-ew.a.run.app"),
        # cloudfunctions.net: the full URL Google checks, function name included.
        ("https://europe-west4-my-proj.cloudfunctions.net/people", "https://europe-west4-my-proj.cloudfunctions.net/people"),
        ("https://europe-west4-my-proj.cloudfunctions.net/people/?a=1#f", "https://europe-west4-my-proj.cloudfunctions.net/people"),
        ("https://europe-west4-my-proj.cloudfunctions.net/people/sub/path", "https://europe-west4-my-proj.cloudfunctions.net/people"),
        ("https://EUROPE-WEST4-my-proj.CloudFunctions.net/people", "https://europe-west4-my-proj.cloudfunctions.net/people"),
        # local: no token is sent; the origin.
        ("http://127.0.0.1:8080/run", "http://127.0.0.1:8080"),
    ],
)  # fmt: skip
def test_the_audience_follows_the_url_form(url: str, expected: str) -> None:
    assert audience_for(url) == expected


def test_an_explicit_audience_wins_for_every_url_form() -> None:
    for url in [FUNCTION_URL, "https://r-p.cloudfunctions.net/f", "https://people.example.com"]:
        assert audience_for(url, "https://custom-audience") == "https://custom-audience"


@pytest.mark.parametrize(
    "url",
    [
        "https://people.example.com/run",  # a custom domain
        "https://host.example:8443/a/b",
        "https://run.app.example.com",  # not a run.app host
        "https://europe-west4-my-proj.cloudfunctions.net/",  # no function name
    ],
)
def test_an_audience_that_cannot_be_derived_fails_naming_the_setting(url: str) -> None:
    with pytest.raises(AudienceRequired) as raised:
        audience_for(url)
    message = str(raised.value)
    assert "CLOUD_FUNCTION_AUDIENCE" in message or "FUNCTION_NAME" in message


def test_a_custom_domain_fails_before_any_credentials_are_made(factories: Factories) -> None:
    with pytest.raises(AudienceRequired, match="audience=") as raised:
        auth_with(factories).headers_for("https://people.example.com/run")
    assert "CLOUD_FUNCTION_AUDIENCE" in str(raised.value)
    assert factories.made == []


def test_a_custom_domain_with_an_explicit_audience_gets_a_token_for_it(
    factories: Factories,
) -> None:
    auth = auth_with(factories, audience="https://people-abc-ew.a.run.app")
    headers = auth.headers_for("https://people.example.com/run")
    assert headers == {"Authorization": "Bearer token-1"}
    assert factories.default_calls == ["https://people-abc-ew.a.run.app"]


def test_a_cloudfunctions_net_url_gets_a_token_for_the_full_url(factories: Factories) -> None:
    auth_with(factories, impersonate=SA).headers_for(
        "https://europe-west4-my-proj.cloudfunctions.net/people?x=1"
    )
    assert factories.impersonated_calls == [
        (SA, "https://europe-west4-my-proj.cloudfunctions.net/people")
    ]


def test_a_local_url_gets_no_header_and_no_credentials(factories: Factories) -> None:
    auth = auth_with(factories, impersonate=SA)
    assert auth.headers_for("http://127.0.0.1:8080") == {}
    assert factories.made == []


def test_a_deployed_url_gets_a_bearer_token_for_its_base_url(factories: Factories) -> None:
    headers = auth_with(factories).headers_for(FUNCTION_URL)
    assert headers == {"Authorization": "Bearer token-1"}
    assert factories.default_calls == [AUDIENCE]
    assert factories.impersonated_calls == []


def test_impersonation_is_used_when_a_target_principal_is_configured(
    factories: Factories,
) -> None:
    headers = auth_with(factories, impersonate=SA).headers_for(FUNCTION_URL)
    assert headers == {"Authorization": "Bearer token-1"}
    assert factories.impersonated_calls == [(SA, AUDIENCE)]
    assert factories.default_calls == []


def test_an_empty_target_principal_means_no_impersonation(factories: Factories) -> None:
    auth_with(factories, impersonate="").headers_for(FUNCTION_URL)
    assert factories.default_calls == [AUDIENCE]
    assert factories.impersonated_calls == []


def test_the_token_is_reused_until_google_auth_says_it_is_due(
    factories: Factories, clock: Clock
) -> None:
    due = NOW + timedelta(hours=1) - google_auth_helpers.REFRESH_THRESHOLD
    auth = auth_with(factories)
    assert auth.token_for(AUDIENCE) == "token-1"
    clock.now = due - timedelta(seconds=1)
    assert auth.token_for(AUDIENCE) == "token-1"
    assert factories.made[0].refreshes == 1
    clock.now = due  # within google-auth's refresh threshold: refresh
    assert auth.token_for(AUDIENCE) == "token-2"
    assert len(factories.made) == 1, "the cached credentials are refreshed, not rebuilt"
    clock.now += timedelta(minutes=30)
    assert auth.token_for(AUDIENCE) == "token-2"


def test_a_token_is_refreshed_after_expiry(factories: Factories, clock: Clock) -> None:
    auth = auth_with(factories)
    auth.token_for(AUDIENCE)
    clock.now = NOW + timedelta(hours=2)
    assert auth.token_for(AUDIENCE) == "token-2"


def test_invalid_credentials_are_refreshed_whatever_the_expiry(factories: Factories) -> None:
    auth = auth_with(factories)
    auth.token_for(AUDIENCE)
    factories.made[0].token = None  # e.g. google-auth dropped a revoked token
    assert auth.token_for(AUDIENCE) == "token-2"


def test_a_refresh_slower_than_the_timeout_ends_the_wait_in_time(clock: Clock) -> None:
    slow = Factories(refresh_delay=3.0)
    started = time.monotonic()
    with pytest.raises(TokenTimeout, match=r"no answer within 0\.2s"):
        auth_with(slow).token_for(AUDIENCE, timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_waiting_for_another_callers_refresh_is_bounded_too(clock: Clock) -> None:
    auth = auth_with(Factories(refresh_delay=2.0))
    first = threading.Thread(target=lambda: auth.token_for(AUDIENCE))
    first.start()
    time.sleep(0.2)  # the first caller holds the lock while it refreshes
    started = time.monotonic()
    with pytest.raises(TokenTimeout, match="another call's token refresh"):
        auth.token_for(AUDIENCE, timeout=0.3)
    assert time.monotonic() - started < 1.5
    first.join()
    assert auth.token_for(AUDIENCE, timeout=0.3) == "token-1"


def test_each_audience_has_its_own_credentials(factories: Factories) -> None:
    auth = auth_with(factories)
    auth.headers_for(FUNCTION_URL)
    auth.headers_for("https://other-fn-xyz-ez.a.run.app")
    auth.headers_for(FUNCTION_URL)
    assert factories.default_calls == [AUDIENCE, "https://other-fn-xyz-ez.a.run.app"]


def test_concurrent_callers_share_one_credential(factories: Factories) -> None:
    auth = auth_with(factories)
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(auth.token_for(AUDIENCE))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tokens == ["token-1"] * 8
    assert len(factories.made) == 1 and factories.made[0].refreshes == 1


# --- the real credential factories, offline -------------------------------------------------


def test_impersonated_credentials_target_the_principal_and_audience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scopes_asked = user_adc(monkeypatch, "my-proj")
    credentials = impersonated_id_token_credentials(SA, AUDIENCE)
    assert isinstance(credentials, impersonated_credentials.IDTokenCredentials)
    # google-auth exposes these only as private attributes.
    assert credentials._target_audience == AUDIENCE
    assert credentials._include_email is True
    assert credentials._target_credentials._target_principal == SA
    assert credentials._target_credentials._source_credentials.token == USER_ACCESS_TOKEN
    assert scopes_asked == [["https://www.googleapis.com/auth/cloud-platform"]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'signature')}"


class TokenEndpoint(QuietHandler):
    """Google's OAuth token endpoint, for the ID-token JWT-bearer grant."""

    audiences: list[str]

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        assertion = form["assertion"][0].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(assertion + "=" * (-len(assertion) % 4)))
        self.audiences.append(claims["target_audience"])
        token = _jwt({"aud": claims["target_audience"], "exp": int(time.time()) + 3600})
        self.answer(200, json.dumps({"id_token": token}).encode(), "application/json")


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, list[str]]]:
    audiences: list[str] = []
    with serving(type("Handler", (TokenEndpoint,), {"audiences": audiences})) as url:
        yield f"{url}/token", audiences


def write_key_file(path: Path, token_uri: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "my-proj",
                "private_key_id": "key-1",
                "private_key": pem,
                "client_email": SA,
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )


def test_a_key_file_yields_id_tokens_for_the_function_audience(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    token_endpoint: tuple[str, list[str]],
) -> None:
    token_uri, audiences = token_endpoint
    key_file = tmp_path / "key.json"
    write_key_file(key_file, token_uri)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    auth = IdTokenAuth()  # the real default factory, transport and clock
    header = auth.headers_for(FUNCTION_URL)["Authorization"]
    assert header.startswith("Bearer ")
    claims = header.removeprefix("Bearer ").split(".")[1]
    assert (
        json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["aud"] == AUDIENCE
    )
    auth.headers_for(FUNCTION_URL)
    assert audiences == [AUDIENCE], "the cached token is reused, not fetched again"
    # The token lives an hour: google-auth refreshes it within its threshold of the end.
    issued = google_auth_helpers.utcnow()
    due = issued + timedelta(hours=1) - google_auth_helpers.REFRESH_THRESHOLD
    monkeypatch.setattr(google_auth_helpers, "utcnow", lambda: due - timedelta(seconds=30))
    auth.headers_for(FUNCTION_URL)
    assert audiences == [AUDIENCE]
    monkeypatch.setattr(google_auth_helpers, "utcnow", lambda: due + timedelta(seconds=30))
    auth.headers_for(FUNCTION_URL)
    assert audiences == [AUDIENCE, AUDIENCE], "a token due for refresh is fetched again"
    cached = auth._credentials[AUDIENCE]
    assert isinstance(cached, service_account.IDTokenCredentials)
    assert cached.service_account_email == SA


class HangsOnce(google.auth.credentials.Credentials):
    """The first refresh hangs ``hang`` s (a blackholed token request); later ones are instant."""

    def __init__(self, hang: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hang, self.refreshes = hang, 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        if self.refreshes == 1:
            time.sleep(self.hang)
            raise google.auth.exceptions.TransportError("timed out")  # type: ignore[no-untyped-call]
        self.token = f"token-{self.refreshes}"


def test_a_refresh_its_caller_gave_up_on_does_not_hold_up_the_next_caller() -> None:
    credentials = HangsOnce(hang=3.0)
    auth = IdTokenAuth(default_factory=lambda _: credentials, request_factory=object)
    with pytest.raises(TokenTimeout):
        auth.token_for(AUDIENCE, timeout=0.2)  # gives up on the hung refresh
    # The next call has a budget of its own, and the token service now answers at once.
    assert auth.token_for(AUDIENCE, timeout=1.0) == "token-2"
