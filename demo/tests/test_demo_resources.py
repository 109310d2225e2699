"""The demo code location's settings change what its client does: who it acts as, which
token audience it asks for, which outcomes it retries, where the logs link points."""

from collections.abc import Iterator
from typing import Any

import pytest
from google.auth import impersonated_credentials
from google.oauth2 import credentials as user_credentials

import dagster_pipes_gcf.auth
from dagster_pipes_gcf import CallTrace, PipesCloudFunctionClient
from devstack.doubles import QuietHandler, serving, user_adc
from gcf_demo.defs.resources import build_resources
from gcf_demo.settings import DemoSettings

ORCHESTRATOR = "dagster-pipes-orchestrator@p.iam.gserviceaccount.com"
RUN_APP_URL = "https://fn-x-ew.a.run.app"


class TokenRequests:
    """Who google-auth was asked to mint ID tokens as (impersonated or not), and for what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.impersonated: list[tuple[str, str]] = []
        self.direct: list[str] = []
        user_adc(monkeypatch, "p")

        def refresh(credentials: Any, request: Any) -> None:  # binds to the credentials
            self._impersonated_refresh(credentials, request)

        monkeypatch.setattr(impersonated_credentials.IDTokenCredentials, "refresh", refresh)
        monkeypatch.setattr(
            dagster_pipes_gcf.auth.id_token, "fetch_id_token_credentials", self._direct_credentials
        )

    def _impersonated_refresh(self, credentials: Any, request: Any) -> None:
        principal = credentials._target_credentials._target_principal  # google-auth private
        self.impersonated.append((principal, credentials._target_audience))
        credentials.token = "impersonated-token"

    def _direct_credentials(self, audience: str, request: Any = None) -> Any:
        self.direct.append(audience)
        return user_credentials.Credentials(token="direct-token")


@pytest.fixture
def token_requests(monkeypatch: pytest.MonkeyPatch) -> TokenRequests:
    return TokenRequests(monkeypatch)


def demo_client(**settings: Any) -> PipesCloudFunctionClient:
    defaults = {"function_url": RUN_APP_URL, "pipes_bucket": "p-pipes", "data_lake_uri": "gs://l"}
    client = build_resources(DemoSettings(**{**defaults, **settings}))["pipes_function_client"]
    assert isinstance(client, PipesCloudFunctionClient)
    return client


def test_impersonation_applies_to_invoking_and_to_reading(token_requests: TokenRequests) -> None:
    client = demo_client(impersonate_service_account=ORCHESTRATOR)

    headers = client.invoker.auth.headers_for(f"{RUN_APP_URL}/run")
    assert headers == {"Authorization": "Bearer impersonated-token"}
    assert token_requests.impersonated == [(ORCHESTRATOR, RUN_APP_URL)]
    assert token_requests.direct == []
    reading_as = client.message_reader.client._credentials  # type: ignore[attr-defined]
    assert isinstance(reading_as, impersonated_credentials.Credentials)
    assert reading_as._target_principal == ORCHESTRATOR


def test_without_impersonation_tokens_come_from_the_callers_own_credentials(
    token_requests: TokenRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_FUNCTION_URL", RUN_APP_URL)
    monkeypatch.delenv("GOOGLE_IMPERSONATE_SERVICE_ACCOUNT", raising=False)
    client = build_resources(DemoSettings.from_env(env_file=None))["pipes_function_client"]

    headers = client.invoker.auth.headers_for(f"{RUN_APP_URL}/run")
    assert headers == {"Authorization": "Bearer direct-token"}
    assert token_requests.direct == [RUN_APP_URL] and token_requests.impersonated == []


def test_cloud_function_audience_sets_the_token_audience(
    token_requests: TokenRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_FUNCTION_URL", "https://people.example.com")
    monkeypatch.setenv("CLOUD_FUNCTION_AUDIENCE", "https://people-abc-ew.a.run.app")
    monkeypatch.delenv("GOOGLE_IMPERSONATE_SERVICE_ACCOUNT", raising=False)
    settings = DemoSettings.from_env(env_file=None)
    auth = build_resources(settings)["pipes_function_client"].invoker.auth
    auth.headers_for(settings.function_url)
    assert token_requests.direct == ["https://people-abc-ew.a.run.app"]

    monkeypatch.delenv("CLOUD_FUNCTION_AUDIENCE")
    settings = DemoSettings.from_env(env_file=None)
    auth = build_resources(settings)["pipes_function_client"].invoker.auth
    with pytest.raises(dagster_pipes_gcf.auth.AudienceRequired):
        auth.headers_for(settings.function_url)


class LosesFirstAnswer(QuietHandler):
    """Answers the first POST with a bare 502 (the platform lost the answer), then 200."""

    posts: list[int]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append(1)
        status, body = (502, b"bad gateway") if len(self.posts) == 1 else (200, b'{"status":"ok"}')
        self.answer(status, body)


@pytest.fixture
def loses_first_answer() -> Iterator[tuple[str, list[int]]]:
    posts: list[int] = []
    with serving(type("Handler", (LosesFirstAnswer,), {"posts": posts})) as url:
        yield url, posts


def test_the_demo_retries_an_answer_the_platform_lost(
    loses_first_answer: tuple[str, list[int]],
) -> None:
    """Its function is idempotent on the invocation id, so the demo opts in to retrying
    outcomes where the function may have run; the library's default would fail the step."""
    url, posts = loses_first_answer
    call = demo_client(function_url=url).invoker.start(url)
    for attempt in call.attempts():
        with attempt:
            call.post({})
    response = call.result()
    assert response.status == 200 and response.attempts == 2 and len(posts) == 2


def test_cloud_function_project_completes_the_logging_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUD_FUNCTION_URL", RUN_APP_URL)
    monkeypatch.setenv("CLOUD_FUNCTION_PROJECT", "my-proj")
    client = build_resources(DemoSettings.from_env(env_file=None))["pipes_function_client"]
    trace = CallTrace.start(
        RUN_APP_URL, run_id="r", asset_key="a", location=client.function_location
    )
    assert trace.logging_url is not None and "project=my-proj" in trace.logging_url
