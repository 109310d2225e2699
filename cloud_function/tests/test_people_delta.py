"""Unit tests of the Delta writes: idempotent per invocation, day windows, streams, races."""

import datetime as dt
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import deltalake
import polars as pl
import pytest
from deltalake.exceptions import CommitFailedError

from gcf_pipes import RequestError
from people_lake import delta_table
from people_lake.delta_table import (
    PARTITION_COLUMN,
    app_id_for,
    commit_files,
    previous_write,
    with_partition,
    write_people_table,
)
from people_lake.fake_people import generate_people
from people_lake.storage import TableRef
from people_lake.window import DayWindow

DAY = dt.date(2024, 5, 1)
RACERS = 20


def people(n: int, seed: int = 1, day: dt.date | None = None) -> pl.DataFrame:
    return with_partition(generate_people(n, seed=seed, day=day), day)


def counts_by_day(uri: str) -> dict[str, int]:
    table = pl.read_delta(uri).group_by(PARTITION_COLUMN).len()
    return {str(day): n for day, n in table.iter_rows()}


def data_commits(uri: str) -> list[dict[str, object]]:
    """The commits that wrote rows (not the one creating the empty table)."""
    return [c for c in deltalake.DeltaTable(uri).history() if c["operation"] != "CREATE TABLE"]


def race(write: Callable[[int], object], racers: int = RACERS) -> list[object]:
    """Run ``write(0)`` .. ``write(racers - 1)`` in threads released at the same moment."""
    start = threading.Barrier(racers)
    outcomes: list[object] = [None] * racers

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = write(i)
        except BaseException as exc:  # noqa: BLE001 - returned for the assertion
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_the_same_invocation_is_written_once(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    first = write_people_table(people(10), table, invocation_id="a", commit_metadata={"k": "v"})
    again = write_people_table(people(10, seed=2), table, invocation_id="a")
    other = write_people_table(people(5), table, invocation_id="b")

    # version 0 is the empty table's creation; every data commit is made on a snapshot
    assert (first.version, first.rows_written, first.repeated) == (1, 10, False)
    assert (again.version, again.rows_written, again.repeated) == (1, 10, True)
    assert again.commit_metadata["k"] == "v"
    assert (other.version, other.repeated) == (2, False)
    assert pl.read_delta(table.uri).height == 15
    delta = deltalake.DeltaTable(table.uri)
    assert delta.transaction_version(app_id_for("a")) == 1
    assert previous_write(table, "b") is not None and previous_write(table, "c") is None


def test_without_an_invocation_id_every_call_appends(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    write_people_table(people(3), table, invocation_id=None)
    second = write_people_table(people(3), table, invocation_id=None)
    assert (second.version, second.repeated) == (2, False)
    assert pl.read_delta(table.uri).height == 6


def test_a_partition_write_replaces_only_that_day(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "daily"))
    next_day = DAY + dt.timedelta(days=1)
    write_people_table(people(4, day=DAY), table, invocation_id="d1", window=DayWindow.of(DAY))
    write_people_table(
        people(6, day=next_day), table, invocation_id="d2", window=DayWindow.of(next_day)
    )
    before = pl.read_delta(table.uri).filter(pl.col(PARTITION_COLUMN) == next_day)["id"].sort()

    replaced = write_people_table(
        people(9, seed=7, day=DAY), table, invocation_id="d3", window=DayWindow.of(DAY)
    )

    assert replaced.rows_written == 9
    assert counts_by_day(table.uri) == {str(DAY): 9, str(next_day): 6}
    after = pl.read_delta(table.uri).filter(pl.col(PARTITION_COLUMN) == next_day)["id"].sort()
    assert after.equals(before)
    assert deltalake.DeltaTable(table.uri).metadata().partition_columns == [PARTITION_COLUMN]


def test_partitioned_writes_need_the_partition_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=PARTITION_COLUMN):
        write_people_table(
            people(2), TableRef(str(tmp_path / "t")), invocation_id="x", window=DayWindow.of(DAY)
        )


def test_concurrent_writers_of_one_new_table_all_succeed(tmp_path: Path) -> None:
    """Creating the table, different days and the same day at once: all commit."""
    table = TableRef(str(tmp_path / "daily"))
    days = [DAY + dt.timedelta(days=i % 4) for i in range(8)]  # every day written twice
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            write_people_table(
                people(5 + i, day=days[i]),
                table,
                invocation_id=f"w{i}",
                window=DayWindow.of(days[i]),
            )
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(days))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    counts = counts_by_day(table.uri)
    assert set(counts) == {str(day) for day in set(days)}
    for i in range(4):  # each day holds exactly one of its two writes, never both
        assert counts[str(days[i])] in {5 + i, 5 + i + 4}
    assert len(data_commits(table.uri)) == len(days)


def test_concurrent_copies_of_one_invocation_commit_once(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    write_people_table(people(1), table, invocation_id="seed")  # the table exists
    results = []

    def write() -> None:
        results.append(write_people_table(people(7), table, invocation_id="dup"))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert pl.read_delta(table.uri).height == 8
    assert sorted(result.repeated for result in results) == [False, True, True, True]
    assert len({result.version for result in results}) == 1


def test_a_commit_that_keeps_failing_raises_after_the_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def conflict(*args: object, **kwargs: object) -> None:
        attempts.append(1)
        raise CommitFailedError("always")

    monkeypatch.setattr(delta_table, "_commit_once", conflict)
    monkeypatch.setattr(delta_table.time, "sleep", lambda _: None)
    with pytest.raises(CommitFailedError):
        write_people_table(people(1), TableRef(str(tmp_path / "t")), invocation_id="x")
    assert len(attempts) == delta_table.COMMIT_ATTEMPTS


@pytest.mark.parametrize("window", [None, DayWindow.of(DAY)], ids=["append", "partition"])
def test_racing_first_writes_of_one_invocation_commit_once(
    tmp_path: Path, window: DayWindow | None
) -> None:
    """Copies of one invocation racing to create a new table: one data commit, no double rows."""
    table = TableRef(str(tmp_path / "people"))
    rows = people(11, day=window.start if window else None)

    outcomes = race(lambda i: write_people_table(rows, table, invocation_id="one", window=window))

    writes = [o for o in outcomes if isinstance(o, delta_table.TableWrite)]
    assert len(writes) == RACERS, [o for o in outcomes if o not in writes]
    assert [w.repeated for w in writes].count(False) == 1
    assert len({w.version for w in writes}) == 1
    assert len(data_commits(table.uri)) == 1
    assert pl.read_delta(table.uri).height == 11


def test_racing_first_writes_of_distinct_invocations_all_commit(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))

    outcomes = race(lambda i: write_people_table(people(3, seed=i), table, invocation_id=f"i{i}"))

    writes = [o for o in outcomes if isinstance(o, delta_table.TableWrite) and not o.repeated]
    assert len(writes) == RACERS, outcomes
    assert sorted(w.version for w in writes) == list(range(1, RACERS + 1))
    assert all(commit_files(table, w.version).added_rows().collect().height == 3 for w in writes)
    assert len(data_commits(table.uri)) == RACERS
    assert pl.read_delta(table.uri).height == 3 * RACERS


def append_one_row(uri: str, seed: int = 0) -> None:
    """Another writer's commit (no invocation id): the cheapest commit there is."""
    deltalake.write_deltalake(uri, people(1, seed=seed), mode="append")


def test_repeats_looked_up_while_other_writers_commit_report_the_first_write(
    tmp_path: Path,
) -> None:
    """A busy backfill: two writers keep committing while retries look up their commits.
    Each lookup once re-listed the history until it held still, and gave up (500)."""
    table = TableRef(str(tmp_path / "people"))
    ours = write_people_table(people(5), table, invocation_id="ours")
    for _ in range(60):  # the invocation's commit lies deep in the history
        append_one_row(table.uri)
    stop = threading.Event()
    started = threading.Barrier(3)  # both writers have committed once, the lookups begin

    def keep_committing() -> None:
        append_one_row(table.uri)
        started.wait()
        while not stop.is_set():
            append_one_row(table.uri)

    def version() -> int:
        return deltalake.DeltaTable(table.uri).version()

    with ThreadPoolExecutor(2) as writers:
        committing = [writers.submit(keep_committing) for _ in range(2)]
        started.wait(timeout=60)
        before = version()
        try:
            rs = [write_people_table(people(5), table, invocation_id="ours") for _ in range(5)]
        finally:
            after = version()
            stop.set()
        for writer in committing:
            writer.result()

    assert after > before  # other writers committed while the repeats looked
    reported = {(r.version, r.rows_written, r.repeated, r.commit_metadata["marker"]) for r in rs}
    assert reported == {(ours.version, 5, True, "ours")}
    ours_rows = pl.col("id").is_in(people(5)["id"].implode())
    assert pl.read_delta(table.uri).filter(ours_rows).height == 5  # written once


def test_commits_landing_while_the_log_is_read_do_not_shift_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commit files are read by version number: what lands meanwhile changes nothing. (A
    history listing numbered from its snapshot once made a write report version -1.)"""
    table = TableRef(str(tmp_path / "people"))
    read_commit = delta_table._read_commit
    landed: list[int] = []

    def read_while_a_commit_lands(log: Any, version: int) -> Any:
        if len(landed) < 3:  # the first reads each see another writer's commit land
            landed.append(version)
            append_one_row(table.uri, seed=len(landed))
        return read_commit(log, version)

    first = write_people_table(people(4), table, invocation_id="first")
    append_one_row(table.uri)
    monkeypatch.setattr(delta_table, "_read_commit", read_while_a_commit_lands)
    ours = write_people_table(people(5), table, invocation_id="ours")
    again = write_people_table(people(5), table, invocation_id="ours")
    earlier = previous_write(table, "first")
    monkeypatch.undo()

    assert len(landed) == 3
    assert (first.version, ours.version) == (1, 3) and ours.rows_written == 5
    assert (again.version, again.rows_written, again.repeated) == (3, 5, True)
    assert earlier is not None and (earlier.version, earlier.rows_written) == (1, 4)
    commits = {c["version"]: c for c in deltalake.DeltaTable(table.uri).history()}
    assert commits[ours.version]["dagster_pipes_gcf.marker"] == "ours"
    assert commit_files(table, ours.version).added_rows().collect().height == 5


def test_a_window_of_days_is_replaced_in_one_commit(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "daily"))
    around = [DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=3)]
    for day in around:
        write_people_table(
            people(2, day=day), table, invocation_id=f"{day}", window=DayWindow.of(day)
        )
    window = DayWindow(DAY, DAY + dt.timedelta(days=2))
    rows = pl.concat([people(4 + i, day=day) for i, day in enumerate(window.each_day())])

    written = write_people_table(rows, table, invocation_id="week", window=window)

    assert written.rows_written == 4 + 5 + 6 and len(data_commits(table.uri)) == 3
    expected = {str(day): 2 for day in around} | {
        str(day): 4 + i for i, day in enumerate(window.each_day())
    }
    assert counts_by_day(table.uri) == expected
    added = commit_files(table, written.version).added_rows().collect()
    assert sorted(added["id"]) == sorted(rows["id"])  # the commit's own rows, no neighbours
    assert set(added[PARTITION_COLUMN].cast(pl.String)) == {str(d) for d in window.each_day()}


def test_rows_outside_the_window_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "daily"))
    stray = people(3, day=DAY + dt.timedelta(days=1))
    with pytest.raises(Exception, match="failed validation"):
        write_people_table(stray, table, invocation_id="x", window=DayWindow.of(DAY))
    assert data_commits(table.uri) == []


def test_a_stream_of_batches_is_one_commit(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    made: list[int] = []

    def batches() -> Iterator[pl.DataFrame]:
        for i in range(5):
            made.append(i)
            yield people(100, seed=i)

    written = write_people_table(batches, table, invocation_id="stream")

    assert made == [0, 1, 2, 3, 4]
    assert written.rows_written == 500 and len(data_commits(table.uri)) == 1
    assert commit_files(table, written.version).added_rows().collect().height == 500


def test_a_stream_that_fails_midway_commits_nothing(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    write_people_table(people(2), table, invocation_id="before")

    def batches() -> Iterator[pl.DataFrame]:
        yield people(100)
        raise RuntimeError("cancelled between batches")

    with pytest.raises(Exception, match="cancelled between batches"):
        write_people_table(batches, table, invocation_id="broken")

    assert len(data_commits(table.uri)) == 1 and pl.read_delta(table.uri).height == 2
    assert previous_write(table, "broken") is None


def test_the_arrow_stream_makes_batches_only_as_they_are_read() -> None:
    """What bounds memory: delta-rs pulls the batches one by one, none is made ahead."""
    made: list[int] = []

    def batches() -> Iterator[pl.DataFrame]:
        for i in range(50):
            made.append(i)
            yield people(10, seed=i)

    stream = delta_table._arrow_stream(batches)
    assert made == [0]  # the first batch gives the schema
    stream.read_next_batch()
    stream.read_next_batch()
    assert made == [0, 1]


WEEK_AND_A_DAY = 8 * 24 * 3600


def age(path: Path, seconds: float = WEEK_AND_A_DAY) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def data_files(uri: str) -> set[Path]:
    return set(Path(uri).rglob("*.parquet"))


def test_vacuum_deletes_unreferenced_files_once_older_than_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer of every VACUUM_EVERY-th version vacuums. Gone: what a crashed, cancelled
    or conflict-retried write left (a data file no commit references) once older than a
    week. Kept: a running write's fresh files, the live files however old, and the files a
    replace removed less than a week ago (a reader of the older version still reads them)."""
    monkeypatch.setattr(delta_table, "VACUUM_EVERY", 3)
    table = TableRef(str(tmp_path / "daily"))
    write_people_table(people(4, day=DAY), table, invocation_id="v1", window=DayWindow.of(DAY))
    (replaced,) = data_files(table.uri)
    write_people_table(
        people(6, seed=2, day=DAY), table, invocation_id="v2", window=DayWindow.of(DAY)
    )
    live = data_files(table.uri) - {replaced}
    left_behind = age(shutil.copy(replaced, replaced.with_name("part-00000-crashed.parquet")))
    running = Path(shutil.copy(replaced, tmp_path / "daily" / "part-00000-running.parquet"))
    for path in (*live, replaced):
        age(path)
    assert len(data_commits(table.uri)) == 2  # version 2: no vacuum due yet
    assert left_behind.exists()

    next_day = DAY + dt.timedelta(days=1)
    third = write_people_table(
        people(3, seed=3, day=next_day), table, invocation_id="v3", window=DayWindow.of(next_day)
    )

    assert third.version == 3
    assert not left_behind.exists()
    assert {replaced, running} | live <= data_files(table.uri)
    assert pl.read_delta(table.uri, version=1).height == 4  # the replaced version still reads
    assert counts_by_day(table.uri) == {str(DAY): 6, str(next_day): 3}
    operations = [c["operation"] for c in deltalake.DeltaTable(table.uri).history()]
    assert operations[:2] == ["VACUUM END", "VACUUM START"]


def test_a_failing_vacuum_does_not_fail_the_committed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(table: TableRef) -> list[str]:
        raise OSError("the store is down")

    monkeypatch.setattr(delta_table, "VACUUM_EVERY", 1)
    monkeypatch.setattr(delta_table, "vacuum", broken)
    table = TableRef(str(tmp_path / "people"))

    written = write_people_table(people(3), table, invocation_id="x")

    assert (written.version, written.rows_written) == (1, 3)
    assert "vacuum after version 1 failed (OSError)" in caplog.text


def test_txn_ids_carry_their_time_and_are_forgotten_after_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each txn records lastUpdated, so delta.setTransactionRetentionDuration drops old ids
    (from snapshots and checkpoints): a repeat after 30 days is new work."""
    table = TableRef(str(tmp_path / "people"))
    now = delta_table._now_ms()
    monkeypatch.setattr(delta_table, "_now_ms", lambda: now - 31 * 24 * 3600 * 1000)
    write_people_table(people(3), table, invocation_id="old")
    monkeypatch.undo()
    write_people_table(people(3, seed=2), table, invocation_id="recent")

    delta = deltalake.DeltaTable(table.uri)
    config = delta.metadata().configuration
    assert config["delta.setTransactionRetentionDuration"] == "interval 30 days"
    assert config["delta.logRetentionDuration"] == "interval 60 days"
    assert config["delta.deletedFileRetentionDuration"] == "interval 7 days"
    assert delta.transaction_version(app_id_for("recent")) == 1
    assert delta.transaction_version(app_id_for("old")) is None
    delta.create_checkpoint()
    (checkpoint,) = (Path(table.uri) / "_delta_log").glob("*.checkpoint.parquet")
    txns = pl.read_parquet(checkpoint)["txn"].drop_nulls().to_list()
    assert [(t["appId"], t["lastUpdated"] >= now) for t in txns] == [(app_id_for("recent"), True)]
    assert previous_write(table, "old") is None and previous_write(table, "recent") is not None


def test_a_repeat_whose_commit_record_expired_is_refused_not_given_another_commits_rows(
    tmp_path: Path,
) -> None:
    """The txn id outlived its commit file (log cleaned up after a checkpoint): nothing says
    what that commit wrote, so the repeat is refused (409), not answered with the newest
    commit's rows, and nothing is written again."""
    table = TableRef(str(tmp_path / "people"))
    write_people_table(people(4), table, invocation_id="a")
    write_people_table(people(5, seed=2), table, invocation_id="b")
    delta = deltalake.DeltaTable(table.uri)
    delta.create_checkpoint()
    log = Path(table.uri) / "_delta_log"
    for version in (0, 1):
        age(log / f"{version:020d}.json", 61 * 24 * 3600)  # past delta.logRetentionDuration
    delta.cleanup_metadata()
    assert not (log / f"{1:020d}.json").exists()

    for repeat in (
        lambda: previous_write(table, "a"),
        lambda: write_people_table(people(4), table, invocation_id="a"),
    ):
        with pytest.raises(RequestError, match="expired") as refused:
            repeat()
        assert (refused.value.status, refused.value.field) == (409, "invocation_id")
    assert pl.read_delta(table.uri).height == 9
    later = previous_write(table, "b")
    assert later is not None and (later.version, later.rows_written) == (2, 5)


def clean_up_log_below_newest(uri: str, days_old: int = 90) -> None:
    """What delta-rs does to a table older than its log retention when a write checkpoints:
    the log entries below the checkpoint go."""
    old = time.time() - days_old * 86_400
    for entry in (Path(uri) / "_delta_log").glob("*.json"):
        os.utime(entry, (old, old))
    snapshot = deltalake.DeltaTable(uri)
    snapshot.create_checkpoint()
    snapshot.cleanup_metadata()


def test_a_commit_is_read_back_after_the_log_below_it_was_cleaned_up(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    for n in (1, 2, 3):
        write_people_table(people(10 * n, seed=n), table, invocation_id=f"inv-{n}")
    clean_up_log_below_newest(table.uri)
    assert not (tmp_path / "people" / "_delta_log" / f"{2:020d}.json").exists()

    files = commit_files(table, 3)  # its own entry and snapshot remain
    assert files.added_rows().collect().height == 30
    assert files.other_rows().collect().height == 30
    again = write_people_table(people(30, seed=3), table, invocation_id="inv-3")
    assert (again.version, again.repeated, again.rows_written) == (3, True, 30)
    with pytest.raises(RequestError, match="expired from the Delta log") as expired:
        commit_files(table, 2)
    assert expired.value.status == 409
