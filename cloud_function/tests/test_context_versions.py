"""Contexts from older and newer Dagsters: read as ``dagster_pipes`` reads them, and served.

The fixtures (``fixtures/``) hold the context data real Dagsters sent (captured with
``fixtures/capture_contexts.py``: the oldest Pipes-era Dagster we test, the workspace's and the
newest on PyPI) and hand-crafted ones with keys missing (an older orchestrator) or added (a
newer one). Each is checked by the validator and sent to the real function server.
"""

from __future__ import annotations

import copy
import json
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
from gcf_pipes.context_data import context_defaults, validate_context_data
from gcf_pipes.writer import chunk_key

FIXTURES = Path(__file__).parent / "fixtures"
REAL = {
    path.stem.removeprefix("contexts-dagster-"): json.loads(path.read_text())["contexts"]
    for path in sorted(FIXTURES.glob("contexts-dagster-*.json"))
}
HAND_CRAFTED = json.loads((FIXTURES / "contexts-hand-crafted.json").read_text())
OLDER: dict[str, dict[str, Any]] = HAND_CRAFTED["older"]
NEWER: dict[str, dict[str, Any]] = HAND_CRAFTED["newer"]
PIPES_BUCKET = "version-pipes"


def test_the_fixtures_span_the_oldest_to_the_newest_dagster() -> None:
    versions = sorted(tuple(int(part) for part in version.split(".")) for version in REAL)
    assert versions[0] <= (1, 6, 0) and versions[-1] >= (1, 13, 29), versions


@pytest.mark.parametrize(
    ("version", "kind"), [(version, kind) for version in REAL for kind in REAL[version]]
)
def test_a_real_dagster_s_context_is_read_as_sent(version: str, kind: str) -> None:
    assert validate_context_data(REAL[version][kind]) == REAL[version][kind]


@pytest.mark.integration  # needs Dagster itself, which the function does not install
def test_the_installed_dagster_s_contexts_are_read_as_sent() -> None:
    from .fixtures.capture_contexts import capture_contexts

    for kind, sent in capture_contexts().items():
        assert validate_context_data(sent) == sent, kind


@pytest.mark.parametrize("name", sorted(OLDER))
def test_an_older_context_reads_its_missing_keys_as_undefined(name: str) -> None:
    sent = OLDER[name]
    assert validate_context_data(sent) == {**context_defaults(), **sent}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_a_newer_context_is_read_without_the_keys_it_added(name: str) -> None:
    assert validate_context_data(NEWER[name]["sent"]) == NEWER[name]["read_as"]


# --- through the real function server --------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory.mktemp("versions"), pipes_bucket=PIPES_BUCKET) as running:
        yield running


def with_fresh_invocation(context: dict[str, Any]) -> dict[str, Any]:
    """The context, its invocation id (when it has one) unique: each post is a new call."""
    fresh = copy.deepcopy(context)
    if "invocation_id" in fresh.get("extras", {}):
        fresh["extras"]["invocation_id"] = uuid.uuid4().hex
    return fresh


def post(stack: LocalStack, context: dict[str, Any]) -> tuple[requests.Response, str]:
    """Post ``context`` with a small people event to a lake of its own; the answer and the
    key prefix the messages went under."""
    key_prefix = f"versions/{uuid.uuid4().hex}/1"
    lake = stack.fresh_lake()  # gs:// in the emulator
    body = {
        "num_rows": 3,
        "dl_bucket": str(lake),
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": with_fresh_invocation(context)}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": PIPES_BUCKET, "key_prefix": key_prefix}
        ),
    }
    return requests.post(stack.function_url, json=body, timeout=120), key_prefix


def pipes_messages(stack: LocalStack, key_prefix: str) -> list[dict[str, Any]]:
    """Every message the function wrote under ``key_prefix``, chunk 1, 2, ... in order."""
    gcs = storage.Client(
        project="local",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.emulator_url},
    )
    bucket, found, index = gcs.bucket(PIPES_BUCKET), [], 1
    while (blob := bucket.blob(chunk_key(key_prefix, index))).exists():
        found.extend(json.loads(line) for line in blob.download_as_text().splitlines())
        index += 1
    return found


def assert_served(stack: LocalStack, context: dict[str, Any]) -> None:
    answer, key_prefix = post(stack, context)
    assert answer.status_code == 200, answer.text
    sent = pipes_messages(stack, key_prefix)
    closed = [m for m in sent if m["method"] == "closed"]
    assert len(closed) == 1 and not closed[0]["params"].get("exception"), closed
    materialized = [m["params"]["asset_key"] for m in sent
                    if m["method"] == "report_asset_materialization"]  # fmt: skip
    assert materialized == context["asset_keys"]


SERVED_KINDS = ("asset", "one_day")  # the people function's steps (one asset each)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("version", "kind"), [(version, kind) for version in REAL for kind in SERVED_KINDS]
)
def test_a_real_dagster_s_context_runs_the_function(
    stack: LocalStack, version: str, kind: str
) -> None:
    assert_served(stack, REAL[version][kind])


@pytest.mark.integration
@pytest.mark.parametrize("version", sorted(REAL))
def test_a_real_op_context_is_refused_naming_the_asset_keys_it_lacks(
    stack: LocalStack, version: str
) -> None:
    answer, _ = post(stack, REAL[version]["op"])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == f"{DAGSTER_PIPES_CONTEXT_ENV_VAR}.asset_keys"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(set(OLDER) - {"run_id_only"}))
def test_an_older_dagster_s_context_runs_the_function(stack: LocalStack, name: str) -> None:
    assert_served(stack, OLDER[name])


@pytest.mark.integration
def test_a_context_of_a_run_id_alone_is_refused_naming_the_asset_keys(stack: LocalStack) -> None:
    answer, _ = post(stack, OLDER["run_id_only"])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == f"{DAGSTER_PIPES_CONTEXT_ENV_VAR}.asset_keys"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(NEWER))
def test_a_newer_dagster_s_context_runs_the_function(stack: LocalStack, name: str) -> None:
    assert_served(stack, NEWER[name]["sent"])
