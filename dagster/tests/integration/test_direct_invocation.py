"""An asset that calls the function, invoked directly (``build_asset_context()``, as users
unit-test Pipes assets) against the real stack: function, GCS emulator, Delta table."""

import dagster as dg
import pytest

from devstack.stack import LocalStack
from gcf_demo.defs.assets import PeopleConfig, cloud_function_pipes_asset
from gcf_demo.defs.resources import PeopleFunction

from .conftest import TABLE, fresh_lake, pipes_client

pytestmark = pytest.mark.integration


def test_a_directly_invoked_asset_writes_once_per_invocation(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    resources = {
        "pipes_function_client": pipes_client(stack),
        "people_function": PeopleFunction(function_url=stack.function_url, data_lake_uri=str(lake)),
    }
    results = [
        cloud_function_pipes_asset(
            context=dg.build_asset_context(resources=resources), config=PeopleConfig(num_rows=25)
        )
        for _ in range(2)
    ]

    ids = [result.metadata["invocation_id"] for result in results]
    assert ids[0] != ids[1], "two direct invocations are two calls, not a retry"
    assert [result.metadata["dagster/row_count"].value for result in results] == [25, 50]
    assert lake.read(TABLE).height == 50
