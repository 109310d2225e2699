"""`just cloud-smoke` (infra/scripts/cloud_smoke.py) through the real local stack.

GCP is out of reach here, so each failure the script must name is produced locally the way
the platform would produce it: test-double functions answering like Cloud Run's front end
(401, 403), a Pipes bucket that does not exist, a function that never sends ``closed``, a
function that crashes or refuses the request. The unit tests at the end cover what needs
credentials (who the caller is) and the answers no local function gives.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from deltalake import DeltaTable

from dagster_pipes_gcf import (
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
    PollingPolicy,
)
from devstack.cloud_run_jobs import running_stand_in
from devstack.net import LOOPBACK, free_port
from devstack.services import REPO_ROOT, function_command, running
from devstack.stack import LocalStack, local_stack
from gcf_demo.defs.resources import build_resources
from gcf_demo.settings import DemoSettings
from infra.scripts import cloud_smoke as smoke

TEST_FUNCTIONS = REPO_ROOT / "cloud_function" / "tests" / "functions"
ORCHESTRATOR = "dagster-pipes-orchestrator@my-project.iam.gserviceaccount.com"
DEMO_SETTINGS = ("CLOUD_FUNCTION_URL", "PIPES_BUCKET", "DATA_LAKE_URI")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # A directory lake: these tests plant and read its files (gs:// is the stack's default).
    with local_stack(tmp_path_factory.mktemp("smoke-stack"), gs_lake=False) as running_stack:
        yield running_stack


@pytest.fixture
def emulator(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """The smoke test's reader (this process) talks to the stack's emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.emulator_url)
    return stack


@pytest.fixture(scope="module")
def test_double_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """URL of a test-double function by name, started on first use, stopped with the module."""
    log_dir = tmp_path_factory.mktemp("test-doubles")
    started: dict[str, str] = {}
    with ExitStack() as servers:

        def url_of(name: str) -> str:
            if name not in started:
                port = free_port()
                command = function_command(port, source=TEST_FUNCTIONS / f"{name}.py")
                servers.enter_context(
                    running(name, command, port, log_path=log_dir / f"{name}.log")
                )
                started[name] = f"http://{LOOPBACK}:{port}"
            return started[name]

        yield url_of


def settings_for(stack: LocalStack, **overrides: Any) -> DemoSettings:
    lake = Path(stack.data_lake_uri) / f"smoke-{uuid.uuid4().hex[:8]}"
    lake.mkdir()
    values: dict[str, Any] = {
        "function_url": stack.function_url,
        "pipes_bucket": stack.pipes_bucket,
        "data_lake_uri": str(lake),
        **overrides,
    }
    return DemoSettings(**values)


def run(settings: DemoSettings, **kwargs: Any) -> smoke.SmokeReport:
    report = smoke.run_smoke(settings, num_rows=20, **kwargs)
    print(report.render())  # shown when a test fails
    return report


def failure_of(report: smoke.SmokeReport) -> str:
    assert report.failure is not None, report.render()
    return f"{report.failure.problem} | {report.failure.fix}"


def quick_drain(settings: DemoSettings) -> dict[str, Any]:
    """The demo's resources, with a reader that waits 1 s (not 30) for a missing `closed`."""
    reader = PipesCloudStorageMessageReader(
        bucket=settings.pipes_bucket, polling=PollingPolicy(drain_timeout=1.0)
    )
    return {
        **build_resources(settings),
        "pipes_function_client": PipesCloudFunctionClient(message_reader=reader),
    }


# --- through the real local stack -----------------------------------------------------------


@pytest.mark.integration
def test_a_working_stack_passes_with_the_full_report(emulator: LocalStack) -> None:
    settings = settings_for(emulator)
    report = run(settings)

    assert report.passed, report.render()
    assert report.calls.statuses == [200]
    assert report.calls.messages["opened"] == 1
    assert report.calls.messages["closed"] == 1
    assert report.calls.messages["report_asset_materialization"] == 1
    assert report.calls.messages["log"] >= 1
    assert report.table_uri == f"{settings.data_lake_uri}/cloud_function_pipes_asset"
    assert report.delta_version == DeltaTable(report.table_uri).version()
    text = report.render()
    for line in (
        f"function       {emulator.function_url}",
        "identity       none (local URL: no ID token is sent)",
        "token audience - (no token)",
        "HTTP status    200",
        f"Pipes bucket   gs://{emulator.pipes_bucket}",
        f"table          {report.table_uri}",
        f"Delta version  {report.delta_version}",
    ):
        assert line in text
    assert text.rstrip().endswith(
        "PASS: the function wrote the table and every Pipes message came back."
    )


@pytest.mark.integration
def test_the_cli_reads_env_and_exits_0_on_pass(
    emulator: LocalStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(emulator)
    for name in DEMO_SETTINGS:  # absent (restored afterwards), so .env provides them
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"CLOUD_FUNCTION_URL={settings.function_url}\nPIPES_BUCKET={settings.pipes_bucket}\n"
        f"DATA_LAKE_URI={settings.data_lake_uri}\n"
    )

    code = smoke.main(["--env-file", str(env_file), "--rows", "7"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"cloud_function_pipes_asset (7 rows) against {settings.function_url}" in out
    assert "PASS" in out and f"{settings.data_lake_uri}/cloud_function_pipes_asset" in out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/401", "HTTP 401: the function did not accept the ID token (audience"),
        ("/403", "may not invoke the function (roles/run.invoker)"),
    ],
)
def test_a_platform_refusal_names_auth(
    emulator: LocalStack, test_double_url: Callable[[str], str], path: str, expected: str
) -> None:
    url = test_double_url("platform_refusal") + path
    report = run(settings_for(emulator, function_url=url))

    assert not report.passed
    assert report.calls.statuses == [int(path[1:])]
    assert report.calls.messages["closed"] == 0
    assert expected in failure_of(report)
    assert "just cloud-env" in failure_of(report)
    assert report.render().splitlines()[-2].startswith("FAIL: HTTP")


@pytest.mark.integration
def test_the_functions_own_403_is_not_mistaken_for_a_missing_invoker_role(
    emulator: LocalStack, tmp_path: Path
) -> None:
    outside = tmp_path / "not-an-allowed-lake"
    outside.mkdir()
    report = run(settings_for(emulator, data_lake_uri=str(outside)))

    failure = failure_of(report)
    assert report.calls.statuses == [403]
    assert "HTTP 403: the function refused the request" in failure
    assert "dl_bucket" in failure
    assert "run.invoker" not in failure
    assert not list(outside.iterdir()), "nothing may be written outside the allowed root"


@pytest.mark.integration
def test_a_pipes_bucket_that_does_not_exist_fails_before_the_call(emulator: LocalStack) -> None:
    report = run(settings_for(emulator, pipes_bucket="no-such-pipes-bucket-4f1c"))

    assert "Pipes bucket gs://no-such-pipes-bucket-4f1c does not exist" in failure_of(report)
    assert "pipes_bucket_name" in failure_of(report)
    assert report.calls.statuses == [], "the function must not be called"


@pytest.mark.integration
def test_a_function_that_never_sends_closed_fails(
    emulator: LocalStack, test_double_url: Callable[[str], str]
) -> None:
    url = test_double_url("no_pipes")
    report = run(settings_for(emulator, function_url=url), resources_factory=quick_drain)

    failure = failure_of(report)
    assert report.calls.statuses == [200]
    assert "answered HTTP 200 but its `closed` message never arrived" in failure
    assert "`closed` message not received" in failure  # the reader's own words follow
    assert report.table_uri is None and report.delta_version is None


@pytest.mark.integration
def test_a_function_that_cannot_write_its_messages_names_the_runtime_grant(
    emulator: LocalStack, tmp_path: Path
) -> None:
    # This function's storage (a second emulator) has no Pipes bucket: its writes fail like a
    # runtime account without objectCreator, while Dagster reads the real bucket.
    with local_stack(
        tmp_path / "stack-without-the-bucket",
        pipes_bucket="another-bucket",
        gs_lake=False,
        function_env={
            "PIPES_BUCKET": emulator.pipes_bucket,
            "DATA_LAKE_URI": emulator.data_lake_uri,
        },
    ) as cut_off:
        settings = settings_for(emulator, function_url=cut_off.function_url)
        report = run(settings, resources_factory=quick_drain)

    failure = failure_of(report)
    assert report.calls.statuses == [502]
    assert f"could not write its Pipes messages to gs://{emulator.pipes_bucket}" in failure
    assert "roles/storage.objectCreator" in failure


@pytest.mark.integration
def test_a_crashing_function_fails_naming_the_remote_error(emulator: LocalStack) -> None:
    settings = settings_for(emulator)
    log = Path(settings.data_lake_uri) / "cloud_function_pipes_asset" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("a Delta log entry that is not JSON\n")

    report = run(settings)

    failure = failure_of(report)
    assert report.calls.statuses == [500]
    assert "HTTP 500: the function failed:" in failure
    assert "Error" in failure and "gcloud functions logs read" in failure


# --- what needs GCP: unit tests ----------------------------------------------------------------


def cloud_settings(**overrides: Any) -> DemoSettings:
    values: dict[str, Any] = {
        "function_url": "https://people-abc123-ez.a.run.app",
        "pipes_bucket": "my-project-dagster-pipes-logs",
        "data_lake_uri": "gs://my-project-data-lake",
        **overrides,
    }
    return DemoSettings(**values)


class _Credentials:
    def __init__(self, email: str | None = None):
        if email is not None:
            self.service_account_email = email


def test_the_identity_is_the_impersonated_account() -> None:
    settings = cloud_settings(impersonate_service_account=ORCHESTRATOR)
    identity = smoke.describe_identity(settings, adc=lambda: pytest.fail("ADC not needed"))
    assert identity.startswith(f"serviceAccount:{ORCHESTRATOR} (impersonated")


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (_Credentials("ci@p.iam.gserviceaccount.com"), "serviceAccount:ci@p.iam.gserviceaccount"),
        (_Credentials("default"), "serviceAccount of this VM (metadata server)"),
        (_Credentials(), "user account (application-default credentials), which cannot mint"),
    ],
)
def test_the_identity_without_impersonation_is_the_adc_principal(
    credentials: _Credentials, expected: str
) -> None:
    identity = smoke.describe_identity(cloud_settings(), adc=lambda: (credentials, "p"))
    assert identity.startswith(expected)


def test_the_audience_is_the_clients() -> None:
    assert smoke.token_audience(cloud_settings()) == "https://people-abc123-ez.a.run.app"
    legacy = cloud_settings(function_url="https://europe-west4-p.cloudfunctions.net/people")
    assert smoke.token_audience(legacy) == "https://europe-west4-p.cloudfunctions.net/people"
    explicit = cloud_settings(function_audience="https://people-abc123-ez.a.run.app")
    assert smoke.token_audience(explicit).endswith("(CLOUD_FUNCTION_AUDIENCE)")
    local = cloud_settings(function_url="http://127.0.0.1:8080")
    assert smoke.token_audience(local) == "- (no token)"


def test_a_custom_domain_without_an_audience_fails_before_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A shell or an earlier test's .env may set it; the emulator rule would answer first.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    settings = cloud_settings(function_url="https://people.example.com")
    finding = smoke.check_settings(settings)
    assert finding is not None and "cannot tell the ID-token audience" in finding.problem
    assert "CLOUD_FUNCTION_AUDIENCE" in finding.fix


def test_an_emulator_host_with_a_deployed_function_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023")
    finding = smoke.check_settings(cloud_settings())
    assert finding is not None and "STORAGE_EMULATOR_HOST" in finding.problem


def test_a_token_that_cannot_be_minted_names_the_impersonation_grant() -> None:
    class RefusingAuth:
        def headers_for(self, url: str) -> dict[str, str]:
            from google.auth.exceptions import RefreshError

            raise RefreshError("Permission 'iam.serviceAccounts.getOpenIdToken' denied")

    class Client:
        invoker = type("Invoker", (), {"auth": RefusingAuth()})()

    settings = cloud_settings(impersonate_service_account=ORCHESTRATOR)
    finding = smoke.check_token(Client(), settings, "me")
    assert finding is not None
    assert "cannot mint an ID token as me: Permission 'iam.serviceAccounts" in finding.problem
    assert "orchestrator_impersonators" in finding.fix


def _response(status: int, body: str, content_type: str = "application/json") -> Any:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    response.headers["Content-Type"] = content_type
    return response


def test_the_cli_refuses_a_row_count_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        smoke.main(["--rows", "0"])
    assert exit_.value.code == 2
    assert "--rows: must be between 1 and 1000000" in capsys.readouterr().err


def test_a_pipes_delivery_failure_names_the_runtime_bucket_grant() -> None:
    report = smoke.SmokeReport("https://f", "me", "https://f", "pipes-bucket")
    report.calls.record_response(
        _response(
            502,
            '{"status": "error", "error": {"type": "PipesMessageDeliveryError", '
            '"message": "could not write chunk 1: 403 Forbidden"}}',
        )
    )
    finding = smoke.diagnose_http(report.calls, report)
    assert finding is not None
    assert "HTTP 502: the function could not write its Pipes messages" in finding.problem
    assert "roles/storage.objectCreator" in finding.fix


def test_the_report_shows_the_trace_when_the_function_reports_one() -> None:
    report = smoke.SmokeReport(
        "https://f", "me", "https://f", "b", trace_id="4bf92f35", logging_url="https://log"
    )
    text = report.render()
    assert "trace id       4bf92f35" in text and "trace logs     https://log" in text
    assert "trace id       -" in smoke.SmokeReport("https://f", "me", "a", "b").render()


# --- the Cloud Run job, against the Cloud Run Jobs stand-in -------------------------------


JOB_PARENT = "projects/local-project/locations/us-central1/jobs"


@pytest.fixture(scope="module")
def jobs_endpoint(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stand-in with the demo's ``people-job`` and a ``broken-job`` whose tasks exit 3."""
    env = {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.data_lake_uri,
    }
    jobs: dict[str, dict[str, Any]] = {
        "people-job": {"command": [sys.executable, "-m", "people_lake.task"], "env": env},
        "broken-job": {
            "command": [sys.executable, "-c", "raise SystemExit(3)"],
            "env": env,
            "max_retries": 0,
        },
    }
    with running_stand_in(tmp_path_factory.mktemp("smoke-jobs"), jobs) as endpoint:
        yield endpoint


@pytest.mark.integration
def test_the_cli_runs_the_job_when_cloud_run_people_job_is_set(
    emulator: LocalStack,
    jobs_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(emulator)
    for name, value in {
        "CLOUD_FUNCTION_URL": settings.function_url,
        "PIPES_BUCKET": settings.pipes_bucket,
        "DATA_LAKE_URI": settings.data_lake_uri,
        "CLOUD_RUN_PEOPLE_JOB": f"{JOB_PARENT}/people-job",
        "CLOUD_RUN_JOBS_ENDPOINT": jobs_endpoint,
    }.items():
        monkeypatch.setenv(name, value)

    code = smoke.main(["--env-file", str(tmp_path / "absent.env"), "--rows", "9"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"people_job over {smoke.JOB_TASKS} tasks of {JOB_PARENT}/people-job" in out
    assert "cloud-smoke job report" in out and "2 of 2 succeeded" in out
    assert "PASS: every task wrote its share" in out
    assert DeltaTable(f"{settings.data_lake_uri}/people_job").to_pyarrow_table().num_rows == 9


@pytest.mark.integration
def test_a_failing_job_task_fails_naming_the_task(emulator: LocalStack, jobs_endpoint: str) -> None:
    report = smoke.run_job_smoke(
        settings_for(emulator), f"{JOB_PARENT}/broken-job", endpoint=jobs_endpoint, num_rows=4
    )
    print(report.render())
    assert report.failure is not None
    assert report.failure.problem.startswith("people_job failed: ")
    assert "0 of 2 task(s) succeeded" in report.failure.problem
    assert "exit code 3" in report.failure.problem
