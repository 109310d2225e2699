"""The local GCS emulator (fake-gcs-server) enforces what GCS enforces: no overwrite of an
existing object under ``if_generation_match=0``, and the function's writer meets that 412
(and its job then commits nothing)."""

import uuid

import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)
from google.api_core.exceptions import PreconditionFailed
from google.cloud import storage

from devstack.stack import LocalStack

from .conftest import fresh_lake

pytestmark = pytest.mark.integration


def pipes_bucket(stack: LocalStack) -> storage.Bucket:
    return storage.Client(project="local").bucket(stack.pipes_bucket)


def test_the_emulator_refuses_an_overwrite_under_if_generation_match_0(stack: LocalStack) -> None:
    blob_name = f"semantics/{uuid.uuid4().hex}/1.json"
    pipes_bucket(stack).blob(blob_name).upload_from_string("first", if_generation_match=0)

    with pytest.raises(PreconditionFailed):
        pipes_bucket(stack).blob(blob_name).upload_from_string("second", if_generation_match=0)
    assert pipes_bucket(stack).blob(blob_name).download_as_text() == "first"


def test_the_function_answers_502_naming_a_chunk_that_already_exists(stack: LocalStack) -> None:
    key_prefix = f"dagster-pipes/{uuid.uuid4().hex}/1"
    stale = pipes_bucket(stack).blob(f"{key_prefix}/1.json")
    stale.upload_from_string('{"stale": true}\n', if_generation_match=0)
    context = {
        "asset_keys": ["people"], "code_version_by_asset_key": {"people": None},
        "provenance_by_asset_key": {"people": None}, "partition_key": None,
        "partition_key_range": None, "partition_time_window": None, "run_id": "r",
        "job_name": "j", "retry_number": 0, "extras": {"invocation_id": uuid.uuid4().hex},
    }  # fmt: skip
    lake = fresh_lake(stack)
    body = {
        "dl_bucket": str(lake),
        "num_rows": 1_000_000,  # eight batches: the job reaches a check after the failure
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": stack.pipes_bucket, "key_prefix": key_prefix}
        ),
    }

    answer = requests.post(stack.function_url, json=body, timeout=60)

    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] == "PipesMessageDeliveryError"
    assert f"/{key_prefix}/1.json already exists" in answer.json()["error"]["message"]
    assert stale.download_as_text() == '{"stale": true}\n'
    # Dagster could never hear of a commit: the job stopped before making one.
    assert answer.json()["error"]["job_outcome"]["error"]["type"] == "PipesMessageDeliveryError"
    history = lake.delta("people").history() if lake.version("people") is not None else []
    assert [c["operation"] for c in history if c["operation"] != "CREATE TABLE"] == []
