"""The business logic: fake people into a Delta table, reported to Dagster through Pipes.

Order matters: everything the caller controls is validated (400) and the target checked
against the allow-list (403) before any data is generated or written. The rows are made and
written in batches (memory does not grow with the request), all in one Delta commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import deltalake  # noqa: F401 - imported before polars (crash at exit otherwise)
import polars as pl
from dagster_pipes import PipesContext, PipesMetadataValue, to_asset_key_path

from gcf_pipes import Cancellation, RequestError, current_cancellation
from people_lake import __version__
from people_lake.checks import (
    CheckOutcome,
    DataChecks,
    IdLookup,
    check_row_count,
    from_json,
    has_id_hash,
)
from people_lake.delta_table import (
    CommitFiles,
    TableWrite,
    commit_files,
    lake_work,
    previous_write,
    with_partition,
    write_people_table,
)
from people_lake.fake_people import people_batches
from people_lake.metadata import PREVIEW_ROWS, column_schema, markdown_preview
from people_lake.request import (
    INVOCATION_ID_EXTRA,
    PeopleRequest,
    check_row_limit,
    parse_invocation_id,
    parse_partition_window,
    parse_people_request,
)
from people_lake.settings import FunctionSettings
from people_lake.storage import (
    TableRef,
    check_remote_table_path,
    ensure_allowed,
    lake_storage_client,
    parse_lake_uri,
    table_location,
    table_ref,
)
from people_lake.window import DayWindow

logger = logging.getLogger(__name__)


BATCH_ROWS = 125_000  # rows between progress lines and cancellation checks
READ_BACK_BATCH_ROWS = 250_000


@dataclass(frozen=True)
class Plan:
    """A validated invocation: what to write, where, and under which invocation id.

    ``window`` is the daily partitions replaced (None: an unpartitioned append);
    ``total_rows`` is ``num_rows`` per day times its days.
    """

    request: PeopleRequest
    table: TableRef
    window: DayWindow | None
    invocation_id: str | None
    total_rows: int


def plan_invocation(
    pipes: PipesContext, event: Mapping[str, Any], settings: FunctionSettings
) -> Plan:
    """Validate the event and the Pipes context; refuse targets outside the allowed roots."""
    request = parse_people_request(event, settings.data_lake_uri)
    window = parse_partition_window(pipes)
    total_rows = check_row_limit(request, window, settings.max_rows_per_request)
    invocation_id = parse_invocation_id(pipes)
    lake = parse_lake_uri(request.data_lake_uri)
    location = table_location(lake, to_asset_key_path(pipes.asset_key))
    ensure_allowed(location, settings.allowed_roots)  # the canonical table path, links resolved
    if location.remote:
        check_remote_table_path(location, lake_storage_client())
    table = table_ref(location, settings.storage_emulator_host)
    return Plan(request, table, window, invocation_id, total_rows)


def _day_chunks(plan: Plan) -> Iterator[pl.DataFrame]:
    """Each day's rows (the same as that day alone would get), chunk by chunk."""
    request = plan.request
    for day in plan.window.each_day() if plan.window else [None]:
        for chunk in people_batches(
            request.num_rows,
            seed=request.seed,
            day=day,
            invalid_email_rate=request.invalid_email_rate,
        ):
            yield with_partition(chunk, day)


def _between_batches(
    pipes: PipesContext, plan: Plan, batch: int, rows_so_far: int, cancellation: Cancellation
) -> None:
    """Runs after each batch went to the writer, before the next is made.

    Progress goes to Dagster here (one line per batch). A cancelled request stops here:
    raising aborts the write before its commit, so nothing is written.
    """
    pipes.log.info(f"batch {batch}: {rows_so_far} of {plan.total_rows} rows streamed to Delta")
    cancellation.raise_if_cancelled()


class _CheckedBatches:
    """The batches of one commit attempt, checked and previewed as they pass to the writer.

    A retried commit (a conflict) iterates a new instance: the checks describe exactly the
    rows of the attempt that committed. delta-rs reads the batches in a thread of its own,
    hence the request's cancellation is taken along rather than looked up.
    """

    def __init__(self, pipes: PipesContext, plan: Plan, cancellation: Cancellation) -> None:
        self._pipes, self._plan, self._cancellation = pipes, plan, cancellation
        self.checks = DataChecks()
        self.preview = pl.DataFrame()

    def __iter__(self) -> Iterator[pl.DataFrame]:
        # The generator's small pieces go to the writer as they come (whole batches held about
        # 60 MiB more); a batch (progress line, cancellation check) ends where the next piece
        # would take it past BATCH_ROWS, so small days still share one.
        batch, pending = 0, 0
        for people in _day_chunks(self._plan):
            if pending and pending + people.height > BATCH_ROWS:
                batch, pending = batch + 1, 0
                self._between(batch)
            if self.checks.rows == 0:
                self.preview = people.head(PREVIEW_ROWS)
            self.checks.add(people)
            pending += people.height
            yield people
        if pending:
            self._between(batch + 1)
        # The last moment before delta-rs commits: look at the marker now, not 0.5 s ago.
        # What remains is the window of the commit itself: once it started, it completes.
        self._cancellation.raise_if_cancelled(fresh=True)

    def _between(self, batch: int) -> None:
        _between_batches(self._pipes, self._plan, batch, self.checks.rows, self._cancellation)


def _lookup_in_commit(files: CommitFiles) -> IdLookup:
    """Finds a commit's ids by hash in the table (only needed when hashes collide)."""

    def lookup(hashes: pl.Series) -> pl.Series:
        rows = files.added_rows().select("id")
        return rows.filter(has_id_hash(hashes)).collect(engine="streaming")["id"]

    return lookup


def _ids_beside_commit(files: CommitFiles) -> Iterator[pl.Series]:
    """The ids of the table at a commit's version that the commit did not add, in batches:
    the id check covers the table (one column read; nothing kept but a batch)."""
    rows = files.other_rows().select("id")
    for batch in rows.collect_batches(chunk_size=READ_BACK_BATCH_ROWS):
        yield batch["id"]


def _checks_of_commit(written: TableWrite, files: CommitFiles) -> list[CheckOutcome]:
    """The data checks of the rows a commit added, read back from the table in batches."""
    recorded = written.commit_metadata.get("checks")  # commits of earlier function versions
    if recorded:
        return from_json(recorded)
    checks = DataChecks()
    rows = files.added_rows().select("id", "email")
    for batch in rows.collect_batches(chunk_size=READ_BACK_BATCH_ROWS):
        checks.add(batch)
    return checks.outcomes(_lookup_in_commit(files), _ids_beside_commit(files))


def _preview_of_commit(files: CommitFiles) -> pl.DataFrame:
    """The first rows a commit added, read back (used when nothing was written now)."""
    return files.added_rows().head(PREVIEW_ROWS).collect()


def _asked(plan: Plan) -> str:
    """What the request asks for, as recorded with its commit: a repeat of its invocation
    must ask the same."""
    request = plan.request
    asked = {
        "num_rows": request.num_rows,
        "seed": request.seed,
        "invalid_email_rate": request.invalid_email_rate,
        "partition_window": plan.window.text if plan.window else None,
    }
    return json.dumps(asked, sort_keys=True, separators=(",", ":"))


def _commit_metadata(plan: Plan) -> dict[str, str]:
    """Recorded in the commit (Delta history) next to the invocation id."""
    recorded = {"rows_per_day" if plan.window else "rows": str(plan.request.num_rows)}
    if plan.window:
        recorded["partition_window"] = plan.window.text
    recorded["request"] = _asked(plan)
    return recorded


def _same_request(plan: Plan, written: TableWrite) -> None:
    """Refuse a repeat of an invocation id that asks for other work than its commit did: the
    id was reused for another call (e.g. a step whose calls vary between tries without a
    call_key), and reporting the earlier commit would be a silent success."""
    earlier = written.commit_metadata.get("request")  # None: a commit of an older version
    if earlier is None or earlier == _asked(plan):
        return
    raise RequestError(
        f"invocation {plan.invocation_id} already committed version {written.version} for "
        f"another request ({earlier}); this one asks {_asked(plan)}. Each call needs its own "
        "invocation id (name the calls of a step with call_key)",
        field=INVOCATION_ID_EXTRA,
        status=409,
    )


@dataclass(frozen=True)
class _Outcome:
    written: TableWrite
    files: CommitFiles  # the table at the written version, read once for checks and metadata
    checks: list[CheckOutcome]
    preview: pl.DataFrame


def _earlier(plan: Plan, written: TableWrite) -> _Outcome:
    files = commit_files(plan.table, written.version)
    return _Outcome(written, files, _checks_of_commit(written, files), _preview_of_commit(files))


def _write_once(pipes: PipesContext, plan: Plan) -> _Outcome:
    """Write unless this invocation already did: the write, its checks and a preview."""
    if plan.invocation_id is not None and (done := previous_write(plan.table, plan.invocation_id)):
        _same_request(plan, done)
        pipes.log.info(
            f"invocation {plan.invocation_id} already wrote version {done.version}; "
            "not writing again"
        )
        return _earlier(plan, done)
    cancellation = current_cancellation()
    cancellation.raise_if_cancelled(fresh=True)  # before a new table is created empty
    attempts: list[_CheckedBatches] = []

    def batches() -> _CheckedBatches:
        attempts.append(_CheckedBatches(pipes, plan, cancellation))
        return attempts[-1]

    with cancellation.surfacing():  # delta-rs re-raises the stream's RequestCancelled as its own
        written = write_people_table(
            batches,
            plan.table,
            invocation_id=plan.invocation_id,
            window=plan.window,
            commit_metadata=_commit_metadata(plan),
        )
    if written.repeated:  # a racing copy of this invocation committed first
        _same_request(plan, written)
        pipes.log.info(f"invocation {plan.invocation_id} was committed by a concurrent copy")
        return _earlier(plan, written)
    committed = attempts[-1]
    logger.info("generated %d fake people", committed.checks.rows)  # (in the request's thread)
    files = commit_files(plan.table, written.version)
    checks = committed.checks.outcomes(_lookup_in_commit(files), _ids_beside_commit(files))
    return _Outcome(written, files, checks, committed.preview)


def _materialization_metadata(plan: Plan, outcome: _Outcome) -> dict[str, PipesMetadataValue]:
    written, snapshot = outcome.written, outcome.files.snapshot
    metadata: dict[str, PipesMetadataValue] = {
        "table_uri": {"raw_value": plan.table.uri, "type": "path"},
        "dagster/uri": {"raw_value": plan.table.uri, "type": "text"},
        "dagster/row_count": {"raw_value": snapshot.count(), "type": "int"},
        "dagster/column_schema": column_schema(snapshot.schema()),
        "delta_version": {"raw_value": written.version, "type": "int"},
        "rows_written": {"raw_value": written.rows_written, "type": "int"},
        "repeated_invocation": {"raw_value": written.repeated, "type": "bool"},
        "preview": markdown_preview(outcome.preview),
        "function_version": {"raw_value": __version__, "type": "text"},
    }
    if plan.window is not None:
        metadata |= {
            "partition_window": {"raw_value": plan.window.text, "type": "text"},
            "days": {"raw_value": plan.window.days, "type": "int"},
            "rows_per_day": {"raw_value": plan.request.num_rows, "type": "int"},
        }
    if plan.window is not None:  # Dagster records the materialization for each day of a range
        per_day = written.rows_written // plan.window.days
        metadata["dagster/partition_row_count"] = {"raw_value": per_day, "type": "int"}
    return metadata


def _report(pipes: PipesContext, plan: Plan, outcome: _Outcome) -> None:
    written = outcome.written
    pipes.report_asset_materialization(
        metadata=_materialization_metadata(plan, outcome), data_version=str(written.version)
    )
    checks = [*outcome.checks, check_row_count(written.rows_written, plan.total_rows)]
    for check in checks:
        pipes.report_asset_check(
            check.name, check.passed, severity=check.severity, metadata=check.metadata
        )


def _target(plan: Plan) -> str:
    rows, window = plan.request.num_rows, plan.window
    if window is None:
        return f"{rows} rows to {plan.table.uri}"
    if window.days == 1:
        return f"{rows} rows to {plan.table.uri} (partition {window.start})"
    return (
        f"{rows} rows per day x {window.days} days = {plan.total_rows} rows to "
        f"{plan.table.uri} (partitions {window.text})"
    )


def write_people(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    """Generate people and write them to ``<dl_bucket>/<asset key path>`` in one commit.

    Unpartitioned assets append ``num_rows``; daily partitions (one day or a range) get
    ``num_rows`` per day, replacing exactly those days. A repeat of the same invocation (same
    Dagster run, asset, partitions and call) writes nothing and reports the first.
    """
    plan = plan_invocation(pipes, event, FunctionSettings.from_env())
    pipes.log.info(f"people function {__version__}: writing {_target(plan)}")
    with lake_work():
        outcome = _write_once(pipes, plan)
        written = outcome.written
        pipes.log.info(f"Delta table {plan.table.uri} is at version {written.version}")
        _report(pipes, plan, outcome)
    window = plan.window
    return {
        "table_uri": plan.table.uri,
        "partition": None
        if window is None
        else window.text
        if window.days > 1
        else str(window.start),
        "rows_written": written.rows_written,
        "delta_version": written.version,
        "repeated": written.repeated,
    }
