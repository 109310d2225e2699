"""The data path through the real stack: checks, metadata, retries, partitions, strict input."""

import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import deltalake  # noqa: F401 - before polars
import polars as pl
import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)

from dagster_pipes_gcf import PipesCloudFunctionClient
from devstack.lakes import Lake
from devstack.stack import GS_LAKE_BUCKET, LocalStack
from gcf_demo.defs.assets import (
    CHECKS,
    PeopleConfig,
    check_specs,
    cloud_function_pipes_asset,
    daily_people,
    run_people_function,
)
from gcf_demo.defs.resources import PeopleFunction
from gcf_pipes.http import MAX_BODY_BYTES

from .conftest import PeopleRun, fresh_lake, materialize_people

pytestmark = pytest.mark.integration


def materialize(
    stack: LocalStack,
    asset: dg.AssetsDefinition,
    lake: Lake,
    *,
    partition_key: str | None = None,
    client: PipesCloudFunctionClient | None = None,
    **config: Any,
) -> PeopleRun:
    """Materialize ``asset`` (its op config from ``config``, 20 rows by default) into ``lake``."""
    return materialize_people(
        stack,
        asset=asset,
        data_lake_uri=str(lake),
        client=client,
        partition_key=partition_key,
        **{"num_rows": 20, **config},
    )


def only_materialization(run: PeopleRun, asset: dg.AssetsDefinition) -> dg.AssetMaterialization:
    (materialization,) = run.result.asset_materializations_for_node(asset.op.name)
    return materialization


def check_results(run: PeopleRun) -> dict[str, dg.AssetCheckEvaluation]:
    return {check.check_name: check for check in run.result.get_asset_check_evaluations()}


def read_table(lake: Lake, name: str) -> pl.DataFrame:
    return lake.read(name)


# --- metadata and checks --------------------------------------------------------------------


def test_materialization_metadata_renders_as_table_schema_preview_and_counts(
    stack: LocalStack,
) -> None:
    lake = fresh_lake(stack)
    run = materialize(stack, cloud_function_pipes_asset, lake, num_rows=30, seed=3)

    assert run.success
    metadata = only_materialization(run, cloud_function_pipes_asset).metadata
    assert metadata["dagster/row_count"].value == 30
    assert metadata["table_uri"].value == lake.table("cloud_function_pipes_asset")
    assert metadata["delta_version"].value == 1  # version 0 created the empty table
    schema = metadata["dagster/column_schema"]
    assert isinstance(schema, dg.TableSchemaMetadataValue)
    columns = {column.name: column for column in schema.schema.columns}
    assert list(columns) == ["id", "name", "address", "email", "phone", "created_at"]
    assert columns["id"].constraints.unique and columns["email"].description
    assert isinstance(metadata["preview"], dg.MarkdownMetadataValue)
    preview = str(metadata["preview"].value)
    first = read_table(lake, "cloud_function_pipes_asset")["id"][0]
    assert preview.startswith("| id | name |") and first in preview


def test_checks_declared_on_the_asset_pass_for_clean_data(stack: LocalStack) -> None:
    run = materialize(stack, cloud_function_pipes_asset, fresh_lake(stack), num_rows=25)

    assert run.success
    checks = check_results(run)
    assert set(checks) == set(CHECKS)
    assert all(check.passed for check in checks.values()), checks
    assert checks["row_count_matches_request"].metadata["committed_rows"].value == 25


def test_a_failing_check_shows_as_failed_with_the_reason(stack: LocalStack) -> None:
    run = materialize(
        stack, cloud_function_pipes_asset, fresh_lake(stack), num_rows=50, invalid_email_rate=0.1
    )

    assert run.success  # the data was written; the check tells what is wrong with it
    emails = check_results(run)["emails_valid"]
    assert not emails.passed and emails.severity == dg.AssetCheckSeverity.ERROR
    assert emails.metadata["invalid_emails"].value == 5
    assert "5 of 50 e-mails do not match" in str(emails.metadata["reason"].value)
    assert "@" not in str(emails.metadata["examples"].value).split(",")[0]
    assert check_results(run)["ids_unique_and_not_null"].passed


# --- retries ----------------------------------------------------------------------------------


@dg.asset(
    name="cloud_function_pipes_asset",
    check_specs=check_specs("cloud_function_pipes_asset"),
    retry_policy=dg.RetryPolicy(max_retries=1),
)
def lost_response_asset(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The demo asset, but its first attempt fails after the function wrote (a lost answer)."""
    result = run_people_function(context, config, pipes_function_client, people_function)
    if context.retry_number == 0:
        raise dg.Failure("simulated: the function wrote, but its answer was lost")
    return result


def test_a_retried_step_does_not_duplicate_rows(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    run = materialize(stack, lost_response_asset, lake, num_rows=33)

    assert run.success
    assert any(event.is_step_up_for_retry for event in run.result.all_events)
    assert any("already wrote version 1; not writing again" in line for line in run.logs)
    table = read_table(lake, "cloud_function_pipes_asset")
    assert table.height == 33 and table["id"].n_unique() == 33
    metadata = only_materialization(run, lost_response_asset).metadata
    assert metadata["repeated_invocation"].value is True
    assert metadata["delta_version"].value == 1 and metadata["rows_written"].value == 33
    assert all(check.passed for check in check_results(run).values())
    assert lake.version("cloud_function_pipes_asset") == 1


def test_a_repeated_request_with_the_same_invocation_id_writes_once(stack: LocalStack) -> None:
    """The same POST twice (as a client retry after a lost answer would send it)."""
    lake = fresh_lake(stack)
    answers = [post(stack, {"dl_bucket": str(lake), "num_rows": 12}, f"repeat/{i}") for i in (1, 2)]

    assert [a.status_code for a in answers] == [200, 200]
    results = [a.json()["result"] for a in answers]
    assert [r["repeated"] for r in results] == [False, True]
    assert results[0]["delta_version"] == results[1]["delta_version"] == 1
    assert read_table(lake, "people").height == 12
    again = post(stack, {"dl_bucket": str(lake), "num_rows": 12}, "repeat/3", invocation_id="new")
    assert again.status_code == 200 and read_table(lake, "people").height == 24


# --- partitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gs", "directory"])
def test_rematerializing_a_partition_replaces_only_that_partition(
    stack: LocalStack, kind: Literal["gs", "directory"]
) -> None:
    lake = fresh_lake(stack, kind)
    day_one = materialize(stack, daily_people, lake, partition_key="2024-01-01", num_rows=10)
    day_two = materialize(stack, daily_people, lake, partition_key="2024-01-02", num_rows=15)
    before = read_table(lake, "daily_people")
    again = materialize(stack, daily_people, lake, partition_key="2024-01-01", num_rows=7)

    assert day_one.success and day_two.success and again.success
    after = read_table(lake, "daily_people")
    by_day = dict(after.group_by("event_date").len().iter_rows())
    assert {str(day): n for day, n in by_day.items()} == {"2024-01-01": 7, "2024-01-02": 15}
    day_one_ids = set(before.filter(pl.col("event_date").cast(pl.String) == "2024-01-01")["id"])
    assert day_one_ids.isdisjoint(after["id"])  # replaced, not appended to
    untouched = pl.col("event_date").cast(pl.String) == "2024-01-02"
    assert before.filter(untouched).sort("id").equals(after.filter(untouched).sort("id"))
    metadata = only_materialization(again, daily_people).metadata
    assert metadata["dagster/partition_row_count"].value == 7
    assert metadata["dagster/row_count"].value == 22
    assert (after.filter(pl.col("event_date").cast(pl.String) == "2024-01-01")["created_at"]
            .dt.date().cast(pl.String).unique().to_list() == ["2024-01-01"])  # fmt: skip
    assert check_results(again)["row_count_matches_request"].passed


def test_concurrent_partitions_of_one_table_all_succeed(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    days = [f"2024-02-0{day}" for day in range(1, 6)]
    outcomes: dict[str, bool] = {}

    def backfill(day: str) -> None:
        run = materialize(stack, daily_people, lake, partition_key=day, num_rows=10 + int(day[-1]))
        outcomes[day] = run.success
        run.instance.dispose()  # its SQLite connections belong to this thread

    threads = [threading.Thread(target=backfill, args=(day,)) for day in days]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes == dict.fromkeys(days, True)
    counts = dict(read_table(lake, "daily_people").group_by("event_date").len().iter_rows())
    assert {str(day): n for day, n in counts.items()} == {d: 10 + int(d[-1]) for d in days}


# --- strict input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"num_rows": 0}, "num_rows", "between 1 and 5000000"),
        ({"num_rows": 5_000_001}, "num_rows", "between 1 and 5000000"),
        ({"seed": -1}, "seed", "between 0 and"),
        ({"invalid_email_rate": 1.5}, "invalid_email_rate", "between 0 and 1"),
    ],
)
def test_bad_config_fails_the_step_with_http_400_naming_the_field(
    stack: LocalStack, config: dict[str, Any], field: str, words: str
) -> None:
    lake = fresh_lake(stack)
    run = materialize(stack, cloud_function_pipes_asset, lake, **config)

    assert not run.success
    message = run.failure_message()
    assert "Cloud Function returned HTTP 400" in message and f"(field: {field})" in message
    assert words in message
    assert lake.files() == []  # nothing written


@dg.asset(name="hourly_people", partitions_def=dg.StaticPartitionsDefinition(["2024-01-01-10:00"]))
def wrongly_partitioned_people(
    context: dg.AssetExecutionContext,
    config: PeopleConfig,
    pipes_function_client: PipesCloudFunctionClient,
    people_function: PeopleFunction,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    return run_people_function(context, config, pipes_function_client, people_function)


def test_an_unknown_partition_format_is_http_400_and_writes_nothing(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    run = materialize(stack, wrongly_partitioned_people, lake, partition_key="2024-01-01-10:00")

    assert not run.success
    message = run.failure_message()
    assert "HTTP 400" in message and "(field: partition_key_range)" in message
    assert "not a daily partition (YYYY-MM-DD)" in message
    assert lake.files() == []


@pytest.mark.parametrize("kind", ["gs", "directory"])
def test_a_lake_outside_the_allowed_roots_is_http_403_and_writes_nothing(
    stack: LocalStack, tmp_path: Path, kind: str
) -> None:
    if kind == "gs":  # the lake bucket, but beside the allowed prefix
        uri = f"gs://{GS_LAKE_BUCKET}/not-allowed-{uuid.uuid4().hex[:8]}"
    else:
        uri = str(tmp_path / "not-allowed")
        Path(uri).mkdir()
    outside = Lake(uri, stack.emulator_url)
    run = materialize(stack, cloud_function_pipes_asset, outside)

    assert not run.success
    message = run.failure_message()
    assert "Cloud Function returned HTTP 403" in message and "(field: dl_bucket)" in message
    assert "is not allowed" in message
    assert outside.files() == []


def day_after(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def post(
    stack: LocalStack,
    event: dict[str, Any],
    key_prefix: str,
    *,
    asset: str = "people",
    invocation_id: str = "fixed-invocation",
    body: str | None = None,
    days: tuple[str, str] | None = None,
) -> requests.Response:
    """POST to the function as the Dagster client would (or a raw ``body``).

    ``days``: a range run of daily partitions (start, end), with its UTC time window.
    """
    key_range = {"start": days[0], "end": days[1]} if days else None
    time_window = (
        {"start": f"{days[0]}T00:00:00+00:00", "end": f"{day_after(days[1])}T00:00:00+00:00"}
        if days
        else None
    )
    context = {
        "asset_keys": [asset], "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None}, "partition_key": None,
        "partition_key_range": key_range, "partition_time_window": time_window, "run_id": "r",
        "job_name": "j", "retry_number": 0, "extras": {"invocation_id": invocation_id},
    }  # fmt: skip
    payload = {
        **event,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": stack.pipes_bucket, "key_prefix": f"data-path/{key_prefix}"}
        ),
    }
    if body is not None:
        return requests.post(stack.function_url, data=body, timeout=60)
    return requests.post(stack.function_url, json=payload, timeout=60)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"body": "{not json"}, "body"),
        ({"event": {"num_rows": "ten"}}, "num_rows"),
        ({"event": {"num_rowz": 10}}, "num_rowz"),
        ({"asset": "../../escape"}, "asset_key"),
    ],
)
def test_malformed_requests_are_http_400_json_naming_the_field(
    stack: LocalStack, kwargs: dict[str, Any], field: str
) -> None:
    lake = fresh_lake(stack)
    extra = dict(kwargs)  # (not the parametrize dict shared by every run of this case)
    event = {"dl_bucket": str(lake), **extra.pop("event", {})}
    before = everything_around(stack, lake)  # a raw body names no lake: the default root
    answer = post(stack, event, f"bad/{field}", **extra)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == field and error["message"]
    assert lake.files() == [] and everything_around(stack, lake) == before


def everything_around(stack: LocalStack, lake: Lake) -> tuple[list[str], list[Path]]:
    """Every object of the ``gs://`` lake's bucket, and everything beside and below the
    directory lake root (where an escaping asset key would write), but the stack's own logs
    and the emulator's objects (the refusal's Pipes messages)."""
    root = Path(stack.directory_lake)
    files = sorted(
        path
        for path in root.parent.rglob("*")
        if path.suffix != ".log" and "emulator-data" not in path.relative_to(root.parent).parts
    )
    gs_lake = Lake(stack.gs_lake_uri, stack.emulator_url)
    return (gs_lake.bucket_objects() if lake.is_gs else []), files


def test_an_oversized_request_body_is_http_413_and_writes_nothing(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    padding = "x" * (MAX_BODY_BYTES + 1)
    answer = post(stack, {"dl_bucket": str(lake), "padding": padding}, "oversized")

    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["field"] == "body" and "limit" in error["message"]
    assert lake.files() == []


# --- one commit per invocation, ranges of days (raw requests to the function server) -------

RACERS = 20


def data_commits(lake: Lake, name: str) -> list[dict[str, Any]]:
    """The commits of table ``name`` that wrote rows (not the one creating the empty table)."""
    history = lake.delta(name).history()
    return [commit for commit in history if commit["operation"] != "CREATE TABLE"]


def post_at_once(stack: LocalStack, lake: Lake, invocation_ids: list[str]) -> list[Any]:
    """One request per id, all sent at the same moment (each its own Pipes prefix)."""
    start = threading.Barrier(len(invocation_ids))

    def send(i: int) -> requests.Response:
        start.wait()
        event = {"dl_bucket": str(lake), "num_rows": 17}
        return post(stack, event, f"race/{lake.name}/{i}", invocation_id=invocation_ids[i])

    with ThreadPoolExecutor(len(invocation_ids)) as pool:
        answers = list(pool.map(send, range(len(invocation_ids))))
    refused = [answer.text for answer in answers if answer.status_code != 200]
    assert refused == [], refused
    return [answer.json()["result"] for answer in answers]


def test_racing_first_requests_of_one_invocation_commit_once(stack: LocalStack) -> None:
    lake = fresh_lake(stack, "directory")  # on gs://: cloud_function/tests/test_gs_lake_races
    results = post_at_once(stack, lake, ["same-invocation"] * RACERS)

    assert [result["repeated"] for result in results].count(False) == 1
    assert len({result["delta_version"] for result in results}) == 1
    assert len(data_commits(lake, "people")) == 1
    assert read_table(lake, "people").height == 17


def test_racing_first_requests_of_distinct_invocations_all_commit(stack: LocalStack) -> None:
    lake = fresh_lake(stack, "directory")  # on gs://: cloud_function/tests/test_gs_lake_races
    results = post_at_once(stack, lake, [f"distinct-{i}" for i in range(RACERS)])

    assert not any(result["repeated"] for result in results)
    assert sorted(result["delta_version"] for result in results) == list(range(1, RACERS + 1))
    assert len(data_commits(lake, "people")) == RACERS
    assert read_table(lake, "people").height == 17 * RACERS


def rows_per_day(lake: Lake) -> dict[str, int]:
    counts = read_table(lake, "daily_people").group_by("event_date").len()
    return {str(day): n for day, n in counts.iter_rows()}


@pytest.mark.parametrize("kind", ["gs", "directory"])
def test_a_week_of_daily_partitions_is_one_commit_replacing_exactly_those_days(
    stack: LocalStack, kind: Literal["gs", "directory"]
) -> None:
    lake = fresh_lake(stack, kind)
    event = {"dl_bucket": str(lake), "num_rows": 9, "seed": 11}
    prefix = f"week/{lake.name}"
    for day in ("2024-04-30", "2024-05-08"):  # the neighbours
        post(
            stack,
            event,
            f"{prefix}/{day}",
            asset="daily_people",
            invocation_id=day,
            days=(day, day),
        )
    post(stack, {**event, "num_rows": 2}, f"{prefix}/old", asset="daily_people",
         invocation_id="old", days=("2024-05-03", "2024-05-04"))  # fmt: skip
    neighbours = read_table(lake, "daily_people").filter(
        pl.col("event_date").cast(pl.String).is_in(["2024-04-30", "2024-05-08"])
    )
    commits_before = len(data_commits(lake, "daily_people"))

    week = ("2024-05-01", "2024-05-07")
    answer = post(
        stack, event, f"{prefix}/run", asset="daily_people", invocation_id="week", days=week
    )

    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert (result["rows_written"], result["partition"]) == (63, "2024-05-01..2024-05-07")
    assert len(data_commits(lake, "daily_people")) == commits_before + 1
    days = {f"2024-05-0{d}": 9 for d in range(1, 8)}
    assert rows_per_day(lake) == {"2024-04-30": 9, "2024-05-08": 9, **days}
    after = read_table(lake, "daily_people").filter(
        pl.col("event_date").cast(pl.String).is_in(["2024-04-30", "2024-05-08"])
    )
    assert after.sort("id").equals(neighbours.sort("id"))  # untouched
    # each day holds the rows a single-day materialization with the same seed gives it
    other = fresh_lake(stack, kind)
    day = ("2024-05-04", "2024-05-04")
    post(stack, {**event, "dl_bucket": str(other)}, f"{prefix}/single", asset="daily_people",
         invocation_id="single", days=day)  # fmt: skip
    in_week = read_table(lake, "daily_people").filter(pl.col("event_date") == dt.date(2024, 5, 4))
    assert in_week.sort("id").equals(read_table(other, "daily_people").sort("id"))

    again = post(
        stack, event, f"{prefix}/again", asset="daily_people", invocation_id="week", days=week
    )
    assert again.status_code == 200 and again.json()["result"]["repeated"] is True
    assert len(data_commits(lake, "daily_people")) == commits_before + 1


def test_a_range_longer_than_a_year_is_http_400_and_writes_nothing(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    answer = post(stack, {"dl_bucket": str(lake)}, "long-range", asset="daily_people",
                  days=("2024-01-01", "2025-01-01"))  # fmt: skip

    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "partition_key_range"
    assert lake.files() == []
