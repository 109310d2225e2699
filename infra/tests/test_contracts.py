"""The real infra/ satisfies every contract with the function and the orchestrator."""

import pytest

from infra.scripts.cloud_env import ENV_FROM_OUTPUTS
from infra.tests import contracts as c


@pytest.fixture(scope="module")
def tf() -> c.Terraform:
    return c.Terraform.load()


def test_the_parsed_configuration_is_the_expected_shape(tf: c.Terraform) -> None:
    # Guards against checks passing vacuously on an empty or mis-parsed configuration.
    assert set(tf.resources["google_storage_bucket"]) == {"pipes", "data_lake", "function_source"}
    accounts = {"runtime", "orchestrator", "build", "job"}
    assert set(tf.resources["google_service_account"]) == accounts
    assert list(tf.resources["google_cloudfunctions2_function"]) == ["people"]
    assert list(tf.resources["google_cloud_run_v2_job"]) == ["people"]
    assert set(ENV_FROM_OUTPUTS.values()) <= set(tf.outputs)
    assert len(tf.variables) >= 10 and tf.locals and tf.settings and tf.providers


def test_the_code_side_declarations_are_read(tf: c.Terraform) -> None:
    assert {"DATA_LAKE_URI", "THREADS"} <= set(c.function_env_vars())
    assert "CLOUD_FUNCTION_URL" in c.orchestrator_env_vars()
    assert c.client_timeout() > 0


def test_every_reference_resolves_and_every_variable_is_used(tf: c.Terraform) -> None:
    assert c.check_references(tf) == []


def test_variables_are_described_and_typed(tf: c.Terraform) -> None:
    assert c.check_variables_documented(tf) == []


def test_terraform_and_providers_are_pinned(tf: c.Terraform) -> None:
    assert c.check_provider_pins(tf) == []


def test_function_env_matches_what_the_function_reads(tf: c.Terraform) -> None:
    assert c.check_function_env(tf, c.function_env_vars()) == []


def test_function_lake_settings_match_what_the_orchestrator_sends(tf: c.Terraform) -> None:
    assert c.check_data_lake_settings(tf) == []


def test_outputs_give_the_orchestrator_every_setting(tf: c.Terraform) -> None:
    assert c.check_orchestrator_outputs(tf, c.orchestrator_env_vars()) == []


def test_nothing_is_public(tf: c.Terraform) -> None:
    example = (c.INFRA_DIR / "terraform.tfvars.example").read_text()
    assert c.check_no_public_access(tf, {"terraform.tfvars.example": example}) == []


def test_every_bucket_is_private(tf: c.Terraform) -> None:
    assert c.check_buckets_private(tf) == []


def test_pipes_bucket_expires_messages(tf: c.Terraform) -> None:
    assert c.check_pipes_lifecycle(tf) == []


def test_function_has_dedicated_identities(tf: c.Terraform) -> None:
    assert c.check_function_identity(tf) == []


def test_service_accounts_have_exactly_their_grants(tf: c.Terraform) -> None:
    assert c.check_iam_grants(tf) == []


def test_the_orchestrator_may_make_every_cloud_run_call_of_the_job_client(
    tf: c.Terraform,
) -> None:
    calls = c.job_client_calls()
    run_watch_cancel = {"jobs.run_job", "executions.get_execution", "executions.cancel_execution"}
    assert run_watch_cancel | {"tasks.list_tasks"} <= calls  # the calls are read
    assert c.check_job_client_permissions(tf, calls) == []


def test_function_timeout_matches_the_dagster_client(tf: c.Terraform) -> None:
    assert c.check_timeout_matches_client(tf, c.client_timeout()) == []


def test_function_source_is_zipped_from_the_function_folder(tf: c.Terraform) -> None:
    assert c.check_function_source(tf) == []


def test_required_apis_are_enabled(tf: c.Terraform) -> None:
    assert c.check_required_apis(tf) == []
    assert "cloudresourcemanager.googleapis.com" in c.enabled_apis(tf)


def test_resources_wait_for_their_apis(tf: c.Terraform) -> None:
    assert c.check_apis_enabled_first(tf) == []


def test_the_default_instance_fits_its_concurrent_requests(tf: c.Terraform) -> None:
    assert c.check_function_sizing(tf) == []


@pytest.mark.memory
def test_one_large_request_peaks_below_the_sizing_rule_s_constant(tf: c.Terraform) -> None:
    """The constant is checked against a measurement: a fresh process serving one request of
    a million rows through the function's handler (`just bench` measures the 5,000,000 limit)."""
    from bench.data_generation import _request_peak

    measured = _request_peak(1_000_000, 1)["peak_mib"]

    assert measured > 0 and c.check_request_peak_measured(tf, measured) == []


def test_the_function_is_built_after_the_build_grants_propagate(tf: c.Terraform) -> None:
    assert c.check_build_grants_propagate(tf) == []


def test_cancellation_grants_are_limited_to_cancel_markers(tf: c.Terraform) -> None:
    marker_only = c.cancel_marker_condition("google_storage_bucket.pipes.name")
    for account in ("runtime", "orchestrator"):
        conditioned = [grant for grant in c.grants_of(tf, account) if grant[3]]
        assert [grant[3] for grant in conditioned] == [marker_only], account


def test_checkov_skips_sit_in_resources_with_reasons(tf: c.Terraform) -> None:
    assert c.check_checkov_skips_have_reasons(tf) == []
