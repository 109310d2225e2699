"""The demo code location wires its settings into the integration as documented."""

import pytest

from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader
from gcf_demo.defs.resources import build_resources
from gcf_demo.settings import DemoSettings

ORCHESTRATOR = "dagster-pipes-orchestrator@p.iam.gserviceaccount.com"


def test_impersonation_applies_to_invoking_and_to_reading() -> None:
    settings = DemoSettings(
        function_url="https://fn-x-ew.a.run.app",
        pipes_bucket="p-pipes",
        data_lake_uri="gs://p-lake",
        impersonate_service_account=ORCHESTRATOR,
    )
    client = build_resources(settings)["pipes_function_client"]
    assert isinstance(client, PipesCloudFunctionClient)
    reader = client.message_reader
    assert isinstance(reader, PipesCloudStorageMessageReader)
    assert reader.bucket == "p-pipes"
    assert reader.impersonate_service_account == ORCHESTRATOR
    assert client.invoker.auth.impersonate_service_account == ORCHESTRATOR


def test_the_demo_retries_ambiguous_outcomes_its_idempotent_function_allows() -> None:
    settings = DemoSettings(
        function_url="https://fn-x-ew.a.run.app", pipes_bucket="p", data_lake_uri="gs://l"
    )
    client = build_resources(settings)["pipes_function_client"]
    assert client.invoker.policy.retry_ambiguous is True


def test_local_settings_impersonate_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_IMPERSONATE_SERVICE_ACCOUNT", raising=False)
    settings = DemoSettings.from_env(env_file=None)
    client = build_resources(settings)["pipes_function_client"]
    assert client.message_reader.impersonate_service_account is None
    assert client.invoker.auth.impersonate_service_account is None


def test_cloud_function_audience_sets_the_token_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_FUNCTION_URL", "https://people.example.com")
    monkeypatch.setenv("CLOUD_FUNCTION_AUDIENCE", "https://people-abc-ew.a.run.app")
    client = build_resources(DemoSettings.from_env(env_file=None))["pipes_function_client"]
    assert client.invoker.auth.audience == "https://people-abc-ew.a.run.app"
    monkeypatch.delenv("CLOUD_FUNCTION_AUDIENCE")
    client = build_resources(DemoSettings.from_env(env_file=None))["pipes_function_client"]
    assert client.invoker.auth.audience is None


def test_cloud_function_project_completes_the_logging_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUD_FUNCTION_PROJECT", "my-proj")
    client = build_resources(DemoSettings.from_env(env_file=None))["pipes_function_client"]
    assert client.function_location.project == "my-proj"
