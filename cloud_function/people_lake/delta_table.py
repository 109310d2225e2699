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
repeat reports what the first attempt wrote; :func:`commit_files` finds that commit's rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import deltalake  # imported before polars anywhere both are used (crash at exit otherwise)
import polars as pl
from arro3.core import RecordBatch, RecordBatchReader, Schema
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties
from deltalake._internal import DeltaFileSystemHandler  # the table's own store (no pyarrow)
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from gcf_pipes import RequestError
from people_lake.storage import DELTA_LOG, TableRef
from people_lake.window import PARTITION_COLUMN, DayWindow

logger = logging.getLogger(__name__)

APP_ID_PREFIX = "dagster-pipes-gcf/"
TXN_VERSION = 1  # one txn per invocation: "done" is version 1
COMMIT_ATTEMPTS = 6
LOG_READS_AT_ONCE = 16  # commit files read in parallel while looking for a repeat's commit
# Times delta-rs rebases a commit over concurrent ones it does not conflict with (appends,
# other days) before giving up; more than the racers one instance group sends at once.
COMMIT_REBASES = 50
# Retention (see README, "Orphans and retention"):
TABLE_CONFIGURATION: Mapping[str, str | None] = {
    # A repeat is recognised for 30 days after its commit (retries come within minutes, a
    # re-execution from failure may come days later); then its txn id is dropped (each txn
    # carries lastUpdated), so the ids do not accumulate.
    "delta.setTransactionRetentionDuration": "interval 30 days",
    # Commit files outlive the txn ids they record: a recognised repeat finds its commit.
    "delta.logRetentionDuration": "interval 60 days",
    # Vacuum keeps every file a version of the last week references (readers of an older
    # snapshot), and every file younger than a week: a running write's (writes take minutes).
    "delta.deletedFileRetentionDuration": "interval 7 days",
}
# The writer of every VACUUM_EVERY-th version vacuums the table (a full vacuum lists it).
VACUUM_EVERY = 100
# Memory of the parquet writers. delta-rs keeps one writer per partition open until the end
# of the write, each holding its unfinished row group and its unfinished file, so a range of
# many days gets smaller row groups and files, and no column gets a dictionary (which held
# the most). Measured peaks (`just bench`; fresh process, generation and checks included):
# 5,000,000 rows in one day about 0.45 GiB with these settings, 1.0 GiB with the defaults;
# 366 days x 13,661 rows about 0.5 GiB, 2.2 GiB with the defaults.
MAX_ROW_GROUP_ROWS = 32 * 1024
BUFFERED_ROWS = 32 * 1024  # row-group rows all open partitions may hold together
MIN_ROW_GROUP_ROWS = 8 * 1024
MAX_FILE_BYTES = 8 * 1024 * 1024  # files of about 250,000 rows
BUFFERED_FILE_BYTES = 64 * 1024 * 1024  # unfinished files of all open partitions together
MIN_FILE_BYTES = 512 * 1024
_NO_DICTIONARY = deltalake.ColumnProperties(dictionary_enabled=False)
_META = "dagster_pipes_gcf."  # prefix of our commitInfo keys
# Rows per Arrow batch handed to delta-rs, which queues batches ahead of its writers
# (measured: 250k-row batches grew by about 150 MiB per million rows; 16k rows peaked 515 MiB
# for 5,000,000 rows over 366 days on gs://, 4k rows 461 MiB, same wall time; on a directory
# 4k rows peaked 368 MiB in one write, 424 MiB over 366 days).
ARROW_BATCH_ROWS = 4_096

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


@dataclass(frozen=True)
class _Commit:
    """One commit as its log file records it: its commitInfo, the txn app ids it set and the
    data files it added (paths relative to the table)."""

    version: int
    info: Mapping[str, Any]
    app_ids: frozenset[str]
    added: frozenset[str] = frozenset()


# delta-rs (1.6) can deadlock when requests of one process use it at once: a call that waits
# for its runtime while holding the GIL (opening a table) meets runtime threads that wait for
# the GIL to read another write's Python row stream. Seen with 20 concurrent writes to gs://.
_LAKE_WORK = threading.Lock()


# delta-rs colours the "↳" lines of its error chains for a terminal (ANSI SGR sequences).
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def without_colour(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _ANSI_ESCAPE.sub("", text)


@contextmanager
def lake_work() -> Iterator[None]:
    """Hold while a request uses delta-rs: one request's lake work at a time per process
    (others wait here, with the GIL released). Its errors leave as plain text: they reach
    the HTTP answer, the Pipes messages and the logs."""
    with _LAKE_WORK:
        try:
            yield
        except Exception as exc:
            _drop_colour(exc)
            raise


def _drop_colour(exc: BaseException) -> None:
    """Strip colour codes from a one-message exception in place (its type and traceback stay)."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (without_colour(exc.args[0]),)


def app_id_for(invocation_id: str) -> str:
    """The Delta transaction app id of one invocation."""
    return APP_ID_PREFIX + invocation_id


def open_table(table: TableRef) -> DeltaTable | None:
    """The table's latest version, or None when there is none yet."""
    if table.is_local and Path(table.uri).exists() and not Path(table.uri).is_dir():
        raise NotADirectoryError(f"{table.uri} exists and is not a directory (not a table)")
    try:  # one look at the log (asking is_deltatable first would read it twice)
        return DeltaTable(table.uri, storage_options=table.storage_options)
    except TableNotFoundError:
        return None


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


def _commit_file(version: int) -> str:
    return f"{DELTA_LOG}/{version:020d}.json"


def _read_commit(log: DeltaFileSystemHandler, version: int) -> _Commit | None:
    """The commit at ``version`` read from its own file, or None when the file is gone (the
    log was cleaned up to there)."""
    try:
        file = log.open_input_file(_commit_file(version))
        text = file.read(file.size())
    except FileNotFoundError:
        return None
    actions = [json.loads(line) for line in text.splitlines() if line.strip()]
    infos = [action["commitInfo"] for action in actions if "commitInfo" in action]
    info: Mapping[str, Any] = infos[0] if infos else {}
    app_ids = frozenset(action["txn"]["appId"] for action in actions if "txn" in action)
    added = frozenset(unquote(action["add"]["path"]) for action in actions if "add" in action)
    return _Commit(version, info, app_ids, added)


def _commits_down_from(table: TableRef, newest: int) -> Iterator[_Commit | None]:
    """The commits ``newest``, ``newest - 1``, ... 0, read a few at once; None for a commit
    whose file is gone (then every older one is gone too).

    Read by version number, not listed: delta-rs (1.6) numbers a history listing from the
    snapshot it loaded, not from what it lists (delta-rs issue 4488), so other writers'
    commits shift a listing's numbers; a commit file's name is its version.
    """
    log = DeltaFileSystemHandler(table.uri, table.storage_options)
    with ThreadPoolExecutor(LOG_READS_AT_ONCE) as pool:
        for top in range(newest, -1, -LOG_READS_AT_ONCE):
            versions = range(top, max(top - LOG_READS_AT_ONCE, -1), -1)
            yield from pool.map(functools.partial(_read_commit, log), versions)


def _find_commit(table: TableRef, app_id: str, newest: int) -> _Commit | None:
    """The commit that recorded the txn ``app_id``, at ``newest`` or below (a version of a
    snapshot holding the txn); None when its file is gone (older than the log retention)."""
    for commit in _commits_down_from(table, newest):
        if commit is None or app_id in commit.app_ids:
            return commit
    return None


def _as_write(table: TableRef, commit: _Commit, *, repeated: bool) -> TableWrite:
    metrics = commit.info.get("operationMetrics") or {}
    ours = {
        key.removeprefix(_META): str(value)
        for key, value in commit.info.items()
        if key.startswith(_META)
    }
    return TableWrite(
        table_uri=table.uri,
        version=commit.version,
        rows_written=int(metrics.get("num_added_rows", ours.get("rows", 0))),
        repeated=repeated,
        commit_metadata=ours,
    )


def _committed(delta: DeltaTable, table: TableRef, invocation_id: str) -> TableWrite | None:
    app_id = app_id_for(invocation_id)
    if (delta.transaction_version(app_id) or 0) < TXN_VERSION:
        return None
    commit = _find_commit(table, app_id, delta.version())
    if commit is None:  # never another commit's rows reported as this invocation's
        raise RequestError(
            f"invocation {invocation_id} already committed to this table, but that commit's "
            "record has expired from the Delta log, so what it wrote cannot be reported; "
            "nothing was written again",
            field="invocation_id",
            status=409,
        )
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


@dataclass(frozen=True, eq=False)
class CommitFiles:
    """The table at one commit's version: the data files that commit added, all the others,
    and the snapshot they were read from (its row count and schema)."""

    table: TableRef
    snapshot: DeltaTable
    added: list[str]
    others: list[str]

    def added_rows(self) -> pl.LazyFrame:
        """The rows the commit added, read lazily."""
        return _scan(self.table, self.added)

    def other_rows(self) -> pl.LazyFrame:
        """The table's rows at the commit's version that the commit did not add, read lazily."""
        return _scan(self.table, self.others)


def _snapshot_at(table: TableRef, version: int) -> DeltaTable | None:
    """The table at ``version``, or None when the log no longer reaches it."""
    try:
        return DeltaTable(table.uri, version=version, storage_options=table.storage_options)
    except TableNotFoundError:
        return None


def commit_files(table: TableRef, version: int) -> CommitFiles:
    """The data files at ``version``: those its commit added, and all the others.

    The commit's own log entry says which files it added, and only ``version`` is loaded: the
    version before it may be gone (a checkpoint at ``version`` lets log cleanup delete the
    entries below it), while a snapshot of ``version`` and its entry stay within retention.
    """
    commit = _read_commit(DeltaFileSystemHandler(table.uri, table.storage_options), version)
    delta = None if commit is None else _snapshot_at(table, version)
    if commit is None or delta is None:
        raise RequestError(
            f"version {version} of {table.uri} has expired from the Delta log, so what its "
            "commit wrote cannot be read back",
            field="invocation_id",
            status=409,
        )
    files = delta.file_uris()
    root = table.uri.rstrip("/") + "/"
    added = [uri for uri in files if unquote(uri.removeprefix(root)) in commit.added]
    if len(added) != len(commit.added):  # never another commit's files taken for its own
        raise RuntimeError(
            f"version {version} of {table.uri} added {len(commit.added)} files, of which "
            f"{len(added)} are in its snapshot"
        )
    mine = set(added)
    return CommitFiles(table, delta, added, [uri for uri in files if uri not in mine])


def _scan(table: TableRef, uris: list[str]) -> pl.LazyFrame:
    if not uris:
        return pl.LazyFrame(schema={"id": pl.String, "email": pl.String})
    return pl.scan_parquet(
        uris,
        storage_options=table.storage_options,
        hive_partitioning=any(f"/{PARTITION_COLUMN}=" in uri for uri in uris),
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
    txn = Transaction(app_id_for(marker), TXN_VERSION, last_updated=_now_ms())
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
            # The snapshot is now at the version delta-rs committed (rebased or not).
            committed_version = snapshot.version()
            break
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise
            pause = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            logger.info("commit conflict (%s); retrying in %.2fs", without_colour(str(exc)), pause)
            time.sleep(pause)
    log = DeltaFileSystemHandler(table.uri, table.storage_options)
    ours = _read_commit(log, committed_version)
    if ours is None or ours.info.get(_META + "marker") != marker:
        raise RuntimeError(f"committed to {table.uri} but cannot find the commit {marker}")
    _vacuum_if_due(table, committed_version)
    return _as_write(table, ours, repeated=False)


def _now_ms() -> int:
    return int(time.time() * 1000)


def vacuum(table: TableRef) -> list[str]:
    """Delete the data files no version within the retention needs: those of cancelled,
    crashed or conflict-retried writes (never committed) and those replaced longer ago.

    Only files older than the table's ``delta.deletedFileRetentionDuration`` (a week) go, so
    neither a reader of a recent version nor a write still running loses a file.
    """
    delta = DeltaTable(table.uri, storage_options=table.storage_options)
    return delta.vacuum(dry_run=False, full=True, enforce_retention_duration=True)


def _vacuum_if_due(table: TableRef, version: int) -> None:
    """Vacuum after every :data:`VACUUM_EVERY`-th version; a failure only postpones it (the
    write itself is committed)."""
    if version % VACUUM_EVERY:
        return
    try:
        deleted = vacuum(table)
    except Exception as exc:  # noqa: BLE001 - maintenance must not fail a committed write
        logger.warning("vacuum after version %d failed (%s)", version, type(exc).__name__)
        return
    logger.info("vacuum after version %d deleted %d unreferenced files", version, len(deleted))
