"""Each contract check reports the problem when fed a deliberately broken copy.

Terraform breakages edit a copy of infra/*.tf in tmp_path; code-side breakages edit a copy of
the Python module the check reads. Every ``check_*`` in contracts.py must appear here.
"""

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.scripts.cloud_env import ENV_FROM_OUTPUTS
from infra.tests import contracts as c

Check = Callable[[c.Terraform], c.Problems]


@dataclass(frozen=True)
class Breakage:
    id: str
    file: str
    line: str  # a fragment of the one line to replace
    new: str  # its replacement; "<line>" stands for the original line
    check: Check
    expect: str  # a reported problem contains this
    nth: int | None = None  # which matching line, when the fragment is on several


def env_check(tf: c.Terraform) -> c.Problems:
    return c.check_function_env(tf, c.function_env_vars())


def outputs_check(tf: c.Terraform) -> c.Problems:
    return c.check_orchestrator_outputs(tf, c.orchestrator_env_vars())


def timeout_check(tf: c.Terraform) -> c.Problems:
    return c.check_timeout_matches_client(tf, c.client_timeout())


def job_permissions_check(tf: c.Terraform) -> c.Problems:
    return c.check_job_client_permissions(tf, c.job_client_calls())


def request_peak_check(tf: c.Terraform) -> c.Problems:
    return c.check_request_peak_measured(tf, MEASURED_PEAK_MIB)


# About what one request of a million rows peaks at (test_contracts measures it for real).
MEASURED_PEAK_MIB = 580.0

B = Breakage
SA = "serviceAccount:${google_service_account"
BREAKAGES = [
    B("env-var-missing", "function.tf", "tostring(var.function_concurrency)", "",
      env_check, "function reads THREADS but Terraform does not set it"),
    B("env-var-extra", "function.tf", "ALLOWED_DATA_LAKE_ROOTS =", '<line>\n DEBUG_MODE = "1"',
      env_check, "Terraform sets DEBUG_MODE but the function does not read it"),
    B("threads-not-concurrency", "function.tf", "tostring(var.function_concurrency)",
      'THREADS = "8"',
      env_check, "THREADS must be tostring(var.function_concurrency)"),
    B("allowed-root-elsewhere", "function.tf", "ALLOWED_DATA_LAKE_ROOTS =",
      'ALLOWED_DATA_LAKE_ROOTS = "gs://another"', c.check_data_lake_settings,
      "function ALLOWED_DATA_LAKE_ROOTS (gs://another) differs"),
    B("lake-not-a-bucket", "main.tf", "data_lake_uri =", 'data_lake_uri = "gs://hard-coded"',
      c.check_data_lake_settings, "DATA_LAKE_URI must be gs://<a bucket declared here>"),
    B("output-renamed", "outputs.tf", 'output "pipes_bucket_name"', 'output "pipes_bucket" {',
      outputs_check, "cloud-env needs output pipes_bucket_name (PIPES_BUCKET)"),
    B("url-not-run-app", "outputs.tf", "people.service_config[0].uri",
      "value = google_cloudfunctions2_function.people.url",
      outputs_check, "CLOUD_FUNCTION_URL must be the function's run.app URI"),
    B("invoker-public", "iam.tf", f"member  = \"{SA}.orchestrator", 'member = "allUsers"',
      c.check_no_public_access, "iam.tf: public principal allUsers"),
    B("authenticated-users", "iam.tf", f"member = \"{SA}.orchestrator",
      'member = "allAuthenticatedUsers"',
      c.check_no_public_access, "public principal allAuthenticatedUsers", nth=0),
    B("basic-role", "iam.tf", '"roles/run.builder"', 'role = "roles/editor"',
      c.check_no_public_access, "basic role roles/editor"),
    B("sa-key", "iam.tf", "# --- runtime:",
      'resource "google_service_account_key" "k" {\n'
      "  service_account_id = google_service_account.orchestrator.name\n}",
      c.check_no_public_access, "must not create service-account keys"),
    B("authoritative-iam", "iam.tf", '"orchestrator_pipes_reader" {',
      'resource "google_storage_bucket_iam_binding" "orchestrator_pipes_reader" {',
      c.check_no_public_access, "authoritative IAM would drop existing grants"),
    B("public-access-prevention", "buckets.tf", "public_access_prevention",
      'public_access_prevention = "inherited"', c.check_buckets_private,
      "bucket data_lake: public_access_prevention must be enforced", nth=1),
    B("fine-grained-acls", "buckets.tf", "uniform_bucket_level_access",
      "uniform_bucket_level_access = false", c.check_buckets_private,
      "bucket function_source: uniform_bucket_level_access must be true", nth=2),
    B("pipes-lifecycle-gone", "buckets.tf", "age = var.pipes_message_retention_days",
      "num_newer_versions = 3", c.check_pipes_lifecycle,
      "Pipes bucket pipes: needs a lifecycle_rule"),
    B("runtime-default-sa", "function.tf", "service_account_email =",
      'service_account_email = "123-compute@developer.gserviceaccount.com"',
      c.check_function_identity, "service_account_email must be a dedicated account"),
    B("runtime-is-orchestrator", "function.tf", "service_account_email =",
      "service_account_email = google_service_account.orchestrator.email",
      c.check_function_identity, "runs as the orchestrator's account"),
    B("build-default-sa", "function.tf", "service_account   =",
      'service_account = "projects/p/serviceAccounts/1-compute@developer.gserviceaccount.com"',
      c.check_function_identity, "build_config.service_account must be a dedicated account"),
    B("runtime-admins-wrong-bucket", "iam.tf", "bucket = google_storage_bucket.data_lake.name",
      "bucket = google_storage_bucket.pipes.name", c.check_iam_grants,
      "runtime (runtime) lacks roles/storage.objectUser on google_storage_bucket.data_lake.name"),
    B("runtime-admins-the-lake", "iam.tf", '"roles/storage.objectUser"',
      'role = "roles/storage.objectAdmin"', c.check_iam_grants,
      "runtime (runtime) has unexpected roles/storage.objectAdmin on google_storage_bucket"),
    B("runtime-reads-every-message", "iam.tf", "expression  = local.cancel_marker_condition",
      'expression = "true"', c.check_iam_grants,
      "runtime (runtime) has unexpected roles/storage.objectViewer on "
      "google_storage_bucket.pipes.name if true", nth=0),
    B("orchestrator-writes-any-object", "iam.tf", "expression  = local.cancel_marker_condition",
      'expression = "resource.name.endsWith(\\"/cancel\\") || true"', c.check_iam_grants,
      "orchestrator (orchestrator) has unexpected roles/storage.objectCreator on "
      'google_storage_bucket.pipes.name if resource.name.endsWith("/cancel") || true', nth=1),
    B("cancel-condition-without-suffix", "main.tf", "cancel_marker_condition =",
      'cancel_marker_condition = "resource.name.startsWith(\\"projects/_/buckets/x/objects/\\")"',
      c.check_iam_grants, "orchestrator (orchestrator) lacks roles/storage.objectCreator on "
      "google_storage_bucket.pipes.name if"),
    B("cancel-grant-on-the-lake", "iam.tf", '"orchestrator_cancel_writer" {',
      'resource "google_storage_bucket_iam_member" "orchestrator_cancel_writer_x" {\n'
      '  bucket = google_storage_bucket.data_lake.name\n'
      '  role = "roles/storage.objectCreator"\n'
      '  member = "serviceAccount:${google_service_account.orchestrator.email}"\n'
      '  condition {\n expression = local.cancel_marker_condition\n }\n}\n'
      'resource "google_storage_bucket_iam_member" "orchestrator_cancel_writer" {',
      c.check_iam_grants, "orchestrator (orchestrator) has unexpected "
      "roles/storage.objectCreator on google_storage_bucket.data_lake.name"),
    B("runtime-extra-grant", "iam.tf", f"member  = \"{SA}.build.email",
      f"member = \"{SA}.runtime.email}}\"",
      c.check_iam_grants, "runtime (runtime) has unexpected roles/run.builder"),
    B("orchestrator-cannot-invoke", "iam.tf", '"roles/run.invoker"', 'role = "roles/run.viewer"',
      c.check_iam_grants, "orchestrator (orchestrator) lacks roles/run.invoker"),
    B("job-tasks-unreadable", "job.tf", '"run.executions.get", "run.tasks.list"',
      'permissions = ["run.executions.get"]',
      job_permissions_check, "the orchestrator lacks run.tasks.list on the job"),
    B("job-watcher-broader", "job.tf", '"run.executions.get", "run.tasks.list"',
      'permissions = ["run.executions.get", "run.tasks.list", "run.jobs.update"]',
      job_permissions_check, "grants run.jobs.update, which the client never calls"),
    B("job-role-unknown", "job.tf", '"roles/run.jobsExecutorWithOverrides"',
      'role = "roles/run.developer"',
      job_permissions_check, "role roles/run.developer on google_cloud_run_v2_job.people.name: "
      "its permissions are unknown"),
    B("job-watcher-not-granted", "job.tf", "role     = google_project_iam_custom_role",
      'role = "roles/run.jobsExecutorWithOverrides"',
      job_permissions_check, "the orchestrator lacks run.executions.get on the job"),
    B("timeout-drift", "variables.tf", "default     = 540", "default = 300",
      timeout_check, "function timeout (300) != InvocationPolicy.timeout (540)"),
    B("undefined-variable", "function.tf", "= var.function_memory",
      "available_memory = var.function_mem",
      c.check_references, "undefined variable var.function_mem"),
    B("unused-variable", "variables.tf", 'variable "labels" {',
      'variable "knob" {\n description = "x"\n type = string\n}\n<line>',
      c.check_references, "variable knob is never used"),
    B("undefined-resource", "function.tf", "bucket = google_storage_bucket.function_source",
      "bucket = google_storage_bucket.sources.name", c.check_references,
      "undefined resource google_storage_bucket.sources"),
    B("undefined-local", "function.tf", "environment_variables = local.function_env",
      "environment_variables = local.function_envs", c.check_references,
      "undefined local local.function_envs"),
    B("undefined-data", "function.tf", "source       = data.archive_file",
      "source = data.archive_file.source.output_path", c.check_references,
      "undefined data source data.archive_file.source"),
    B("source-not-hashed", "function.tf", "output_sha256}.zip", 'name = "source.zip"',
      c.check_function_source, "must contain the archive's content hash"),
    B("wrong-entry-point", "function.tf", 'entry_point       = "main"', 'entry_point = "handler"',
      c.check_function_source, "entry point handler is not a function"),
    B("wrong-source-dir", "function.tf", "/../cloud_function", 'source_dir = "/srv/app"',
      c.check_function_source, "archive_file must zip"),
    B("api-missing", "main.tf", '"run.googleapis.com",', "",
      c.check_required_apis, "API run.googleapis.com is not enabled"),
    B("resource-manager-api-missing", "main.tf", '"cloudresourcemanager.googleapis.com",', "",
      c.check_required_apis,
      "API cloudresourcemanager.googleapis.com is not enabled (needed by "
      "google_project_iam_member)"),
    B("iam-credentials-api-missing", "main.tf", '"iamcredentials.googleapis.com",', "",
      c.check_required_apis,
      "API iamcredentials.googleapis.com is not enabled (needed by the deployment)"),
    B("resource-type-without-apis", "main.tf", 'resource "google_project_service"',
      'resource "google_pubsub_topic" "events" {\n  name = "events"\n}\n<line>',
      c.check_required_apis, "resource type google_pubsub_topic: unknown APIs"),
    B("bucket-before-apis", "buckets.tf", "depends_on = [google_project_service.required]",
      "", c.check_apis_enabled_first,
      "google_storage_bucket.pipes may be created before google_project_service.required",
      nth=0),
    B("function-skips-the-wait", "function.tf", "time_sleep.build_grants_propagation,", "",
      c.check_build_grants_propagate,
      "function people must depend on a time_sleep after the build account's grants"),
    B("wait-misses-a-grant", "iam.tf",
      "google_artifact_registry_repository_iam_member.build_writer,", "",
      c.check_build_grants_propagate, "time_sleep.build_grants_propagation does not wait for "
      "google_artifact_registry_repository_iam_member.build_writer"),
    B("wait-too-short", "iam.tf", 'create_duration = "60s"', 'create_duration = "5s"',
      c.check_build_grants_propagate, "create_duration must be at least 60s"),
    B("project-not-the-deployed-one", "function.tf", "GOOGLE_CLOUD_PROJECT = var.project_id",
      'GOOGLE_CLOUD_PROJECT = "my-project"', env_check,
      "GOOGLE_CLOUD_PROJECT must be var.project_id, got my-project"),
    B("function-writes-another-bucket", "function.tf", "PIPES_BUCKET = google_storage_bucket",
      "PIPES_BUCKET = google_storage_bucket.function_source.name", env_check,
      "PIPES_BUCKET must be google_storage_bucket.pipes.name (the bucket Dagster reads), "
      "got google_storage_bucket.function_source.name"),
    B("memory-below-the-sizing-rule", "variables.tf", 'default     = "4Gi"',
      'default = "2Gi"', c.check_function_sizing,
      "default function memory (2Gi) must hold 4 requests of request_peak_memory_mib (700 MiB)"),
    B("request-peak-below-the-measured-one", "function.tf", "request_peak_memory_mib = 700",
      "request_peak_memory_mib = 400", request_peak_check,
      "one request peaked at 580 MiB, above request_peak_memory_mib (400 MiB)"),
    B("sizing-rule-not-enforced", "function.tf",
      "condition     = local.function_memory_mib >= var.function_concurrency",
      "condition = local.function_memory_mib > 0", c.check_function_sizing,
      "a lifecycle precondition must check memory against the sizing rule"),
    B("time-provider-unpinned", "versions.tf", 'version = "~> 0.13"', 'version = ">= 0.1"',
      c.check_provider_pins, "provider time must be hashicorp/time pinned"),
    B("provider-unpinned", "versions.tf", 'version = "~> 7.0"', 'version = ">= 5.0"',
      c.check_provider_pins, "provider google must be hashicorp/google pinned"),
    B("variable-undescribed", "variables.tf", 'description = "Extra labels', "",
      c.check_variables_documented, "variable labels needs a description"),
    B("checkov-skip-without-reason", "function.tf", "#checkov:skip=CKV_GCP_84:",
      "  #checkov:skip=CKV_GCP_84", c.check_checkov_skips_have_reasons,
      "checkov skip CKV_GCP_84 needs a reason"),
    B("checkov-skip-outside-resource", "function.tf", "# The people function:",
      "#checkov:skip=CKV_GCP_84: a file-level skip silencing the whole module\n<line>",
      c.check_checkov_skips_have_reasons, "must be inside the resource it applies to"),
]  # fmt: skip


def broken_copy(tmp_path: Path, breakage: Breakage) -> c.Terraform:
    for tf_file in c.INFRA_DIR.glob("*.tf"):
        shutil.copy(tf_file, tmp_path)
    target = tmp_path / breakage.file
    lines = target.read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if breakage.line in line]
    if breakage.nth is None:
        assert len(hits) == 1, f"{breakage.line!r} must be on exactly one line of {breakage.file}"
    hit = hits[breakage.nth or 0]
    lines[hit] = breakage.new.replace("<line>", lines[hit])
    target.write_text("\n".join(lines) + "\n")
    return c.Terraform.load(tmp_path)


# The checks each wrapper runs, for the coverage test below.
WRAPPED = {
    env_check: "check_function_env",
    outputs_check: "check_orchestrator_outputs",
    timeout_check: "check_timeout_matches_client",
    job_permissions_check: "check_job_client_permissions",
    request_peak_check: "check_request_peak_measured",
}


@pytest.fixture(scope="module")
def real() -> c.Terraform:
    return c.Terraform.load()


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.id for b in BREAKAGES])
def test_check_reports_the_breakage(real: c.Terraform, tmp_path: Path, breakage: Breakage) -> None:
    assert breakage.check(real) == [], "the check must pass on the real infra/"
    problems = breakage.check(broken_copy(tmp_path, breakage))
    assert any(breakage.expect in problem for problem in problems), problems


def test_public_principal_in_the_tfvars_example_is_reported(real: c.Terraform) -> None:
    example = 'orchestrator_impersonators = ["allUsers"]\n'
    problems = c.check_no_public_access(real, {"terraform.tfvars.example": example})
    assert problems == ["terraform.tfvars.example: public principal allUsers"]


def copy_with(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"breakage no longer applies: {old!r} is not in {source.name}"
    copy = tmp_path / source.name
    copy.write_text(text.replace(old, new, 1))
    return copy


def test_a_new_function_env_var_without_terraform_is_reported(
    real: c.Terraform, tmp_path: Path
) -> None:
    settings = copy_with(
        tmp_path,
        c.FUNCTION_SETTINGS,
        "FUNCTION_ENV_VARS = (",
        'LOG_LEVEL_VAR = "LOG_LEVEL"\nFUNCTION_ENV_VARS = (LOG_LEVEL_VAR, ',
    )
    assert "LOG_LEVEL" in c.function_env_vars(settings)
    problems = c.check_function_env(real, c.function_env_vars(settings))
    assert problems == ["function reads LOG_LEVEL but Terraform does not set it"]


def test_a_new_orchestrator_setting_without_an_output_is_reported(
    real: c.Terraform, tmp_path: Path
) -> None:
    settings = copy_with(
        tmp_path,
        c.ORCHESTRATOR_SETTINGS,
        "LOCAL_DEFAULTS = {",
        'LOCAL_DEFAULTS = {\n    "REGION": "",',
    )
    problems = c.check_orchestrator_outputs(real, c.orchestrator_env_vars(settings))
    assert problems == ["orchestrator reads REGION but cloud-env does not write it"]


def test_cloud_env_writing_an_unknown_setting_is_reported(real: c.Terraform) -> None:
    mapping = {**ENV_FROM_OUTPUTS, "LEGACY_BUCKET": "pipes_bucket_name"}
    problems = c.check_orchestrator_outputs(real, c.orchestrator_env_vars(), mapping)
    assert problems == ["cloud-env writes LEGACY_BUCKET but the orchestrator does not read it"]


def test_a_kept_user_setting_the_orchestrator_no_longer_reads_is_reported(
    real: c.Terraform,
) -> None:
    kept = c.USER_SETTINGS | {"OLD_AUDIENCE"}
    problems = c.check_orchestrator_outputs(real, c.orchestrator_env_vars(), user_settings=kept)
    assert problems == ["cloud-env writes OLD_AUDIENCE but the orchestrator does not read it"]


def test_a_user_setting_without_its_exemption_is_reported(real: c.Terraform) -> None:
    problems = c.check_orchestrator_outputs(
        real, c.orchestrator_env_vars(), user_settings=frozenset()
    )
    assert problems == [
        "orchestrator reads CLOUD_FUNCTION_AUDIENCE but cloud-env does not write it"
    ]


def test_a_changed_client_timeout_is_reported(real: c.Terraform, tmp_path: Path) -> None:
    invocation = copy_with(
        tmp_path, c.INVOCATION, "timeout: float = 540.0", "timeout: float = 900.0"
    )
    assert c.client_timeout(invocation) == 900.0
    problems = c.check_timeout_matches_client(real, c.client_timeout(invocation))
    assert problems == ["function timeout (540) != InvocationPolicy.timeout (900)"]


def test_a_new_client_call_without_its_permission_is_reported(real: c.Terraform) -> None:
    calls = c.job_client_calls() | {"tasks.get_task"}
    problems = c.check_job_client_permissions(real, calls)
    assert problems == ["the orchestrator lacks run.tasks.get on the job (the client calls it)"]


def test_an_unknown_client_call_is_reported(real: c.Terraform) -> None:
    problems = c.check_job_client_permissions(real, c.job_client_calls() | {"jobs.delete_job"})
    assert problems == ["unknown Cloud Run call jobs.delete_job"]


def test_every_check_is_proven_able_to_fail() -> None:
    checks = {name for name in dir(c) if name.startswith("check_")}
    covered = {WRAPPED.get(b.check, b.check.__name__) for b in BREAKAGES}
    assert checks - covered == set(), "checks without a breakage test"
