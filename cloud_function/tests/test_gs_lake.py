"""A ``gs://`` lake through the real local stack: the function (functions-framework) writes
with delta-rs to fake-gcs-server behind the XML-API adapter, as it writes to GCS deployed."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deltalake  # before polars (crash at exit otherwise)
import polars as pl
import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)

from devstack.stack import LocalStack, local_stack
from people_lake.storage import storage_options_for

PIPES_BUCKET = "pipes-gs-lake-test"
RACERS = 20

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local stack with ``gs://<lake bucket>/lake`` as the function's default lake."""
    with local_stack(tmp_path_factory.mktemp("gs-lake"), pipes_bucket=PIPES_BUCKET,
                     gs_lake=True) as running:  # fmt: skip
        yield running


def request_body(asset: str, invocation_id: str | None = None, **event: Any) -> dict[str, Any]:
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "gs-lake-run",
        "job_name": "gs_lake_job",
        "retry_number": 0,
        "extras": {"invocation_id": invocation_id or uuid.uuid4().hex},
    }
    messages = {"bucket": PIPES_BUCKET, "key_prefix": f"runs/{uuid.uuid4().hex}/1"}
    return {
        **event,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(messages),
    }


def invoke(stack: LocalStack, body: dict[str, Any]) -> requests.Response:
    return requests.post(stack.function_url, data=json.dumps(body), timeout=120,
                         headers={"Content-Type": "application/json"})  # fmt: skip


def new_lake(stack: LocalStack) -> str:
    return f"{stack.gs_lake_uri}/{uuid.uuid4().hex[:8]}"


def options(stack: LocalStack) -> dict[str, str]:
    found = storage_options_for(stack.gs_lake_uri, stack.emulator_url)
    assert found is not None
    return found


def data_commits(stack: LocalStack, uri: str) -> list[dict[str, Any]]:
    table = deltalake.DeltaTable(uri, storage_options=options(stack))
    return [c for c in table.history() if c["operation"] != "CREATE TABLE"]


def rows(stack: LocalStack, uri: str) -> int:
    return pl.read_delta(uri, storage_options=options(stack)).height


def test_a_valid_request_writes_the_gs_lake_and_answers_200(stack: LocalStack) -> None:
    lake = new_lake(stack)

    answer = invoke(stack, request_body("people", dl_bucket=lake, num_rows=25))

    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["table_uri"] == f"{lake}/people" and result["rows_written"] == 25
    assert rows(stack, result["table_uri"]) == 25
    assert len(data_commits(stack, result["table_uri"])) == 1


def test_the_default_lake_of_the_stack_is_gs(stack: LocalStack) -> None:
    answer = invoke(stack, request_body(f"default_{uuid.uuid4().hex[:8]}", num_rows=3))

    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["table_uri"].startswith(f"{stack.gs_lake_uri}/")


def test_a_repeat_writes_nothing(stack: LocalStack) -> None:
    lake, invocation = new_lake(stack), uuid.uuid4().hex
    first = invoke(stack, request_body("people", invocation, dl_bucket=lake, num_rows=7))
    again = invoke(stack, request_body("people", invocation, dl_bucket=lake, num_rows=7))

    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["result"]["repeated"] is True
    assert again.json()["result"]["delta_version"] == first.json()["result"]["delta_version"]
    table = f"{lake}/people"
    assert rows(stack, table) == 7 and len(data_commits(stack, table)) == 1


def race(stack: LocalStack, bodies: list[dict[str, Any]]) -> list[requests.Response]:
    """Send every body at the same moment, each from its own thread."""
    start = threading.Barrier(len(bodies))
    answers: list[requests.Response | None] = [None] * len(bodies)

    def send(index: int) -> None:
        start.wait()
        answers[index] = invoke(stack, bodies[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_racing_first_writes_on_a_new_table_commit_once_per_invocation(
    stack: LocalStack,
) -> None:
    lake = new_lake(stack)
    bodies = [request_body("people", dl_bucket=lake, num_rows=3) for _ in range(RACERS)]

    answers = race(stack, bodies)

    assert [a.status_code for a in answers] == [200] * RACERS, [a.text for a in answers]
    versions = sorted(a.json()["result"]["delta_version"] for a in answers)
    assert versions == list(range(1, RACERS + 1))
    assert not any(a.json()["result"]["repeated"] for a in answers)
    table = f"{lake}/people"
    assert len(data_commits(stack, table)) == RACERS and rows(stack, table) == 3 * RACERS


def test_racing_copies_of_one_invocation_on_a_new_table_commit_once(stack: LocalStack) -> None:
    lake, invocation = new_lake(stack), uuid.uuid4().hex
    bodies = [request_body("people", invocation, dl_bucket=lake, num_rows=4) for _ in range(8)]

    answers = race(stack, bodies)

    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    results = [a.json()["result"] for a in answers]
    assert [r["repeated"] for r in results].count(False) == 1
    assert len({r["delta_version"] for r in results}) == 1
    table = f"{lake}/people"
    assert len(data_commits(stack, table)) == 1 and rows(stack, table) == 4


def test_a_new_table_inside_or_around_another_is_refused_on_gs(stack: LocalStack) -> None:
    lake = new_lake(stack)
    made = invoke(stack, request_body("people", dl_bucket=lake, num_rows=2))
    assert made.status_code == 200, made.text

    inside = invoke(stack, request_body("people", dl_bucket=f"{lake}/people", num_rows=2))
    parent, name = lake.rsplit("/", 1)  # the table <parent>/<name> would hold <lake>/people
    around = invoke(stack, request_body(name, dl_bucket=parent, num_rows=2))

    for answer in (inside, around):
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["field"] == "dl_bucket"
    assert rows(stack, f"{lake}/people") == 2
    assert len(data_commits(stack, f"{lake}/people")) == 1


def test_a_directory_lake_stays_supported_beside_gs(stack: LocalStack) -> None:
    lake = Path(stack.directory_lake) / uuid.uuid4().hex[:8]
    lake.mkdir()

    answer = invoke(stack, request_body("people", dl_bucket=str(lake), num_rows=5))

    assert answer.status_code == 200, answer.text
    assert pl.read_delta(str(lake / "people")).height == 5
