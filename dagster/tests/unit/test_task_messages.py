"""Merging the results of a Cloud Run execution's tasks into one per asset and check."""

from typing import Any

from dagster_pipes_gcf.task_messages import merge_results


def materialization(rows: int, version: int, preview: str) -> dict[str, Any]:
    metadata = {
        "rows_written": {"raw_value": rows, "type": "int"},
        "delta_version": {"raw_value": version, "type": "int"},
        "preview": {"raw_value": preview, "type": "md"},
    }
    params = {"asset_key": "people_job", "metadata": metadata, "data_version": str(version)}
    return {"method": "report_asset_materialization", "params": params}


def check(passed: bool, note: str) -> dict[str, Any]:
    params = {
        "asset_key": "people_job",
        "check_name": "emails_valid",
        "passed": passed,
        "severity": "ERROR",
        "metadata": {"note": {"raw_value": note, "type": "text"}},
    }
    return {"method": "report_asset_check", "params": params}


def test_one_materialization_whose_rows_add_up_and_version_is_the_latest() -> None:
    merged = merge_results([[materialization(5, 3, "a")], [materialization(5, 10, "b")]])
    [only] = merged
    metadata = only["params"]["metadata"]
    assert metadata["rows_written"]["raw_value"] == 10  # equal shares still add up
    assert metadata["delta_version"]["raw_value"] == 10
    assert metadata["preview"]["raw_value"] == "a"
    assert only["params"]["data_version"] == "10"


def test_a_check_fails_when_any_task_failed_it() -> None:
    [merged] = merge_results([[check(True, "t0")], [check(False, "t1")], [check(True, "t2")]])
    assert merged["params"]["passed"] is False
    assert merged["params"]["metadata"]["note"]["raw_value"] == "t1"
