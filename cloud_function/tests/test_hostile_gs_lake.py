"""The hostile suite's lake cases on a ``gs://``-default stack: the function's lake is
``gs://<lake bucket>/lake`` in the emulator (behind the XML-API adapter), as deployed.

Each ``dl_bucket`` trick is refused with a 4xx naming the field, and the lake bucket holds
exactly the objects it held before (listed before and after)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deltalake  # noqa: F401 - before polars
import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.stack import GS_LAKE_BUCKET, LocalStack, local_stack

pytestmark = pytest.mark.integration

PIPES_BUCKET = "hostile-gs-pipes"
OTHER_BUCKET = "victim-gs-lake"
LAKE = f"gs://{GS_LAKE_BUCKET}/lake"
EXISTING_TABLES = ("lake/outer", "lake/around/people/sub")  # tables a new one would wrap

LAKE_TRICKS = [
    pytest.param(400, f"{LAKE}/%2e%2e/outside", id="percent-dotdot"),
    pytest.param(400, f"{LAKE}/%252e%252e/outside", id="double-encoded"),
    pytest.param(400, f"{LAKE}/x%2f..%2f..%2foutside", id="encoded-slash"),
    pytest.param(400, f"{LAKE}/../outside", id="dotdot"),
    pytest.param(400, f"{LAKE}/./x", id="dot"),
    pytest.param(400, f"{LAKE}\\..\\outside", id="backslash"),
    pytest.param(400, f"{LAKE}/x\x00y", id="nul"),
    pytest.param(400, f"{LAKE}/x?y=1", id="query"),
    pytest.param(400, f"{LAKE}/\uff0e\uff0e/outside", id="fullwidth-dotdot"),
    pytest.param(400, f"{LAKE}/a\u200bb", id="zero-width-space"),
    pytest.param(400, f"{LAKE}/{'a' * 300}", id="segment-300-bytes"),
    pytest.param(400, f"gs://{GS_LAKE_BUCKET}:443/lake", id="bucket-with-port"),
    pytest.param(400, f"gs://user@{GS_LAKE_BUCKET}/lake", id="user-info"),
    pytest.param(400, f"GS://{GS_LAKE_BUCKET}/lake", id="uppercase-scheme"),
    pytest.param(400, f"{LAKE}/people/_delta_log", id="in-delta-log"),
    pytest.param(403, f"{LAKE}-evil", id="sibling-prefix"),
    pytest.param(403, f"gs://{GS_LAKE_BUCKET}/elsewhere", id="same-bucket-outside-root"),
    pytest.param(403, f"gs://{OTHER_BUCKET}/lake", id="other-bucket"),
    pytest.param(403, f"{LAKE}/outer", id="inside-a-table"),
    pytest.param(403, f"{LAKE}/around", id="around-a-table"),
    pytest.param(403, "/tmp/lake", id="directory-outside-roots"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory.mktemp("hostile-gs"), pipes_bucket=PIPES_BUCKET,
                     gs_lake=True) as running:  # fmt: skip
        gcs = client(running)
        gcs.create_bucket(OTHER_BUCKET)
        lake_bucket = gcs.bucket(GS_LAKE_BUCKET)
        for table in EXISTING_TABLES:
            lake_bucket.blob(f"{table}/_delta_log/00000000000000000000.json").upload_from_string(
                "{}"
            )
        yield running


def client(stack: LocalStack) -> storage.Client:
    return storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.emulator_url},
    )


def body(**event: Any) -> dict[str, Any]:
    context = {
        "asset_keys": ["people"], "code_version_by_asset_key": {"people": None},
        "provenance_by_asset_key": {"people": None}, "partition_key": None,
        "partition_key_range": None, "partition_time_window": None, "run_id": "hostile-gs",
        "job_name": "hostile_gs", "retry_number": 0, "extras": {"invocation_id": uuid.uuid4().hex},
    }  # fmt: skip
    messages = {"bucket": PIPES_BUCKET, "key_prefix": f"runs/{uuid.uuid4().hex}/1"}
    return {
        **event,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(messages),
    }


def lake_objects(stack: LocalStack) -> dict[str, set[str]]:
    gcs = client(stack)
    return {name: {b.name for b in gcs.list_blobs(name)} for name in (GS_LAKE_BUCKET, OTHER_BUCKET)}


def post(stack: LocalStack, payload: dict[str, Any]) -> requests.Response:
    return requests.post(stack.function_url, data=json.dumps(payload),
                         headers={"Content-Type": "application/json"}, timeout=120)  # fmt: skip


@pytest.mark.parametrize(("status", "dl_bucket"), LAKE_TRICKS)
def test_a_lake_trick_on_a_gs_lake_is_refused_and_writes_nothing(
    stack: LocalStack, status: int, dl_bucket: str
) -> None:
    before = lake_objects(stack)

    answer = post(stack, body(num_rows=3, dl_bucket=dl_bucket))

    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == "dl_bucket", error
    assert "Traceback" not in answer.text and str(Path.home()) not in answer.text
    assert lake_objects(stack) == before


def test_the_gs_lake_default_still_takes_a_valid_request(stack: LocalStack) -> None:
    before = lake_objects(stack)[GS_LAKE_BUCKET]

    answer = post(stack, body(num_rows=3))

    assert answer.status_code == 200, answer.text
    assert any(
        name.startswith("lake/people/") for name in lake_objects(stack)[GS_LAKE_BUCKET] - before
    )
