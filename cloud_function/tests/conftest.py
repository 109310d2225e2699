"""Helpers to build Pipes-bearing request bodies for the function's unit tests."""

from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)

PIPES_BUCKET = "pipes"


def pipes_body(
    event: dict[str, Any] | None = None, *, key_prefix: str = "t/1", asset: str = "people"
) -> dict[str, Any]:
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run-1",
        "job_name": "job",
        "retry_number": 0,
        "extras": {},
    }
    return {
        **(event or {}),
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": PIPES_BUCKET, "key_prefix": key_prefix}
        ),
    }
