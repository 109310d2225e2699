"""Idempotent, concurrency-safe writes of the people Delta table (local or ``gs://``).

* Safe to retry: each write commits a Delta transaction identifier (``txn`` action) whose app
  id is derived from the caller's invocation id. Before writing, the table's recorded
  version for that app id is looked up; a repeated invocation finds it and writes nothing.
  Two copies of one invocation racing each other cannot both commit either: delta-rs fails
  the second with a concurrent-transaction conflict, and the retry then finds the first.
* Partitions: a daily partition is written with ``mode="overwrite"`` and a predicate on the
  partition column, which replaces exactly that day and leaves the others untouched.
* Concurrency: writers of other partitions (or appends) conflict only at commit time; delta-rs
  rebases such commits itself, and what it cannot rebase (a table created concurrently, the
  same partition replaced twice) is retried here from the top.

Every commit records the invocation, the rows and the data-quality outcome in its
``commitInfo``, so a repeat reports exactly what the first attempt wrote.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deltalake  # imported before polars anywhere both are used (crash at exit otherwise)
import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties
from deltalake.exceptions import CommitFailedError

from people_lake.storage import TableRef

logger = logging.getLogger(__name__)

PARTITION_COLUMN = "event_date"
APP_ID_PREFIX = "dagster-pipes-gcf/"
TXN_VERSION = 1  # one txn per invocation: "done" is version 1
COMMIT_ATTEMPTS = 6
# Keep the recorded txn ids a month (retries come within minutes), not forever.
TABLE_CONFIGURATION: Mapping[str, str | None] = {
    "delta.setTransactionRetentionDuration": "interval 30 days"
}
# 128k-row groups: fast writes, and about 100 MiB less peak memory than one huge group.
WRITER_PROPERTIES = WriterProperties(max_row_group_size=128 * 1024, compression="SNAPPY")
_META = "dagster_pipes_gcf."  # prefix of our commitInfo keys


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


def open_table(table: TableRef) -> DeltaTable | None:
    """The table, or None when there is none yet."""
    if table.is_local and Path(table.uri).exists() and not Path(table.uri).is_dir():
        raise NotADirectoryError(f"{table.uri} exists and is not a directory (not a table)")
    if not DeltaTable.is_deltatable(table.uri, storage_options=table.storage_options):
        return None
    return DeltaTable(table.uri, storage_options=table.storage_options)


def _find_commit(delta: DeltaTable, marker: str) -> dict[str, Any] | None:
    """The newest commit whose commitInfo carries ``marker`` (recent commits first)."""
    for limit in (50, None):
        for commit in delta.history(limit):
            if commit.get(_META + "marker") == marker:
                return commit
    return None


def _as_write(table: TableRef, commit: Mapping[str, Any], *, repeated: bool) -> TableWrite:
    metrics = commit.get("operationMetrics") or {}
    ours = {
        key.removeprefix(_META): str(value)
        for key, value in commit.items()
        if key.startswith(_META)
    }
    return TableWrite(
        table_uri=table.uri,
        version=int(commit["version"]),
        rows_written=int(metrics.get("num_added_rows", ours.get("rows", 0))),
        repeated=repeated,
        commit_metadata=ours,
    )


def _committed(delta: DeltaTable, table: TableRef, invocation_id: str) -> TableWrite | None:
    if (delta.transaction_version(app_id_for(invocation_id)) or 0) < TXN_VERSION:
        return None
    commit = _find_commit(delta, invocation_id)
    if commit is None:  # txn recorded but its commitInfo is gone (log cleaned up)
        return TableWrite(table.uri, delta.version(), 0, repeated=True)
    return _as_write(table, commit, repeated=True)


def previous_write(table: TableRef, invocation_id: str) -> TableWrite | None:
    """What an earlier attempt of ``invocation_id`` committed, or None if it did not commit."""
    delta = open_table(table)
    return None if delta is None else _committed(delta, table, invocation_id)


def _commit_once(
    df: pl.DataFrame,
    table: TableRef,
    snapshot: DeltaTable | None,
    day: dt.date | None,
    commit: Mapping[str, Any],
) -> None:
    """Write on top of ``snapshot`` (the version the txn check read), or create the table.

    Committing on the checked snapshot is what makes a racing copy of the same invocation
    (or a racing replace of the same partition) fail: delta-rs checks the commit against
    every commit made since that snapshot. A creating write has no snapshot, and delta-rs
    would rebase it onto a concurrent creation unchecked, so it gets no commit retries.
    """
    options: dict[str, Any] = {"writer_properties": WRITER_PROPERTIES}
    if snapshot is None:
        if table.is_local:
            Path(table.uri).mkdir(parents=True, exist_ok=True)
        options |= {
            "configuration": TABLE_CONFIGURATION,
            "storage_options": table.storage_options,
            "partition_by": [PARTITION_COLUMN] if day is not None else None,
            "commit_properties": CommitProperties(**commit, max_commit_retries=0),
        }
    else:
        options["commit_properties"] = CommitProperties(**commit)
    target: DeltaTable | str = table.uri if snapshot is None else snapshot
    if day is None:
        deltalake.write_deltalake(target, df, mode="append", **options)
        return
    deltalake.write_deltalake(
        target,
        df,
        mode="overwrite",
        predicate=f"{PARTITION_COLUMN} = '{day.isoformat()}'",  # a date: nothing to escape
        **options,
    )


def with_partition(df: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """``df`` with the partition column set to ``day`` (unchanged without a day)."""
    if day is None:
        return df
    return df.with_columns(pl.lit(day, dtype=pl.Date).alias(PARTITION_COLUMN))


def write_people_table(
    df: pl.DataFrame,
    table: TableRef,
    *,
    invocation_id: str | None,
    day: dt.date | None = None,
    commit_metadata: Mapping[str, str] | None = None,
) -> TableWrite:
    """Append ``df`` (or replace partition ``day`` with it) once per ``invocation_id``.

    With a ``day``, ``df`` must hold it in :data:`PARTITION_COLUMN` (see
    :func:`with_partition`). Without an invocation id the write is not deduplicated.
    ``commit_metadata`` is stored in the commit and returned on a repeat.
    """
    if day is not None and PARTITION_COLUMN not in df.columns:
        raise ValueError(f"partitioned writes need the {PARTITION_COLUMN!r} column")
    marker = invocation_id or f"unkeyed-{uuid.uuid4()}"  # finds the commit afterwards
    recorded = {_META + key: value for key, value in (commit_metadata or {}).items()}
    commit: dict[str, Any] = {
        "custom_metadata": {**recorded, _META + "marker": marker, _META + "rows": str(df.height)},
    }
    if invocation_id:
        txn = Transaction(app_id=app_id_for(invocation_id), version=TXN_VERSION)
        commit["app_transactions"] = [txn]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        snapshot = open_table(table)
        if invocation_id and snapshot and (done := _committed(snapshot, table, invocation_id)):
            logger.info("invocation %s already committed version %d", marker, done.version)
            return done
        try:
            _commit_once(df, table, snapshot, day, commit)
            break
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise
            pause = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            logger.info("commit conflict (%s); retrying in %.2fs", exc, pause)
            time.sleep(pause)
    delta = DeltaTable(table.uri, storage_options=table.storage_options)
    ours = _find_commit(delta, marker)
    if ours is None:
        raise RuntimeError(f"committed to {table.uri} but cannot find the commit {marker}")
    return _as_write(table, ours, repeated=False)
