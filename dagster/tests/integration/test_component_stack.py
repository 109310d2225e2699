"""The ``dg`` component through the real stack: a ``defs.yaml`` loaded as Dagster loads a
project, its asset materialized by the function under functions-framework, the Delta table
read back."""

from collections.abc import Iterator

import dagster as dg
import pytest
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

from dagster_pipes_gcf import CloudFunctionComponent
from devstack.stack import LocalStack
from gcf_demo.defs.assets import CHECKS

from .conftest import fresh_lake

pytestmark = pytest.mark.integration


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as folder:
        yield folder


def test_a_yaml_declared_asset_materializes_through_the_function(
    stack: LocalStack, sandbox: DefsFolderSandbox
) -> None:
    lake = fresh_lake(stack)
    path = sandbox.scaffold_component(
        component_cls=CloudFunctionComponent,
        defs_yaml_contents={
            "type": "dagster_pipes_gcf.CloudFunctionComponent",
            "attributes": {
                "function_url": stack.function_url,
                "pipes_bucket": stack.pipes_bucket,
                "event": {"dl_bucket": str(lake), "num_rows": 40, "seed": 7},
                "assets": [{"key": "people_from_yaml"}],
                "checks": [{"name": name, "asset": "people_from_yaml"} for name in CHECKS],
            },
        },
    )
    with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
        result = dg.materialize([defs.resolve_assets_def("people_from_yaml")], raise_on_error=False)

    assert result.success
    [materialization] = result.asset_materializations_for_node("people_from_yaml")
    assert materialization.metadata["dagster/row_count"] == dg.IntMetadataValue(40)
    checks = {check.check_name: check.passed for check in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(CHECKS, True)
    assert lake.read("people_from_yaml").height == 40
