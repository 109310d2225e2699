"""The ``dg`` component: declared in YAML, loaded as Dagster loads a project's defs folder, and
materialized against the test double."""

from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

import dagster as dg
import pytest
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox
from dagster_pipes import PipesContext

from dagster_pipes_gcf import CloudFunctionComponent, PipesCloudFunctionClient
from dagster_pipes_gcf.testing import FakeCloudFunction


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as folder:
        yield folder


def greet(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    greeting = f"Hello, {event['name']}!"
    pipes.log.info(greeting)
    pipes.report_asset_materialization(metadata={"greeting": greeting})
    pipes.report_asset_check("mentions_name", passed=event["name"] in greeting)
    return {"greeting": greeting}


def attributes(**overrides: Any) -> dict[str, Any]:
    return {
        "function_url": "{{ env.GREETING_FUNCTION_URL }}",
        "pipes_bucket": "my-pipes-bucket",
        "event": {"name": "Dagster"},
        "assets": [{"key": "greeting", "group_name": "greetings"}],
        "checks": [{"name": "mentions_name", "asset": "greeting"}],
        **overrides,
    }


def load(sandbox: DefsFolderSandbox, **overrides: Any) -> tuple[Any, dg.Definitions]:
    path = sandbox.scaffold_component(
        component_cls=CloudFunctionComponent,
        defs_yaml_contents={
            "type": "dagster_pipes_gcf.CloudFunctionComponent",
            "attributes": attributes(**overrides),
        },
    )
    with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
        return component, defs


def only_asset(defs: dg.Definitions) -> dg.AssetsDefinition:
    [assets_def] = defs.assets or []
    assert isinstance(assets_def, dg.AssetsDefinition)
    return assets_def


def test_the_yaml_declares_the_asset_its_check_and_the_call(
    sandbox: DefsFolderSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    function = FakeCloudFunction(greet)
    monkeypatch.setenv("GREETING_FUNCTION_URL", function.url)

    component, defs = load(sandbox)
    assets_def = only_asset(defs)
    result = dg.materialize(
        [assets_def], resources={"cloud_function": function.pipes_client()}, raise_on_error=False
    )

    assert isinstance(component, CloudFunctionComponent)
    assert component.function_url == function.url  # the env template resolved
    assert assets_def.specs_by_key[dg.AssetKey("greeting")].group_name == "greetings"
    assert result.success
    [materialization] = result.asset_materializations_for_node("greeting")
    assert materialization.metadata["greeting"] == dg.TextMetadataValue("Hello, Dagster!")
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("mentions_name", True)
    assert [call.event for call in function.calls] == [{"name": "Dagster"}]


def test_the_component_provides_a_client_reading_its_pipes_bucket(
    sandbox: DefsFolderSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREETING_FUNCTION_URL", "https://greeting-xyz-ew.a.run.app")

    _, defs = load(sandbox, client_resource_key="gcf")

    client = (defs.resources or {})["gcf"]
    assert isinstance(client, PipesCloudFunctionClient)
    assert client.message_reader.bucket == "my-pipes-bucket"  # type: ignore[attr-defined]
    assert "gcf" in defs.resolve_assets_def("greeting").required_resource_keys


def test_a_failing_function_fails_the_step(
    sandbox: DefsFolderSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        raise ValueError("no greeting today")

    function = FakeCloudFunction(refuse)
    monkeypatch.setenv("GREETING_FUNCTION_URL", function.url)
    _, defs = load(sandbox)

    result = dg.materialize(
        [only_asset(defs)],
        resources={"cloud_function": function.pipes_client()},
        raise_on_error=False,
    )

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert "no greeting today" in failure.step_failure_data.error.to_string()


@pytest.mark.parametrize("missing", ["function_url", "pipes_bucket", "assets"])
def test_a_component_missing_a_required_attribute_is_refused_naming_it(missing: str) -> None:
    given = {key: value for key, value in attributes().items() if key != missing}
    with pytest.raises(Exception, match=missing):
        CloudFunctionComponent.resolve_from_dict(given)


def test_a_component_with_an_empty_asset_list_is_refused(
    sandbox: DefsFolderSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREETING_FUNCTION_URL", "https://greeting-xyz-ew.a.run.app")
    with pytest.raises(Exception) as refused:
        load(sandbox, assets=[])
    assert "needs at least one asset in `assets`" in str(refused.value.__cause__)


def test_dg_finds_the_component_through_the_registry_entry_point() -> None:
    [entry_point] = [
        entry
        for entry in entry_points(group="dagster_dg_cli.registry_modules")
        if entry.name == "dagster_pipes_gcf"
    ]
    assert entry_point.load().CloudFunctionComponent is CloudFunctionComponent
