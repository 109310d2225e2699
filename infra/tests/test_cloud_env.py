"""`just cloud-env`: .env from `terraform output -json`, fed sample JSON (no Terraform needed)."""

import io
import json
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from gcf_demo.settings import DemoSettings
from infra.scripts import cloud_env
from infra.tests import contracts as c

URL = "https://dagster-pipes-gcp-abc123-ez.a.run.app"
ORCHESTRATOR = "dagster-pipes-orchestrator@my-proj.iam.gserviceaccount.com"


def out(value: str) -> dict[str, Any]:
    return {"sensitive": False, "type": "string", "value": value}


# What `terraform output -json` prints after `just deploy` (one entry per output in outputs.tf).
SAMPLE = {
    "function_url": out(URL),
    "function_name": out("dagster-pipes-gcp"),
    "project_id": out("my-proj"),
    "region": out("europe-west4"),
    "pipes_bucket_name": out("my-proj-dagster-pipes-logs"),
    "data_lake_bucket_name": out("my-proj-data-lake"),
    "data_lake_uri": out("gs://my-proj-data-lake"),
    "function_source_bucket_name": out("my-proj-function-source"),
    "runtime_service_account_email": out("dagster-pipes-runtime@my-proj.iam.gserviceaccount.com"),
    "orchestrator_service_account_email": out(ORCHESTRATOR),
    "build_service_account_email": out("dagster-pipes-build@my-proj.iam.gserviceaccount.com"),
}
EXPECTED = {
    "CLOUD_FUNCTION_URL": URL,
    "PIPES_BUCKET": "my-proj-dagster-pipes-logs",
    "DATA_LAKE_URI": "gs://my-proj-data-lake",
    "GOOGLE_IMPERSONATE_SERVICE_ACCOUNT": ORCHESTRATOR,
    "CLOUD_FUNCTION_PROJECT": "my-proj",
}


def test_the_sample_has_exactly_the_outputs_terraform_declares() -> None:
    assert set(SAMPLE) == set(c.Terraform.load().outputs)


def test_writes_every_orchestrator_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    cloud_env.write_env(SAMPLE, env_file)
    assert dotenv_values(env_file) == EXPECTED
    assert set(EXPECTED) == c.orchestrator_env_vars() - cloud_env.USER_SETTINGS


def test_keeps_unowned_settings_and_drops_the_emulator(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CLOUD_FUNCTION_URL=http://127.0.0.1:8080\nPIPES_BUCKET=dagster-pipes-local\n"
        "STORAGE_EMULATOR_HOST=http://127.0.0.1:9023\nDAGSTER_PORT=3100\n"
    )
    cloud_env.write_env(SAMPLE, env_file)
    assert dotenv_values(env_file) == {**EXPECTED, "DAGSTER_PORT": "3100"}


def test_keeps_the_audience_only_the_user_can_know(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CLOUD_FUNCTION_AUDIENCE=https://people-abc-ez.a.run.app\n")
    cloud_env.write_env(SAMPLE, env_file)
    assert dotenv_values(env_file)["CLOUD_FUNCTION_AUDIENCE"] == "https://people-abc-ez.a.run.app"


def test_kept_settings_survive_quotes_comments_and_line_breaks(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        '# my settings\nNOTE="a # b"\nMULTI="x\\ny"\nQUOTED="say \\"hi\\" \\\\ bye"\nEMPTY=\n'
    )
    kept = {"NOTE": "a # b", "MULTI": "x\ny", "QUOTED": 'say "hi" \\ bye', "EMPTY": ""}
    assert dotenv_values(env_file) == kept  # what the user wrote
    cloud_env.write_env(SAMPLE, env_file)
    assert dotenv_values(env_file) == {**EXPECTED, **kept}


@pytest.mark.parametrize("broken", ["pipes_bucket_name", "function_url"])
def test_a_missing_output_is_an_error_and_leaves_env_alone(tmp_path: Path, broken: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DAGSTER_PORT=3000\n")
    outputs = {k: v for k, v in SAMPLE.items() if k != broken}
    with pytest.raises(cloud_env.CloudEnvError, match=broken):
        cloud_env.write_env(outputs, env_file)
    assert env_file.read_text() == "DAGSTER_PORT=3000\n"


def test_an_empty_output_value_is_an_error(tmp_path: Path) -> None:
    outputs = {**SAMPLE, "data_lake_uri": out("  ")}
    with pytest.raises(cloud_env.CloudEnvError, match="data_lake_uri"):
        cloud_env.write_env(outputs, tmp_path / ".env")


def test_a_plain_http_url_is_rejected(tmp_path: Path) -> None:
    outputs = {**SAMPLE, "function_url": out("http://example.com")}
    with pytest.raises(cloud_env.CloudEnvError, match="not an https URL"):
        cloud_env.write_env(outputs, tmp_path / ".env")


def run_main(monkeypatch: pytest.MonkeyPatch, stdin: str, env_file: Path) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cloud_env.main(["--env-file", str(env_file)])


def test_main_reads_terraform_json_from_stdin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    assert run_main(monkeypatch, json.dumps(SAMPLE), env_file) == 0
    assert dotenv_values(env_file) == EXPECTED
    assert f"CLOUD_FUNCTION_URL={URL}" in capsys.readouterr().out


def test_main_without_state_tells_to_deploy_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    assert run_main(monkeypatch, "{}\n", env_file) == 1
    assert "run `just deploy` first" in capsys.readouterr().err
    assert not env_file.exists()


def test_main_rejects_non_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_main(monkeypatch, "Error: No outputs found", tmp_path / ".env") == 1


def test_the_orchestrator_loads_the_written_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [*EXPECTED, "STORAGE_EMULATOR_HOST"]:
        monkeypatch.setenv(name, "")  # recorded, so monkeypatch removes what load_dotenv sets
        monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    cloud_env.write_env(SAMPLE, env_file)
    settings = DemoSettings.from_env(env_file)
    assert settings == DemoSettings(
        function_url=URL,
        pipes_bucket="my-proj-dagster-pipes-logs",
        data_lake_uri="gs://my-proj-data-lake",
        impersonate_service_account=ORCHESTRATOR,
        function_project="my-proj",
    )
