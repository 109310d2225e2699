"""The example through the real local stack: the GCS emulator and ``main.py`` served by
functions-framework, materialized from ``definitions.py`` with ``dagster.materialize``."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from devstack.stack import LocalStack, local_stack
from examples.own_function import definitions

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(
        tmp_path_factory.mktemp("own-function"), function_source=EXAMPLE / "main.py"
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def dagster_side_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the README tells the Dagster side to set (the function got the same from the stack)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.emulator_url)
    monkeypatch.setenv("PIPES_BUCKET", stack.pipes_bucket)
    monkeypatch.setenv("FUNCTION_URL", stack.function_url)


def test_the_example_asset_gets_the_functions_metadata_check_and_logs() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [definitions.greeting],
            resources={"cloud_function": definitions.cloud_function_client()},
            instance=instance,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert result.success
    [materialization] = result.asset_materializations_for_node("greeting")
    assert materialization.metadata["greeting"] == dg.TextMetadataValue("Hello, Dagster!")
    assert materialization.metadata["length"] == dg.IntMetadataValue(15)
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("greeting_mentions_name", True)
    assert check.metadata["name"] == dg.TextMetadataValue("Dagster")
    assert "greeting Dagster" in logs


def test_the_definitions_load_from_the_environment() -> None:
    loaded = definitions.defs()

    dg.Definitions.validate_loadable(loaded)
    assert loaded.resolve_assets_def("greeting").check_keys == {
        dg.AssetCheckKey(dg.AssetKey("greeting"), "greeting_mentions_name")
    }
