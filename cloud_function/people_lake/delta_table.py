"""Idempotent, concurrency-safe writes of the people Delta table (local or ``gs://``).

* Safe to retry: each write commits a Delta transaction identifier (``txn`` action) whose app
  id is derived from the caller's invocation id. Before writing, the table's recorded
  version for that app id is looked up; a repeated invocation finds it and writes nothing.
* Two copies of one invocation racing each other cannot both commit either, also on a new
  table: the table is first created empty (one creator wins, the others open it), and every
  data commit is made on the snapshot the txn lookup read. delta-rs checks it against every
  commit since that snapshot and fails it when one carries the same txn app id; the retry
  then finds the first.
* Partitions: a window of days is written with ``mode="overwrite"`` and a predicate on the
  partition column, which replaces exactly those days and leaves the others untouched.
* Concurrency: writers of other partitions (or appends) conflict only at commit time; delta-rs
  rebases such commits itself, and what it cannot rebase (the same days replaced twice) is
  retried here from the top, with the data made afresh.
* Memory: the rows arrive as a stream of batches (an Arrow stream read lazily by delta-rs),
  all written in one commit: nothing is committed unless the whole stream was written.

Every commit records the invocation and the caller's metadata in its ``commitInfo``, so a
repeat reports what the first attempt wrote; :func:`committed_rows` reads that commit's rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deltalake  # imported before polars anywhere both are used (crash at exit otherwise)
import polars as pl
from arro3.core import RecordBatch, RecordBatchReader, Schema
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties
from deltalake.exceptions import CommitFailedError

from gcf_pipes import RequestError
from people_lake.storage import TableRef
from people_lake.window import PARTITION_COLUMN, DayWindow

logger = logging.getLogger(__name__)

APP_ID_PREFIX = "dagster-pipes-gcf/"
TXN_VERSION = 1  # one txn per invocation: "done" is version 1
COMMIT_ATTEMPTS = 6
HISTORY_ATTEMPTS = 20  # listings of a table that other writers keep changing
# Times delta-rs rebases a commit over concurrent ones it does not conflict with (appends,
# other days) before giving up; more than the racers one instance group sends at once.
COMMIT_REBASES = 50
# Keep the recorded txn ids a month (retries come within minutes), not forever.
TABLE_CONFIGURATION: Mapping[str, str | None] = {
    "delta.setTransactionRetentionDuration": "interval 30 days"
}
# Memory of the parquet writers. delta-rs keeps one writer per partition open until the end
# of the write, each holding its unfinished row group and its unfinished file, so a range of
# many days gets smaller row groups and files, and no column gets a dictionary (which held
# the most). Measured peaks (`just bench`; fresh process, generation and checks included):
# 5,000,000 rows in one day about 0.6 GiB with these settings, 1.0 GiB with the defaults;
# 366 days x 13,661 rows about 0.6 GiB, 2.2 GiB with the defaults.
MAX_ROW_GROUP_ROWS = 128 * 1024
BUFFERED_ROWS = 128 * 1024  # row-group rows all open partitions may hold together
MIN_ROW_GROUP_ROWS = 8 * 1024
MAX_FILE_BYTES = 32 * 1024 * 1024  # files of about 1,000,000 rows
BUFFERED_FILE_BYTES = 64 * 1024 * 1024  # unfinished files of all open partitions together
MIN_FILE_BYTES = 512 * 1024
_NO_DICTIONARY = deltalake.ColumnProperties(dictionary_enabled=False)
_META = "dagster_pipes_gcf."  # prefix of our commitInfo keys
# Rows per Arrow batch handed to delta-rs (measured: 16k rows keep 5,000,000 rows of people
# near the memory of 1,000,000; 250k-row batches grew by about 150 MiB per million rows).
ARROW_BATCH_ROWS = 16_384

# The rows of one write: a DataFrame, or a function making a fresh stream of batches (called
# once per commit attempt, since a retried commit writes its data again).
Rows = pl.DataFrame | Callable[[], Iterable[pl.DataFrame]]


@dataclass(frozen=True)
class TableWrite:
    """Outcome of one (possibly repeated) write.

    Attributes:
        version: the table version this invocation's commit created.
        rows_written: rows that commit added.
        repeated: True when an earlier attempt of this invocation had already committed
            (nothing was written now; the values describe that earlier commit).
        commit_metadata: what the committing attempt recorded (see :func:`write_people_table`).
    """

    table_uri: str
    version: int
    rows_written: int
    repeated: bool = False
    commit_metadata: Mapping[str, str] = field(default_factory=dict)


def app_id_for(invocation_id: str) -> str:
    """The Delta transaction app id of one invocation."""
    return APP_ID_PREFIX + invocation_id


def open_table(table: TableRef, version: int | None = None) -> DeltaTable | None:
    """The table (at ``version``, else the latest), or None when there is none yet."""
    if table.is_local and Path(table.uri).exists() and not Path(table.uri).is_dir():
        raise NotADirectoryError(f"{table.uri} exists and is not a directory (not a table)")
    if not DeltaTable.is_deltatable(table.uri, storage_options=table.storage_options):
        return None
    return DeltaTable(table.uri, version=version, storage_options=table.storage_options)


def _check_layout(snapshot: DeltaTable, window: DayWindow | None) -> None:
    """A table keeps the layout it was made with: days go only to a table partitioned by day,
    and an unpartitioned append only to an unpartitioned table (delta-rs would crash)."""
    by_day = snapshot.metadata().partition_columns == [PARTITION_COLUMN]
    if by_day != (window is not None):
        table_kind = "is partitioned by day" if by_day else "is not partitioned by day"
        raise RequestError(
            f"this asset's table {table_kind}, unlike the request (partition_key_range)",
            field="partition_key_range",
        )  # 400, not 409: a 409 means the orchestrator cancelled the request


def create_table(table: TableRef, schema: Schema, *, partitioned: bool) -> DeltaTable:
    """Create the table empty, or open it when it exists (also when a racing creator won).

    Creation never retries its commit: delta-rs would otherwise rebase a losing creation
    onto the winner's table as a second commit. One winner per version relies on the store's
    create-if-absent put of the log entry (a rename locally, a generation precondition on
    GCS); the local tests prove it on directories only, since delta-rs cannot write gs://
    tables to the local GCS emulator (its uploads are refused there).
    """
    if table.is_local:
        Path(table.uri).mkdir(parents=True, exist_ok=True)
    try:
        return DeltaTable.create(
            table.uri,
            schema,
            mode="ignore",
            partition_by=[PARTITION_COLUMN] if partitioned else None,
            configuration=TABLE_CONFIGURATION,
            storage_options=table.storage_options,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except CommitFailedError:  # another writer created it between our look and our commit
        created = open_table(table)
        if created is None:
            raise
        return created


def _history(table: TableRef, limit: int | None, *, numbered: bool) -> list[dict[str, Any]]:
    """The table's newest ``limit`` commits, newest first; ``numbered``: each with its true
    ``version`` (otherwise the numbers may be wrong).

    delta-rs (1.6) lists the commits from the store's newest but numbers them down from the
    loaded snapshot's version (delta-rs issue 4488): a commit landing between the load and
    the listing shifts every number, even below zero. A numbered listing is kept only when
    the newest version is the same before and after it.
    """
    if not numbered:
        return DeltaTable(table.uri, storage_options=table.storage_options).history(limit)
    for _ in range(HISTORY_ATTEMPTS):
        delta = DeltaTable(table.uri, storage_options=table.storage_options)
        commits = delta.history(limit)
        latest = DeltaTable(table.uri, storage_options=table.storage_options).version()
        if latest == delta.version():
            return commits
    raise RuntimeError(f"{table.uri} kept changing while its history was read")


def _find_commit(table: TableRef, marker: str, *, numbered: bool) -> dict[str, Any] | None:
    """The newest commit whose commitInfo carries ``marker`` (recent commits first)."""
    for limit in (50, None):
        for commit in _history(table, limit, numbered=numbered):
            if commit.get(_META + "marker") == marker:
                return commit
    return None


def _as_write(
    table: TableRef, commit: Mapping[str, Any], *, repeated: bool, version: int | None = None
) -> TableWrite:
    metrics = commit.get("operationMetrics") or {}
    ours = {
        key.removeprefix(_META): str(value)
        for key, value in commit.items()
        if key.startswith(_META)
    }
    return TableWrite(
        table_uri=table.uri,
        version=int(commit["version"]) if version is None else version,
        rows_written=int(metrics.get("num_added_rows", ours.get("rows", 0))),
        repeated=repeated,
        commit_metadata=ours,
    )


def _committed(delta: DeltaTable, table: TableRef, invocation_id: str) -> TableWrite | None:
    if (delta.transaction_version(app_id_for(invocation_id)) or 0) < TXN_VERSION:
        return None
    commit = _find_commit(table, invocation_id, numbered=True)
    if commit is None:  # txn recorded but its commitInfo is gone (log cleaned up)
        return TableWrite(table.uri, delta.version(), 0, repeated=True)
    return _as_write(table, commit, repeated=True)


def _own_commit(table: TableRef, marker: str, write_id: str) -> TableWrite | None:
    """This call's commit of ``marker`` (its invocation; None: none, or a racing copy's)."""
    done = previous_write(table, marker)
    if done is None or done.commit_metadata.get("write") != write_id:
        return None
    return dataclasses.replace(done, repeated=False)


def previous_write(table: TableRef, invocation_id: str) -> TableWrite | None:
    """What an earlier attempt of ``invocation_id`` committed, or None if it did not commit."""
    delta = open_table(table)
    return None if delta is None else _committed(delta, table, invocation_id)


def _file_uris(table: TableRef, version: int) -> list[str]:
    delta = open_table(table, version) if version >= 0 else None
    return [] if delta is None else delta.file_uris()


def committed_rows(table: TableRef, version: int) -> pl.LazyFrame:
    """The rows the commit at ``version`` added: its own data files, read lazily."""
    before = set(_file_uris(table, version - 1))
    added = [uri for uri in _file_uris(table, version) if uri not in before]
    if not added:
        return pl.LazyFrame(schema={"id": pl.String, "email": pl.String})
    return pl.scan_parquet(
        added,
        storage_options=table.storage_options,
        hive_partitioning=any(f"/{PARTITION_COLUMN}=" in uri for uri in added),
    )


def with_partition(df: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """``df`` with the partition column set to ``day`` (unchanged without a day)."""
    if day is None:
        return df
    return df.with_columns(pl.lit(day, dtype=pl.Date).alias(PARTITION_COLUMN))


def _record_batches(frames: Iterable[pl.DataFrame]) -> Iterator[RecordBatch]:
    """Small Arrow batches: delta-rs queues a number of batches ahead of its parquet writers,
    so the batch size, not the total, bounds what waits in memory."""
    for frame in frames:
        for offset in range(0, frame.height, ARROW_BATCH_ROWS):
            yield from RecordBatchReader.from_stream(frame.slice(offset, ARROW_BATCH_ROWS))


def _arrow_stream(rows: Rows) -> RecordBatchReader:
    """A lazily read Arrow stream of ``rows`` (its schema is the first batch's)."""
    batches = _record_batches([rows] if isinstance(rows, pl.DataFrame) else rows())
    first = next(batches, None)
    if first is None:
        raise ValueError("nothing to write: the rows are empty")
    return RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))


def _commit_once(
    stream: RecordBatchReader,
    snapshot: DeltaTable,
    window: DayWindow | None,
    commit: Mapping[str, Any],
) -> None:
    """Write on top of ``snapshot``: the version the txn check read.

    Committing on the checked snapshot is what makes a racing copy of the same invocation
    (or a racing replace of the same days) fail: delta-rs checks the commit against every
    commit made since that snapshot.
    """
    options: dict[str, Any] = {
        "commit_properties": CommitProperties(**commit, max_commit_retries=COMMIT_REBASES),
        **_writer_options(window.days if window else 1),
    }
    if window is None:
        deltalake.write_deltalake(snapshot, stream, mode="append", **options)
        return
    deltalake.write_deltalake(
        snapshot, stream, mode="overwrite", predicate=window.predicate, **options
    )


def _writer_options(partitions: int) -> dict[str, Any]:
    """Row-group and file sizes that keep ``partitions`` open writers within the budgets."""
    row_group = max(MIN_ROW_GROUP_ROWS, min(MAX_ROW_GROUP_ROWS, BUFFERED_ROWS // partitions))
    file_bytes = max(MIN_FILE_BYTES, min(MAX_FILE_BYTES, BUFFERED_FILE_BYTES // partitions))
    properties = WriterProperties(
        max_row_group_size=row_group,
        compression="SNAPPY",
        default_column_properties=_NO_DICTIONARY,
    )
    return {"writer_properties": properties, "target_file_size": file_bytes}


def write_people_table(
    rows: Rows,
    table: TableRef,
    *,
    invocation_id: str | None,
    window: DayWindow | None = None,
    commit_metadata: Mapping[str, str] | None = None,
) -> TableWrite:
    """Append ``rows`` (or replace the days of ``window`` with them) once per ``invocation_id``.

    With a ``window``, every row must hold one of its days in :data:`PARTITION_COLUMN` (see
    :func:`with_partition`); delta-rs refuses the write otherwise. All rows go into one
    commit. Without an invocation id the write is not deduplicated. ``commit_metadata`` is
    stored in the commit and returned on a repeat.
    """
    marker = invocation_id or f"unkeyed-{uuid.uuid4()}"  # finds the commit afterwards
    recorded = {_META + key: value for key, value in (commit_metadata or {}).items()}
    # Tells this call's own commit from a copy's: a commit whose answer was lost (a reset)
    # is retried by the store client, meets its own log entry and fails as a conflict.
    write_id = uuid.uuid4().hex
    commit: dict[str, Any] = {
        "custom_metadata": {**recorded, _META + "marker": marker, _META + "write": write_id}
    }
    # An unkeyed write gets a txn of its own too: delta-rs then refuses to rebase a commit
    # that already landed (its answer lost) as a second commit of the same files.
    txn = Transaction(app_id=app_id_for(marker), version=TXN_VERSION)
    commit["app_transactions"] = [txn]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        if attempt > 1 and (mine := _own_commit(table, marker, write_id)):
            return mine  # checked before the rows are made again: the committed ones stand
        stream = _arrow_stream(rows)
        if window is not None and PARTITION_COLUMN not in stream.schema.names:
            raise ValueError(f"partitioned writes need the {PARTITION_COLUMN!r} column")
        snapshot = open_table(table)
        if snapshot is None:  # created empty first, so that the data commit below is checked
            snapshot = create_table(table, stream.schema, partitioned=window is not None)
        _check_layout(snapshot, window)
        if invocation_id and (done := _committed(snapshot, table, invocation_id)):
            logger.info("invocation %s already committed version %d", marker, done.version)
            return done
        try:
            _commit_once(stream, snapshot, window, commit)
            # The snapshot is now at the version delta-rs committed (rebased or not): exact,
            # unlike the numbers of a listing, which is read below for the metadata only.
            committed_version = snapshot.version()
            break
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise
            pause = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            logger.info("commit conflict (%s); retrying in %.2fs", exc, pause)
            time.sleep(pause)
    ours = _find_commit(table, marker, numbered=False)
    if ours is None:
        raise RuntimeError(f"committed to {table.uri} but cannot find the commit {marker}")
    return _as_write(table, ours, repeated=False, version=committed_version)
