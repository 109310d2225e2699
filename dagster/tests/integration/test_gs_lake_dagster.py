"""Dagster to the function to a ``gs://`` lake in the emulator (through the XML-API adapter):
what the data-path tests prove on a directory lake, on the cloud's kind of lake."""

from __future__ import annotations

import uuid
from typing import Any

import deltalake  # before polars (crash at exit otherwise)
import polars as pl
import pytest

from devstack.stack import LocalStack
from gcf_demo.defs.assets import cloud_function_pipes_asset, daily_people
from people_lake.storage import storage_options_for

from .conftest import materialize_people
from .test_data_path import post

pytestmark = pytest.mark.integration


def gs_lake(stack: LocalStack) -> str:
    return f"{stack.gs_lake_uri}/{uuid.uuid4().hex[:8]}"


def options(stack: LocalStack) -> dict[str, str]:
    found = storage_options_for(stack.gs_lake_uri, stack.emulator_url)
    assert found is not None
    return found


def read(stack: LocalStack, table: str) -> pl.DataFrame:
    return pl.read_delta(table, storage_options=options(stack))


def data_commits(stack: LocalStack, table: str) -> list[dict[str, Any]]:
    history = deltalake.DeltaTable(table, storage_options=options(stack)).history()
    return [commit for commit in history if commit["operation"] != "CREATE TABLE"]


def rows_per_day(stack: LocalStack, table: str) -> dict[str, int]:
    counts = read(stack, table).group_by("event_date").len()
    return {str(day): n for day, n in counts.iter_rows()}


def test_the_demo_asset_materializes_into_a_gs_lake(stack: LocalStack) -> None:
    lake = gs_lake(stack)

    run = materialize_people(stack, num_rows=42, seed=7, data_lake_uri=lake)

    assert run.success, run.logs
    (materialization,) = run.materializations()
    table = f"{lake}/{cloud_function_pipes_asset.op.name}"
    assert materialization.metadata["table_uri"].value == table
    assert materialization.metadata["delta_version"].value == 1
    assert read(stack, table).height == 42
    assert all(check.passed for check in run.result.get_asset_check_evaluations())


def test_a_partition_rematerialized_on_gs_replaces_only_that_day(stack: LocalStack) -> None:
    lake = gs_lake(stack)
    for day, rows in (("2024-01-01", 10), ("2024-01-02", 15), ("2024-01-01", 7)):
        run = materialize_people(stack, asset=daily_people, data_lake_uri=lake,
                                 partition_key=day, num_rows=rows)  # fmt: skip
        assert run.success, run.logs

    assert rows_per_day(stack, f"{lake}/daily_people") == {"2024-01-01": 7, "2024-01-02": 15}


def test_a_window_of_days_on_gs_is_replaced_in_one_commit(stack: LocalStack) -> None:
    lake = gs_lake(stack)
    table = f"{lake}/daily_people"
    event = {"dl_bucket": lake, "num_rows": 9, "seed": 11}
    key = uuid.uuid4().hex
    for day in ("2024-04-30", "2024-05-08"):  # the neighbours
        post(stack, event, f"gs-week/{key}/{day}", asset="daily_people", invocation_id=day,
             days=(day, day))  # fmt: skip
    post(stack, {**event, "num_rows": 2}, f"gs-week/{key}/old", asset="daily_people",
         invocation_id="old", days=("2024-05-03", "2024-05-04"))  # fmt: skip
    commits_before = len(data_commits(stack, table))

    week = ("2024-05-01", "2024-05-07")
    answer = post(stack, event, f"gs-week/{key}/run", asset="daily_people", invocation_id="week",
                  days=week)  # fmt: skip

    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["rows_written"] == 63
    assert len(data_commits(stack, table)) == commits_before + 1
    days = {f"2024-05-0{d}": 9 for d in range(1, 8)}
    assert rows_per_day(stack, table) == {"2024-04-30": 9, "2024-05-08": 9, **days}
    again = post(stack, event, f"gs-week/{key}/again", asset="daily_people",
                 invocation_id="week", days=week)  # fmt: skip
    assert again.status_code == 200 and again.json()["result"]["repeated"] is True
    assert len(data_commits(stack, table)) == commits_before + 1
