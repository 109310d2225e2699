"""The business logic: fake people into a Delta table, reported to Dagster through Pipes.

Order matters: everything the caller controls is validated (400) and the target checked
against the allow-list (403) before any data is generated or written.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import deltalake  # imported before polars (crash at exit otherwise)
import polars as pl
from dagster_pipes import PipesContext, PipesMetadataValue, to_asset_key_path

from people_lake import __version__
from people_lake.checks import CheckOutcome, check_data, check_row_count, from_json, to_json
from people_lake.delta_table import (
    PARTITION_COLUMN,
    TableWrite,
    previous_write,
    with_partition,
    write_people_table,
)
from people_lake.fake_people import generate_people
from people_lake.metadata import column_schema, markdown_preview
from people_lake.request import (
    PeopleRequest,
    parse_invocation_id,
    parse_partition_day,
    parse_people_request,
)
from people_lake.settings import FunctionSettings
from people_lake.storage import TableRef, ensure_allowed, parse_lake_uri, table_location, table_ref

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """A validated invocation: what to write, where, and under which invocation id."""

    request: PeopleRequest
    table: TableRef
    day: dt.date | None
    invocation_id: str | None


def plan_invocation(
    pipes: PipesContext, event: Mapping[str, Any], settings: FunctionSettings
) -> Plan:
    """Validate the event and the Pipes context; refuse targets outside the allowed roots."""
    request = parse_people_request(event, settings.data_lake_uri)
    day = parse_partition_day(pipes)
    invocation_id = parse_invocation_id(pipes)
    lake = parse_lake_uri(request.data_lake_uri)
    location = table_location(lake, to_asset_key_path(pipes.asset_key))
    ensure_allowed(location, settings.allowed_roots)  # the canonical table path, links resolved
    return Plan(request, table_ref(location, settings.storage_emulator_host), day, invocation_id)


def _preview_of_write(plan: Plan, written: TableWrite) -> pl.DataFrame:
    """The first rows of the commit's data, read back (used when nothing was written now)."""
    scan = pl.scan_delta(
        plan.table.uri, version=written.version, storage_options=plan.table.storage_options
    )
    if plan.day is not None:
        scan = scan.filter(pl.col(PARTITION_COLUMN) == plan.day)
    return scan.head(5).collect()


def _materialization_metadata(
    plan: Plan, written: TableWrite, people: pl.DataFrame
) -> dict[str, PipesMetadataValue]:
    snapshot = deltalake.DeltaTable(
        plan.table.uri, version=written.version, storage_options=plan.table.storage_options
    )
    metadata: dict[str, PipesMetadataValue] = {
        "table_uri": {"raw_value": plan.table.uri, "type": "path"},
        "dagster/uri": {"raw_value": plan.table.uri, "type": "text"},
        "dagster/row_count": {"raw_value": snapshot.count(), "type": "int"},
        "dagster/column_schema": column_schema(snapshot.schema()),
        "delta_version": {"raw_value": written.version, "type": "int"},
        "rows_written": {"raw_value": written.rows_written, "type": "int"},
        "repeated_invocation": {"raw_value": written.repeated, "type": "bool"},
        "preview": markdown_preview(people),
        "function_version": {"raw_value": __version__, "type": "text"},
    }
    if plan.day is not None:
        metadata["dagster/partition_row_count"] = {"raw_value": written.rows_written, "type": "int"}
    return metadata


def _report(pipes: PipesContext, plan: Plan, written: TableWrite, people: pl.DataFrame) -> None:
    pipes.report_asset_materialization(
        metadata=_materialization_metadata(plan, written, people),
        data_version=str(written.version),
    )
    recorded = written.commit_metadata.get("checks")
    checks: list[CheckOutcome] = from_json(recorded) if recorded else check_data(people)
    checks.append(check_row_count(written.rows_written, plan.request.num_rows))
    for check in checks:
        pipes.report_asset_check(
            check.name, check.passed, severity=check.severity, metadata=check.metadata
        )


def _generate(plan: Plan) -> pl.DataFrame:
    request = plan.request
    people = generate_people(
        request.num_rows,
        seed=request.seed,
        day=plan.day,
        invalid_email_rate=request.invalid_email_rate,
    )
    logger.info("generated %d fake people", people.height)
    return with_partition(people, plan.day)


def _write_once(pipes: PipesContext, plan: Plan) -> tuple[TableWrite, pl.DataFrame]:
    """Write unless this invocation already did; the write and (a preview of) its rows."""
    if plan.invocation_id is not None and (done := previous_write(plan.table, plan.invocation_id)):
        pipes.log.info(
            f"invocation {plan.invocation_id} already wrote version {done.version}; "
            "not writing again"
        )
        return done, _preview_of_write(plan, done)
    people = _generate(plan)
    written = write_people_table(
        people,
        plan.table,
        invocation_id=plan.invocation_id,
        day=plan.day,
        commit_metadata={"checks": to_json(check_data(people))},
    )
    return written, people


def write_people(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    """Generate ``num_rows`` people and write them to ``<dl_bucket>/<asset key path>``.

    Unpartitioned assets append; a daily partition replaces that day. A repeat of the same
    invocation (same Dagster run, asset and partition) writes nothing and reports the first.
    """
    plan = plan_invocation(pipes, event, FunctionSettings.from_env())
    target = f"{plan.table.uri} (partition {plan.day})" if plan.day else plan.table.uri
    pipes.log.info(
        f"people function {__version__}: writing {plan.request.num_rows} rows to {target}"
    )
    written, people = _write_once(pipes, plan)
    pipes.log.info(f"Delta table {plan.table.uri} is at version {written.version}")
    _report(pipes, plan, written, people)
    return {
        "table_uri": plan.table.uri,
        "partition": plan.day.isoformat() if plan.day else None,
        "rows_written": written.rows_written,
        "delta_version": written.version,
        "repeated": written.repeated,
    }
