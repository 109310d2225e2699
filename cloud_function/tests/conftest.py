"""Helpers of the function's unit tests: Pipes-bearing request bodies and written messages."""

import json
from pathlib import Path
from typing import Any

import pytest
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)

from devstack.fake_gcs import FakeClient
from gcf_pipes.writer import chunk_key
from people_lake.settings import ALLOWED_DATA_LAKE_ROOTS_VAR, DATA_LAKE_URI_VAR

PIPES_BUCKET = "pipes"


@pytest.fixture
def gcs() -> FakeClient:
    """An in-memory GCS with the Pipes bucket."""
    fake = FakeClient()
    fake.create_bucket(PIPES_BUCKET)
    return fake


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The function's configured data lake (DATA_LAKE_URI), empty."""
    root = tmp_path / "lake"
    root.mkdir()
    monkeypatch.setenv(DATA_LAKE_URI_VAR, str(root))
    monkeypatch.delenv(ALLOWED_DATA_LAKE_ROOTS_VAR, raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    return root


def pipes_body(
    event: dict[str, Any] | None = None,
    *,
    key_prefix: str = "t/1",
    asset: str = "people",
    partition: str | None = None,
    invocation_id: str | None = None,
    partition_range: tuple[str, str] | None = None,
    time_window: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A request body as the Dagster client sends it (event + Pipes bootstrap params).

    ``partition`` is one key; ``partition_range`` (start, end) a range run's keys.
    """
    key_range = partition_range or ((partition, partition) if partition else None)
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": partition,
        "partition_key_range": {"start": key_range[0], "end": key_range[1]} if key_range else None,
        "partition_time_window": time_window,
        "run_id": "run-1",
        "job_name": "job",
        "retry_number": 0,
        "extras": {"invocation_id": invocation_id} if invocation_id else {},
    }
    return {
        **(event or {}),
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": PIPES_BUCKET, "key_prefix": key_prefix}
        ),
    }


def messages(gcs: FakeClient, prefix: str = "t/1") -> list[dict[str, Any]]:
    """Every message written under ``prefix``, chunk 1, 2, ... in order (no gaps allowed)."""
    objects = gcs.objects[PIPES_BUCKET]
    found, index = [], 1
    while (key := chunk_key(prefix, index)) in objects:
        found.extend(json.loads(line) for line in objects[key].splitlines())
        index += 1
    stray = [key for key in objects if key.startswith(f"{prefix}/")][index - 1 :]
    assert not stray, f"chunks after a gap under {prefix}: {sorted(objects)}"
    return found
