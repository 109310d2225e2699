"""Unit tests of the Delta writes: idempotent per invocation, partition replace, concurrency."""

import datetime as dt
import threading
from pathlib import Path

import deltalake
import polars as pl
import pytest
from deltalake.exceptions import CommitFailedError

from people_lake import delta_table
from people_lake.delta_table import (
    PARTITION_COLUMN,
    app_id_for,
    previous_write,
    with_partition,
    write_people_table,
)
from people_lake.fake_people import generate_people
from people_lake.storage import TableRef

DAY = dt.date(2024, 5, 1)


def people(n: int, seed: int = 1, day: dt.date | None = None) -> pl.DataFrame:
    return with_partition(generate_people(n, seed=seed, day=day), day)


def counts_by_day(uri: str) -> dict[str, int]:
    table = pl.read_delta(uri).group_by(PARTITION_COLUMN).len()
    return {str(day): n for day, n in table.iter_rows()}


def test_the_same_invocation_is_written_once(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    first = write_people_table(people(10), table, invocation_id="a", commit_metadata={"k": "v"})
    again = write_people_table(people(10, seed=2), table, invocation_id="a")
    other = write_people_table(people(5), table, invocation_id="b")

    assert (first.version, first.rows_written, first.repeated) == (0, 10, False)
    assert (again.version, again.rows_written, again.repeated) == (0, 10, True)
    assert again.commit_metadata["k"] == "v"
    assert (other.version, other.repeated) == (1, False)
    assert pl.read_delta(table.uri).height == 15
    delta = deltalake.DeltaTable(table.uri)
    assert delta.transaction_version(app_id_for("a")) == 1
    assert previous_write(table, "b") is not None and previous_write(table, "c") is None


def test_without_an_invocation_id_every_call_appends(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "people"))
    write_people_table(people(3), table, invocation_id=None)
    second = write_people_table(people(3), table, invocation_id=None)
    assert (second.version, second.repeated) == (1, False)
    assert pl.read_delta(table.uri).height == 6


def test_a_partition_write_replaces_only_that_day(tmp_path: Path) -> None:
    table = TableRef(str(tmp_path / "daily"))
    next_day = DAY + dt.timedelta(days=1)
    write_people_table(people(4, day=DAY), table, invocation_id="d1", day=DAY)
    write_people_table(people(6, day=next_day), table, invocation_id="d2", day=next_day)
    before = pl.read_delta(table.uri).filter(pl.col(PARTITION_COLUMN) == next_day)["id"].sort()

    replaced = write_people_table(people(9, seed=7, day=DAY), table, invocation_id="d3", day=DAY)

    assert replaced.rows_written == 9
    assert counts_by_day(table.uri) == {str(DAY): 9, str(next_day): 6}
    after = pl.read_delta(table.uri).filter(pl.col(PARTITION_COLUMN) == next_day)["id"].sort()
    assert after.equals(before)
    assert deltalake.DeltaTable(table.uri).metadata().partition_columns == [PARTITION_COLUMN]


def test_partitioned_writes_need_the_partition_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=PARTITION_COLUMN):
        write_people_table(people(2), TableRef(str(tmp_path / "t")), invocation_id="x", day=DAY)


def test_concurrent_writers_of_one_new_table_all_succeed(tmp_path: Path) -> None:
    """Creating the table, different days and the same day at once: all commit."""
    table = TableRef(str(tmp_path / "daily"))
    days = [DAY + dt.timedelta(days=i % 4) for i in range(8)]  # every day written twice
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            write_people_table(
                people(5 + i, day=days[i]), table, invocation_id=f"w{i}", day=days[i]
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
    assert deltalake.DeltaTable(table.uri).version() == len(days) - 1


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
