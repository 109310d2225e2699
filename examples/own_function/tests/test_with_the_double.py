"""The example's asset and handler unit-tested with ``dagster_pipes_gcf.testing``: the same
Pipes traffic as deployed, without an emulator or a function process."""

import dagster as dg
import pytest

from dagster_pipes_gcf.testing import FakeCloudFunction
from examples.own_function import definitions, main


def materialize(
    function: FakeCloudFunction, monkeypatch: pytest.MonkeyPatch
) -> dg.ExecuteInProcessResult:
    monkeypatch.setenv("FUNCTION_URL", function.url)
    return dg.materialize(
        [definitions.greeting],
        resources={"cloud_function": function.pipes_client()},
        raise_on_error=False,
    )


def test_the_asset_reports_the_handlers_metadata_and_check(monkeypatch: pytest.MonkeyPatch) -> None:
    function = FakeCloudFunction(main.greet)

    result = materialize(function, monkeypatch)

    assert result.success
    [materialization] = result.asset_materializations_for_node("greeting")
    assert materialization.metadata["greeting"] == dg.TextMetadataValue("Hello, Dagster!")
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("greeting_mentions_name", True)
    assert [call.event for call in function.calls] == [{"name": "Dagster"}]


def test_a_refused_event_fails_the_step_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # The deployed handler, given an event it refuses.
    function = FakeCloudFunction(lambda pipes, event: main.greet(pipes, {**event, "name": ""}))

    result = materialize(function, monkeypatch)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert (
        "HTTP 400: RequestError: name must be a string of 1..100 characters (field: name)"
        in failure.step_failure_data.error.to_string()
    )
