"""Check a deployed stack with one materialization (``just cloud-smoke``).

Run after ``just deploy`` and ``just cloud-env``: the settings are the demo code location's
(``.env`` via :class:`gcf_demo.settings.DemoSettings`). The script materializes
``cloud_function_pipes_asset`` once, in this process, with the demo's own resources, then
prints who called the function with which token audience, what it answered, what came back
through the Pipes bucket, and PASS, or FAIL naming the first thing that went wrong with a fix.

With ``CLOUD_RUN_PEOPLE_JOB`` set (``projects/P/locations/L/jobs/J``), it then materializes
``people_job`` once over ``JOB_TASKS`` tasks of that Cloud Run job and reports its execution
(``CLOUD_RUN_JOBS_ENDPOINT``, ``host:port`` of a local stand-in, is for the tests).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import deltalake  # noqa: F401 - imported before polars (pulled in by the demo) on purpose
import google.auth
import requests
from dagster import (
    DagsterInstance,
    ExecuteInProcessResult,
    PipesMessageHandler,
    materialize,
)
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

from dagster_pipes_gcf.auth import AudienceRequired, audience_for, needs_id_token
from gcf_demo.defs.assets import cloud_function_pipes_asset
from gcf_demo.defs.job_assets import build_job_resources, people_job
from gcf_demo.defs.resources import build_resources
from gcf_demo.settings import REPO_ROOT, DemoSettings

ASSET = cloud_function_pipes_asset
DEFAULT_ROWS = 100
JOB_TASKS = 2
MAX_FAILURE_LINES = 1 + JOB_TASKS  # the execution's line, then one per failed task
TROUBLESHOOTING = "docs/troubleshooting.md"
ResourcesFactory = Callable[[DemoSettings], dict[str, Any]]
AdcLookup = Callable[[], tuple[Any, str | None]]


@dataclass(frozen=True)
class Finding:
    """The first thing that went wrong, and what to do about it."""

    problem: str
    fix: str


@dataclass
class CallLog:
    """What the smoke test observed of the call: HTTP answers and Pipes messages."""

    statuses: list[int] = field(default_factory=list)
    error_bodies: list[Mapping[str, Any] | None] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_response(self, response: requests.Response, *_: Any, **__: Any) -> None:
        self.statuses.append(response.status_code)
        self.error_bodies.append(None if response.ok else _handler_error(response))

    def record_message(self, method: str) -> None:
        with self.lock:
            self.messages[method] += 1


@dataclass
class Report:
    """A report of ``just cloud-smoke``: its rows, then PASS or FAIL with the fix."""

    title: ClassVar[str]
    pass_verdict: ClassVar[str]
    failure: Finding | None = field(default=None, kw_only=True)

    @property
    def passed(self) -> bool:
        return self.failure is None

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"  {name:<15}{value}" for name, value in self.rows()]
        if self.failure is None:
            verdict = f"PASS: {self.pass_verdict}"
        else:
            verdict = f"FAIL: {self.failure.problem}\n  fix: {self.failure.fix}"
        return f"{self.title}:\n" + "\n".join(lines) + "\n" + verdict


@dataclass
class SmokeReport(Report):
    """What ``just cloud-smoke`` prints of the function's materialization."""

    title = "cloud-smoke report"
    pass_verdict = "the function wrote the table and every Pipes message came back."
    function_url: str
    identity: str
    audience: str
    pipes_bucket: str
    calls: CallLog = field(default_factory=CallLog)
    table_uri: str | None = None
    delta_version: int | None = None
    trace_id: str | None = None
    logging_url: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("function", self.function_url),
            ("identity", self.identity),
            ("token audience", self.audience),
            ("HTTP status", _statuses(self.calls.statuses)),
            ("Pipes bucket", f"gs://{self.pipes_bucket}"),
            ("messages", _messages(self.calls.messages)),
            ("table", self.table_uri or "-"),
            ("Delta version", "-" if self.delta_version is None else str(self.delta_version)),
            ("trace id", self.trace_id or "-"),
            ("trace logs", self.logging_url or "-"),
        ]


def _statuses(statuses: Sequence[int]) -> str:
    if not statuses:
        return "- (no HTTP answer)"
    if len(statuses) == 1:
        return str(statuses[0])
    return f"{statuses[-1]} (attempts answered {', '.join(map(str, statuses))})"


def _messages(counts: Counter[str]) -> str:
    if not counts:
        return "0"
    parts = ", ".join(f"{method} {count}" for method, count in sorted(counts.items()))
    return f"{sum(counts.values())} ({parts})"


def _handler_error(response: requests.Response) -> Mapping[str, Any] | None:
    """The function's own JSON error (gcf_pipes), or None for a platform answer."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


# --- identity and audience ----------------------------------------------------------------


def _adc() -> tuple[Any, str | None]:
    credentials, project = google.auth.default()
    return credentials, project


def describe_identity(settings: DemoSettings, adc: AdcLookup = _adc) -> str:
    """Who the function sees as the caller."""
    if not needs_id_token(settings.function_url):
        return "none (local URL: no ID token is sent)"
    if settings.impersonate_service_account:
        return (
            f"serviceAccount:{settings.impersonate_service_account} "
            "(impersonated with your application-default credentials)"
        )
    try:
        credentials, _ = adc()
    except auth_exceptions.DefaultCredentialsError:
        return "no application-default credentials"
    email = getattr(credentials, "service_account_email", None)
    if email == "default":
        return "serviceAccount of this VM (metadata server)"
    if email:
        return f"serviceAccount:{email} (application-default credentials)"
    return (
        "user account (application-default credentials), which cannot mint ID tokens: "
        "set GOOGLE_IMPERSONATE_SERVICE_ACCOUNT"
    )


def token_audience(settings: DemoSettings) -> str:
    """The audience the client's ID token carries (as the client computes it)."""
    if not needs_id_token(settings.function_url):
        return "- (no token)"
    try:
        audience = audience_for(settings.function_url, settings.function_audience)
    except AudienceRequired:
        return "- (cannot be derived from the URL: set CLOUD_FUNCTION_AUDIENCE)"
    return audience + (" (CLOUD_FUNCTION_AUDIENCE)" if settings.function_audience else "")


# --- before the call ------------------------------------------------------------------------


def check_settings(settings: DemoSettings) -> Finding | None:
    mismatch = settings.emulator_mismatch()
    if mismatch:
        return Finding(
            mismatch,
            "unset STORAGE_EMULATOR_HOST (shell and .env); `just cloud-env` writes a .env "
            "without it",
        )
    try:
        audience_for(settings.function_url, settings.function_audience)
    except AudienceRequired as exc:
        return Finding(
            str(exc).split(". ")[0],
            "set CLOUD_FUNCTION_AUDIENCE to the function's run.app URL (Terraform output "
            "function_url) or to the custom audience configured on the service",
        )
    if not settings.function_url.startswith(("https://", "http://")):
        return Finding(
            f"CLOUD_FUNCTION_URL is not a URL: {settings.function_url!r}",
            "run `just cloud-env` (it writes Terraform's function_url)",
        )
    return None


def check_token(client: Any, settings: DemoSettings, identity: str) -> Finding | None:
    """Mint the ID token the call will carry (nothing to mint for a local URL)."""
    auth = getattr(getattr(client, "invoker", None), "auth", None)
    if auth is None or not needs_id_token(settings.function_url):
        return None
    try:
        auth.headers_for(settings.function_url)
    except (auth_exceptions.GoogleAuthError, requests.RequestException) as exc:
        if settings.impersonate_service_account:
            fix = (
                "your credentials need roles/iam.serviceAccountTokenCreator on "
                f"{settings.impersonate_service_account}: add yourself to "
                "orchestrator_impersonators in infra/terraform.tfvars, `just deploy`, wait a "
                "minute (`gcloud auth application-default login` if your ADC expired)"
            )
        else:
            fix = (
                "set GOOGLE_IMPERSONATE_SERVICE_ACCOUNT to the orchestrator account "
                "(`just cloud-env` does), or run where the metadata server gives a service "
                "account's tokens"
            )
        return Finding(f"cannot mint an ID token as {identity}: {_first_line(exc)}", fix)
    return None


def check_pipes_bucket(client: Any, settings: DemoSettings) -> Finding | None:
    """List one object of the Pipes bucket as the reader will: is it there, may we read it?"""
    reader = getattr(client, "message_reader", None)
    storage_client = getattr(reader, "client", None)
    if storage_client is None:
        return None
    bucket = settings.pipes_bucket
    try:
        # No retries: this is a probe, and an unreachable endpoint should fail in seconds.
        list(storage_client.list_blobs(bucket, max_results=1, timeout=15, retry=None))
    except gexc.NotFound:
        return Finding(
            f"Pipes bucket gs://{bucket} does not exist",
            "PIPES_BUCKET must be Terraform's pipes_bucket_name: run `just cloud-env`",
        )
    except gexc.Forbidden as exc:
        return Finding(
            f"no permission to read Pipes bucket gs://{bucket}: {_first_line(exc)}",
            "Terraform grants roles/storage.objectViewer on it to the orchestrator account: "
            "set GOOGLE_IMPERSONATE_SERVICE_ACCOUNT to it (`just cloud-env`); IAM changes "
            "take a minute or two",
        )
    except requests.RequestException as exc:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        where = f"the GCS emulator at {emulator}" if emulator else "Cloud Storage"
        return Finding(
            f"cannot reach {where} to read gs://{bucket}: {_first_line(exc)}",
            "start the local stack (`just dd`)" if emulator else "check the network/proxy",
        )
    except (gexc.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
        return Finding(
            f"cannot read Pipes bucket gs://{bucket}: {_first_line(exc)}",
            f"see {TROUBLESHOOTING}",
        )
    return None


# --- the materialization ----------------------------------------------------------------------


def observe(client: Any, calls: CallLog) -> None:
    """Record the HTTP answers and the Pipes messages of ``client``'s calls in ``calls``."""
    session = getattr(getattr(client, "invoker", None), "session", None)
    if isinstance(session, requests.Session):
        session.hooks["response"].append(calls.record_response)
    reader = getattr(client, "message_reader", None)
    if reader is None:
        return
    read_messages = reader.read_messages

    @contextmanager
    def counting(handler: PipesMessageHandler) -> Iterator[Any]:
        handle = handler.handle_message

        def handle_and_count(message: Any) -> None:
            calls.record_message(str(message.get("method", "?")))
            handle(message)

        handler.handle_message = handle_and_count  # type: ignore[method-assign]
        with read_messages(handler) as params:
            yield params

    reader.read_messages = counting


def materialize_once(
    resources: Mapping[str, Any], num_rows: int, log_level: str = "CRITICAL"
) -> ExecuteInProcessResult:
    """One in-process materialization; Dagster's console log only at ``log_level``."""
    op = ASSET.op.name
    return materialize(
        [ASSET],
        resources=dict(resources),
        run_config={
            "ops": {op: {"config": {"num_rows": num_rows}}},
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@dataclass(frozen=True)
class RunOutcome:
    """What the materialization produced, as plain values."""

    success: bool
    failure: str | None
    failure_metadata: Mapping[str, Any]
    materialization: Mapping[str, Any] | None
    failed_checks: tuple[str, ...]

    @classmethod
    def of(cls, result: ExecuteInProcessResult) -> RunOutcome:
        failure, failure_metadata = None, {}
        for event in result.get_step_failure_events():
            data = event.step_failure_data
            failure = _root_cause(data.error) if data.error else "the step failed"
            user = data.user_failure_data
            failure_metadata = {k: v.value for k, v in (user.metadata if user else {}).items()}
            break
        materializations = result.asset_materializations_for_node(ASSET.op.name)
        metadata = (
            {key: value.value for key, value in materializations[-1].metadata.items()}
            if materializations
            else None
        )
        failed = tuple(
            check.check_name for check in result.get_asset_check_evaluations() if not check.passed
        )
        return cls(result.success, failure, failure_metadata, metadata, failed)


def _root_cause(error: Any) -> str:
    """The innermost cause of a step failure (Dagster wraps the op's own exception), as
    ``Class: message`` without the module path."""
    while error.cause is not None:
        error = error.cause
    return re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", str(error.message).strip())


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# --- what went wrong first -----------------------------------------------------------------


def diagnose_http(calls: CallLog, report: SmokeReport) -> Finding | None:
    """A refused or failed call, named by its last HTTP answer."""
    if not calls.statuses or 200 <= calls.statuses[-1] < 300:
        return None
    status, error = calls.statuses[-1], calls.error_bodies[-1]
    if error is None:
        return _platform_refusal(status, report)
    kind, message = error.get("type", "Error"), error.get("message", "")
    where = f" (field {error['field']})" if error.get("field") else ""
    said = f"{kind}: {_first_line(message)}{where}"
    if status == 502 and kind == "PipesMessageDeliveryError":
        return Finding(
            f"HTTP 502: the function could not write its Pipes messages to "
            f"gs://{report.pipes_bucket}: {said}",
            "the runtime account needs roles/storage.objectCreator on the Pipes bucket "
            "(Terraform grants it); the function's PIPES_BUCKET must be that bucket: "
            "`just deploy` again",
        )
    if status == 403:
        return Finding(
            f"HTTP 403: the function refused the request: {said}",
            "PIPES_BUCKET and DATA_LAKE_URI must be what the function was deployed with: "
            "run `just cloud-env` (and `just deploy` after changing infra/)",
        )
    if 400 <= status < 500:
        return Finding(
            f"HTTP {status}: the function refused the request: {said}",
            "the deployed function may be older than this repository's Dagster side: `just deploy`",
        )
    return Finding(
        f"HTTP {status}: the function failed: {said}",
        "the remote traceback is in the step failure; the function's logs: `gcloud "
        'functions logs read <function> --region="$REGION" --gen2`',
    )


def _platform_refusal(status: int, report: SmokeReport) -> Finding:
    if status == 401:
        return Finding(
            f"HTTP 401: the function did not accept the ID token (audience {report.audience})",
            "CLOUD_FUNCTION_URL must be exactly `terraform -chdir=infra output -raw "
            f"function_url` (run `just cloud-env`); see {TROUBLESHOOTING}, HTTP 401",
        )
    if status == 403:
        return Finding(
            f"HTTP 403: the caller, {report.identity}, may not invoke the function "
            "(roles/run.invoker)",
            "Terraform grants roles/run.invoker to the orchestrator account only: set "
            "GOOGLE_IMPERSONATE_SERVICE_ACCOUNT to it (`just cloud-env`); IAM changes take "
            f"a minute or two; see {TROUBLESHOOTING}, HTTP 403",
        )
    return Finding(
        f"HTTP {status} from the platform, before the function's handler answered",
        'the function\'s logs: `gcloud functions logs read <function> --region="$REGION" '
        "--gen2`; 429/503: the function is at max instances or cold-starting, try again",
    )


def diagnose_messages(outcome: RunOutcome, report: SmokeReport) -> Finding | None:
    """The call answered 2xx, yet the step failed: what went wrong with the messages."""
    if outcome.success:
        return None
    failure = outcome.failure or "the step failed"
    calls = report.calls
    if "no permission to read Pipes messages" in failure or "Forbidden" in failure:
        return Finding(
            f"reading Pipes messages from gs://{report.pipes_bucket} was refused: "
            f"{_first_line(failure)}",
            "Terraform grants roles/storage.objectViewer on it to the orchestrator account: "
            "set GOOGLE_IMPERSONATE_SERVICE_ACCOUNT to it (`just cloud-env`)",
        )
    if calls.statuses and not calls.messages.get("closed"):
        return Finding(
            f"the function answered HTTP {calls.statuses[-1]} but its `closed` message never "
            f"arrived in gs://{report.pipes_bucket}: {_first_line(failure)}",
            "the function did not open Pipes, crashed mid-write, or cannot write to the "
            f"Pipes bucket; see {TROUBLESHOOTING}, `closed` message not received",
        )
    return Finding(f"the step failed: {_first_line(failure)}", f"see {TROUBLESHOOTING}")


def diagnose_result(outcome: RunOutcome, report: SmokeReport) -> Finding | None:
    """The run succeeded: did it report what the people function reports?"""
    if not outcome.materialization or report.table_uri is None:
        return Finding(
            "the run succeeded but reported no table (no materialization with table_uri)",
            "the deployed function is not this repository's people function: `just deploy`",
        )
    if outcome.failed_checks:
        return Finding(
            f"data-quality check(s) failed: {', '.join(outcome.failed_checks)}",
            "see the checks' metadata in a `just dd` run of the same asset",
        )
    return None


def diagnose(outcome: RunOutcome, report: SmokeReport) -> Finding | None:
    """The first thing that went wrong in the materialization, or None when it passed."""
    return (
        diagnose_http(report.calls, report)
        or diagnose_messages(outcome, report)
        or diagnose_result(outcome, report)
    )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def run_smoke(
    settings: DemoSettings,
    *,
    num_rows: int = DEFAULT_ROWS,
    log_level: str = "CRITICAL",
    resources_factory: ResourcesFactory = build_resources,
    adc: AdcLookup = _adc,
) -> SmokeReport:
    """Materialize the demo asset once against ``settings`` and report what happened."""
    report = SmokeReport(
        function_url=settings.function_url,
        identity=describe_identity(settings, adc),
        audience=token_audience(settings),
        pipes_bucket=settings.pipes_bucket,
    )
    resources = resources_factory(settings)
    client = resources["pipes_function_client"]
    report.failure = (
        check_settings(settings)
        or check_token(client, settings, report.identity)
        or check_pipes_bucket(client, settings)
    )
    if report.failure is not None:
        return report
    observe(client, report.calls)
    outcome = RunOutcome.of(materialize_once(resources, num_rows, log_level))
    found = {**outcome.failure_metadata, **(outcome.materialization or {})}
    report.table_uri = _text(found.get("table_uri"))
    version = found.get("delta_version")
    report.delta_version = version if isinstance(version, int) else None
    report.trace_id = _text(found.get("trace_id"))
    report.logging_url = _text(found.get("cloud_logging_url"))
    report.failure = diagnose(outcome, report)
    return report


# --- the Cloud Run job (CLOUD_RUN_PEOPLE_JOB) ------------------------------------------------


@dataclass
class JobSmokeReport(Report):
    """What ``just cloud-smoke`` prints of the job's materialization."""

    title = "cloud-smoke job report"
    pass_verdict = "every task wrote its share and every task's messages came back."
    job_name: str
    execution: str | None = None
    tasks: str = "-"
    table_uri: str | None = None
    log_uri: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("job", self.job_name),
            ("execution", self.execution or "-"),
            ("tasks", self.tasks),
            ("table", self.table_uri or "-"),
            ("task logs", self.log_uri or "-"),
        ]


def run_job_smoke(
    settings: DemoSettings,
    job_name: str,
    *,
    endpoint: str | None = None,
    num_rows: int = DEFAULT_ROWS,
    log_level: str = "CRITICAL",
) -> JobSmokeReport:
    """Materialize ``people_job`` once over ``JOB_TASKS`` tasks of the job ``job_name``."""
    report = JobSmokeReport(job_name)
    config = {"num_rows": num_rows, "task_count": JOB_TASKS}
    result = materialize(
        [people_job],
        resources=build_job_resources(settings, job_name, endpoint),
        run_config={
            "ops": {people_job.op.name: {"config": config}},
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    materializations = result.asset_materializations_for_node(people_job.op.name)
    found = (
        {k: v.value for k, v in materializations[-1].metadata.items()} if materializations else {}
    )
    report.execution = _text(found.get("cloud_run_execution"))
    report.table_uri = _text(found.get("table_uri"))
    report.log_uri = _text(found.get("cloud_run_log_uri"))
    if "task_count" in found:
        report.tasks = f"{found['tasks_succeeded']} of {found['task_count']} succeeded"
    report.failure = diagnose_job(result, report)
    return report


def diagnose_job(result: ExecuteInProcessResult, report: JobSmokeReport) -> Finding | None:
    """The job's step failure (it names the failed tasks and their logs), or no table."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        failure = _root_cause(data.error) if data.error else "the step failed"
        lines = [line.strip() for line in failure.strip().splitlines() if line.strip()]
        return Finding(
            "people_job failed: " + "; ".join(lines[:MAX_FAILURE_LINES]),
            "a failed task's log is named above; a refused launch (403): the orchestrator "
            "needs roles/run.jobsExecutorWithOverrides on the job (Terraform grants it); see "
            f'{TROUBLESHOOTING}, "Cloud Run job: a task failed"',
        )
    if report.table_uri is None:
        return Finding(
            "people_job succeeded but reported no table",
            "the job's image is not this repository's people_lake.task: rebuild and deploy it",
        )
    return None


def _row_count(text: str) -> int:
    rows = int(text)
    if not 1 <= rows <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One materialization against the deployed function, then a report."
    )
    parser.add_argument(
        "--rows", type=_row_count, default=DEFAULT_ROWS, help="rows to write (1..1000000)"
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=REPO_ROOT / ".env",
        help="settings file (default: .env, as `just cloud-env` writes it)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print the run's event log (Dagster INFO)"
    )
    args = parser.parse_args(argv)
    settings = DemoSettings.from_env(args.env_file)
    print(
        f"cloud-smoke: one materialization of {ASSET.key.to_user_string()} ({args.rows} rows) "
        f"against {settings.function_url} ..."
    )
    report = run_smoke(
        settings, num_rows=args.rows, log_level="INFO" if args.verbose else "CRITICAL"
    )
    print(report.render())
    job_name = os.environ.get("CLOUD_RUN_PEOPLE_JOB")
    if not job_name:
        return 0 if report.passed else 1
    print(f"cloud-smoke: people_job over {JOB_TASKS} tasks of {job_name} ...")
    job_report = run_job_smoke(
        settings,
        job_name,
        endpoint=os.environ.get("CLOUD_RUN_JOBS_ENDPOINT") or None,
        num_rows=args.rows,
        log_level="INFO" if args.verbose else "CRITICAL",
    )
    print(job_report.render())
    return 0 if report.passed and job_report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
