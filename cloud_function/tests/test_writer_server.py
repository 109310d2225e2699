"""The message writer's failures and the function's own log lines, through the real server
(functions-framework) and the real emulator: ``functions/writer_faults.py``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.stack import LocalStack, local_stack
from gcf_pipes.cancel import cancel_marker_key
from gcf_pipes.writer import chunk_key

pytestmark = pytest.mark.integration

FUNCTION = Path(__file__).parent / "functions" / "writer_faults.py"
PIPES_BUCKET = "writer-faults-pipes"
LAKE_BUCKET = "writer-faults-lake-eu"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    work = tmp_path_factory.mktemp("writer-faults")
    env = {
        "ALLOWED_DATA_LAKE_ROOTS": f"{work / 'lake'},gs://{LAKE_BUCKET}/t",
        "K_SERVICE": "people",
    }
    with local_stack(  # a directory lake: the fault function leaves marker files in it
        work, pipes_bucket=PIPES_BUCKET, function_source=FUNCTION, function_env=env,
        gs_lake=False,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def pipes_bucket(stack: LocalStack) -> storage.Bucket:
    client = storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.emulator_url},
    )
    return client.bucket(PIPES_BUCKET)


def request_body(key_prefix: str, **event: Any) -> dict[str, Any]:
    context = {
        "asset_keys": ["people"],
        "code_version_by_asset_key": {"people": None},
        "provenance_by_asset_key": {"people": None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "writer-faults",
        "job_name": "job",
        "retry_number": 0,
        "extras": {},
    }
    return {
        **event,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": PIPES_BUCKET, "key_prefix": key_prefix}
        ),
    }


def call(stack: LocalStack, body: dict[str, Any], query: str = "") -> tuple[int, dict[str, Any]]:
    answer = requests.post(f"{stack.function_url}/{query}", json=body, timeout=60)
    return answer.status_code, answer.json()


def committed(stack: LocalStack, commit: str) -> bool:
    return (Path(stack.data_lake_uri) / f"{commit}.committed").exists()


def sent(bucket: storage.Bucket, key_prefix: str) -> list[dict[str, Any]]:
    found, index = [], 1
    while (blob := bucket.blob(chunk_key(key_prefix, index))).exists():
        found.extend(json.loads(line) for line in blob.download_as_text().splitlines())
        index += 1
    return found


def log_entries(stack: LocalStack) -> list[dict[str, Any]]:
    """The function's structured lines on stdout (other output is not JSON)."""
    entries = []
    for line in stack.function_log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def test_a_token_that_cannot_be_refreshed_fails_the_request_before_it_commits(
    stack: LocalStack,
) -> None:
    commit = uuid.uuid4().hex
    body = request_body(f"p/{commit}", commit=commit, work_s=15)  # checks every 0.05 s
    started = time.monotonic()
    status, body = call(stack, body, "?credentials=unrefreshable")

    assert status == 502, body
    assert time.monotonic() - started < 10, "the job ran on after its writer died"
    assert body["error"]["type"] == "PipesMessageDeliveryError"
    assert "TransportError" in body["error"]["message"]
    assert not committed(stack, commit)
    warnings = [
        e
        for e in log_entries(stack)
        if "cannot reach Dagster" in e["message"] and commit in e["message"]
    ]
    assert [e["severity"] for e in warnings] == ["WARNING"], "the writer's warning is on stdout"


def test_a_message_that_is_not_json_fails_the_request_before_it_commits(
    stack: LocalStack, pipes_bucket: storage.Bucket
) -> None:
    commit = uuid.uuid4().hex
    status, body = call(stack, request_body(f"p/{commit}", commit=commit, not_json=True))

    assert status == 502, body
    assert body["error"]["type"] == "PipesMessageDeliveryError"
    assert "report_custom_message" in body["error"]["message"]
    assert not committed(stack, commit)
    assert "report_custom_message" not in json.dumps(sent(pipes_bucket, f"p/{commit}"))


def test_a_valid_request_commits_and_closes(
    stack: LocalStack, pipes_bucket: storage.Bucket
) -> None:
    commit = uuid.uuid4().hex
    status, body = call(stack, request_body(f"p/{commit}", commit=commit, work_s=0.1))

    assert status == 200, body
    assert committed(stack, commit)
    assert sent(pipes_bucket, f"p/{commit}")[-1]["method"] == "closed"


def test_a_warning_after_the_request_s_pipes_closed_reaches_stdout(
    stack: LocalStack, pipes_bucket: storage.Bucket
) -> None:
    commit = uuid.uuid4().hex
    key_prefix = f"p/{commit}"
    marker = pipes_bucket.blob(cancel_marker_key(key_prefix))
    threading.Timer(0.5, marker.upload_from_string, args=("{}",)).start()
    status, body = call(stack, request_body(key_prefix, commit=commit, wait_for_cancel=True))

    assert status == 200, body  # cancelled after its last check: its work stands
    too_late = [e for e in log_entries(stack) if e["message"].startswith("cancelled too late")]
    assert [e["severity"] for e in too_late] == ["WARNING"]


def test_a_crash_naming_a_lake_root_is_redacted_in_the_answer_and_the_closed_message(
    stack: LocalStack, pipes_bucket: storage.Bucket
) -> None:
    commit = uuid.uuid4().hex
    status, body = call(stack, request_body(f"p/{commit}", commit=commit, crash_naming_roots=True))

    assert status == 500, body
    closed = sent(pipes_bucket, f"p/{commit}")[-1]
    assert closed["method"] == "closed"
    for reported in (body["error"], closed["params"]["exception"]):
        text = json.dumps(reported)
        assert LAKE_BUCKET not in text
        assert "${ALLOWED_DATA_LAKE_ROOTS}" in text
        assert "people: cannot open" in text  # K_SERVICE=people is no secret
