"""``just fn`` / ``just dd`` with a ``gs://`` lake (the default): the function writes it in the
emulator through the XML-API adapter, and the emulator keeps it across restarts."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)

from devstack.__main__ import plan
from devstack.read_table import describe_table
from devstack.tests.conftest import Devstack
from gcf_demo.settings import DemoSettings

LAKE = "gs://devstack-lake-test/lake"


def people_request(pipes_bucket: str) -> dict[str, object]:
    context = {
        "asset_keys": ["people"], "code_version_by_asset_key": {"people": None},
        "provenance_by_asset_key": {"people": None}, "partition_key": None,
        "partition_key_range": None, "partition_time_window": None, "run_id": "devstack",
        "job_name": "devstack", "retry_number": 0, "extras": {"invocation_id": uuid.uuid4().hex},
    }  # fmt: skip
    messages = {"bucket": pipes_bucket, "key_prefix": f"runs/{uuid.uuid4().hex}/1"}
    return {
        "num_rows": 4,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(messages),
    }


def stop(devstack: Devstack) -> None:
    assert devstack.process is not None
    os.killpg(devstack.process.pid, signal.SIGINT)
    assert devstack.process.wait(timeout=30) == 0, devstack.log()


def test_the_local_lake_is_gs_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_LAKE_URI", raising=False)
    assert DemoSettings.from_env(env_file=None).data_lake_uri == "gs://data-lake-local/lake"


def test_the_stack_creates_the_pipes_and_lake_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_LAKE_URI", LAKE)
    monkeypatch.setenv("PIPES_BUCKET", "pipes-x")
    monkeypatch.setenv("CLOUD_FUNCTION_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023")

    services, env = plan(("emulator",))

    assert [service.name for service in services] == ["fake-gcs", "emulator"]
    fake_gcs, adapter = services
    assert adapter.port == 9023 and env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    assert (
        "--bucket=pipes-x" in adapter.command and "--bucket=devstack-lake-test" in adapter.command
    )
    assert f"--upstream={fake_gcs.url}" in adapter.command or fake_gcs.url in adapter.command
    assert fake_gcs.command[fake_gcs.command.index("-external-url") + 1] == adapter.url


def test_just_fn_writes_a_gs_lake_that_survives_a_restart(devstack: Devstack) -> None:
    devstack.env["DATA_LAKE_URI"] = LAKE
    url, emulator = devstack.env["CLOUD_FUNCTION_URL"], devstack.env["STORAGE_EMULATOR_HOST"]
    devstack.start("fn")
    assert devstack.wait_for_output("Local stack is up:", timeout=120), devstack.log()

    answer = requests.post(url, data=json.dumps(people_request("devstack-test")), timeout=120,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["table_uri"] == f"{LAKE}/people"
    stop(devstack)

    devstack.start("emulator")
    assert devstack.wait_for_output("Local stack is up:", timeout=120), devstack.log()
    try:
        assert describe_table(LAKE, "people", emulator).startswith(
            f"{LAKE}/people (version 1, 4 rows)"
        )
    finally:
        stop(devstack)
