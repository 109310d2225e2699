"""The orchestrator side of the skew test, run by a venv's own Python (any supported Dagster).

Materializes one asset that calls the people function with ``PipesCloudFunctionClient`` and
writes a JSON summary: the versions this process imported, the run's success, its log lines,
the materialization's metadata and the check results. It imports only the client library and
Dagster, so it runs in a venv holding nothing else (``STORAGE_EMULATOR_HOST`` set by the caller).
"""

import argparse
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_pipes_gcf import PipesCloudFunctionClient, PipesCloudStorageMessageReader

ROWS = 25
# The checks the people function reports (people_lake.checks): the asset declares each.
CHECKS = ("ids_unique_and_not_null", "emails_valid", "row_count_matches_request")


def people_asset(function_url: str, lake: str) -> dg.AssetsDefinition:
    @dg.asset(check_specs=[dg.AssetCheckSpec(name, asset="people") for name in CHECKS])
    def people(
        context: dg.AssetExecutionContext, cloud_function: PipesCloudFunctionClient
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        event = {"dl_bucket": lake, "num_rows": ROWS, "seed": 7}
        return cloud_function.run(
            context=context, function_url=function_url, event=event
        ).get_materialize_result()

    return people


def plain(value: Any) -> Any:
    """A metadata value as JSON: numbers and text as they are, anything else (a table schema)
    as its repr."""
    return value if isinstance(value, str | int | float | bool) or value is None else repr(value)


def materialize(function_url: str, bucket: str, lake: str) -> dict[str, Any]:
    client = PipesCloudFunctionClient(message_reader=PipesCloudStorageMessageReader(bucket=bucket))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [people_asset(function_url, lake)],
            resources={"cloud_function": client},
            instance=instance,
            raise_on_error=False,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    materializations = result.asset_materializations_for_node("people")
    return {
        "versions": {name: version(name) for name in ("dagster", "dagster-pipes")},
        "dagster_file": dg.__file__,
        "success": result.success,
        "logs": logs,
        "metadata": [
            {key: plain(value.value) for key, value in m.metadata.items()} for m in materializations
        ],
        "checks": {c.check_name: c.passed for c in result.get_asset_check_evaluations()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--function-url", "--bucket", "--lake", "--summary"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    summary = materialize(args.function_url, args.bucket, args.lake)
    Path(args.summary).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
