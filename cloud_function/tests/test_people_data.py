"""Unit tests of the fake people and of the request validation."""

import datetime as dt
import math
import uuid
from typing import Any

import deltalake  # noqa: F401 - before polars
import polars as pl
import pytest
from dagster_pipes import PipesContext

from gcf_pipes import RequestError
from people_lake import checks as checks_module
from people_lake import fake_people
from people_lake.checks import EMAIL_PATTERN, DataChecks, ids_with_hashes
from people_lake.fake_people import COLUMNS, generate_people, people_batches
from people_lake.request import (
    MAX_NUM_ROWS,
    check_row_limit,
    parse_invocation_id,
    parse_partition_window,
    parse_people_request,
)
from people_lake.settings import MAX_ROWS_PER_REQUEST_VAR, FunctionSettings
from people_lake.window import MAX_RANGE_DAYS, DayWindow

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_people_have_the_documented_columns_unique_ids_and_emails() -> None:
    people = generate_people(5_000, seed=1, now=NOW)
    assert tuple(people.columns) == COLUMNS
    assert people.height == 5_000
    assert people["id"].n_unique() == 5_000 and people["email"].n_unique() == 5_000
    assert people.null_count().sum_horizontal().item() == 0
    assert people["email"].str.contains(EMAIL_PATTERN).all()
    assert all(uuid.UUID(value).version == 4 for value in people["id"].head(100))
    assert people["phone"].str.contains(r"^\([2-9]\d\d\) [2-9]\d\d-\d{4}$").all()
    assert people["address"].str.contains(r"^\d+ .+, .+, [A-Z]{2} \d{5}$").all()
    assert people["name"].str.contains(r"^\S+ \S+$").all()
    assert (
        (people["created_at"] <= NOW) & (people["created_at"] >= NOW - dt.timedelta(days=366))
    ).all()


def test_people_look_varied() -> None:
    people = generate_people(20_000, seed=2, now=NOW)
    assert people["name"].n_unique() > 5_000
    assert people["address"].n_unique() > 19_000
    assert people["email"].str.extract(r"@(.+)$").n_unique() > 5


def test_row_numbers_stay_unique_across_generation_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_people, "CHUNK_ROWS", 700)
    people = generate_people(2_000, seed=3, now=NOW)
    assert people.height == 2_000 and people["email"].n_unique() == 2_000
    assert people["email"].str.extract(r"(\d+)@").cast(pl.Int64).sort().to_list() == list(
        range(1, 2_001)
    )


def test_batches_are_the_rows_in_chunks_with_the_exact_share_of_bad_emails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fake_people, "CHUNK_ROWS", 300)
    day = dt.date(2024, 5, 1)
    batches = list(people_batches(1_000, seed=5, day=day, invalid_email_rate=0.0155))
    assert [batch.height for batch in batches] == [300, 300, 300, 100]
    whole = generate_people(1_000, seed=5, day=day, invalid_email_rate=0.0155)
    assert pl.concat(batches).equals(whole)
    assert (~whole["email"].str.contains("@")).sum() == round(0.0155 * 1_000)


def test_rows_do_not_depend_on_how_many_are_assembled_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    day = dt.date(2024, 5, 1)
    whole = generate_people(1_000, seed=5, day=day, invalid_email_rate=0.0155)
    monkeypatch.setattr(fake_people, "ASSEMBLY_ROWS", 7)
    assert generate_people(1_000, seed=5, day=day, invalid_email_rate=0.0155).equals(whole)


def test_the_same_seed_gives_the_same_people() -> None:
    assert generate_people(50, seed=3, now=NOW).equals(generate_people(50, seed=3, now=NOW))
    assert not generate_people(50, seed=3, now=NOW).equals(generate_people(50, seed=4, now=NOW))
    assert not generate_people(50, seed=3).equals(generate_people(50, seed=None))


def test_each_day_gets_its_own_people_within_that_day() -> None:
    day = dt.date(2024, 2, 29)
    first = generate_people(500, seed=9, day=day)
    other = generate_people(500, seed=9, day=day + dt.timedelta(days=1))
    assert (first["created_at"].dt.date() == day).all()
    assert set(first["id"]).isdisjoint(set(other["id"]))
    assert first.equals(generate_people(500, seed=9, day=day))


def test_invalid_email_rate_breaks_exactly_that_share() -> None:
    people = generate_people(1_000, seed=1, now=NOW, invalid_email_rate=0.03)
    assert (~people["email"].str.contains(EMAIL_PATTERN)).sum() == 30
    assert generate_people(10, seed=1, invalid_email_rate=1.0)["email"].str.contains("@").sum() == 0


def test_generator_rejects_impossible_arguments() -> None:
    with pytest.raises(ValueError, match="negative"):
        generate_people(-1)
    with pytest.raises(ValueError, match="invalid_email_rate"):
        generate_people(1, invalid_email_rate=2)
    assert generate_people(0).columns == list(COLUMNS)


# --- request validation ---------------------------------------------------------------------


def test_request_defaults_and_values() -> None:
    request = parse_people_request({}, "/lake")
    assert (request.data_lake_uri, request.num_rows, request.seed) == ("/lake", 100, None)
    assert request.invalid_email_rate == 0.0
    full = parse_people_request(
        {"dl_bucket": " gs://b ", "num_rows": 3, "seed": 9, "invalid_email_rate": 0.5}, None
    )
    assert (full.data_lake_uri, full.num_rows, full.seed, full.invalid_email_rate) == (
        "gs://b", 3, 9, 0.5,
    )  # fmt: skip
    assert (
        parse_people_request({"num_rows": MAX_NUM_ROWS, "seed": None}, "/l").num_rows
        == MAX_NUM_ROWS
    )


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"num_rows": "10"}, "num_rows"),
        ({"num_rows": True}, "num_rows"),
        ({"num_rows": 10.0}, "num_rows"),
        ({"num_rows": 0}, "num_rows"),
        ({"num_rows": MAX_NUM_ROWS + 1}, "num_rows"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -3}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"invalid_email_rate": "0.1"}, "invalid_email_rate"),
        ({"invalid_email_rate": -0.1}, "invalid_email_rate"),
        ({"invalid_email_rate": math.nan}, "invalid_email_rate"),
        ({"dl_bucket": ""}, "dl_bucket"),
        ({"dl_bucket": 3}, "dl_bucket"),
        ({"rows": 3}, "rows"),
    ],
)
def test_bad_fields_are_request_errors_naming_the_field(event: dict, field: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_people_request(event, "/lake")
    assert raised.value.field == field and raised.value.status == 400
    assert field in raised.value.message


def test_no_lake_anywhere_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="DATA_LAKE_URI"):
        parse_people_request({}, None)


class FakePipes:
    """The two Pipes context properties the partition and invocation parsers read."""

    def __init__(self, key_range: Any = None, extras: Any = None, time_window: Any = None) -> None:
        self._range = key_range
        self.extras = extras or {}
        self.partition_time_window = time_window

    @property
    def is_partition_step(self) -> bool:
        return self._range is not None

    @property
    def partition_key_range(self) -> Any:
        return self._range


def pipes(key_range: Any = None, extras: Any = None, time_window: Any = None) -> PipesContext:
    return FakePipes(key_range, extras, time_window)  # type: ignore[return-value]


def days(start: str, end: str) -> dict[str, str]:
    return {"start": start, "end": end}


def test_partition_keys_are_daily_dates_one_day_or_a_range() -> None:
    assert parse_partition_window(pipes()) is None
    one = parse_partition_window(pipes(days("2024-03-05", "2024-03-05")))
    assert one == DayWindow(dt.date(2024, 3, 5), dt.date(2024, 3, 5)) and one.days == 1
    week = parse_partition_window(
        pipes(
            days("2024-02-26", "2024-03-03"),
            time_window={"start": "2024-02-26T00:00:00+00:00", "end": "2024-03-04T00:00:00+00:00"},
        )
    )
    assert week is not None and week.days == 7 and week.text == "2024-02-26..2024-03-03"
    assert list(week.each_day())[3] == dt.date(2024, 2, 29)
    assert week.predicate == "event_date >= '2024-02-26' AND event_date <= '2024-03-03'"
    year = parse_partition_window(pipes(days("2024-01-01", "2024-12-31")))
    assert year is not None and year.days == MAX_RANGE_DAYS


@pytest.mark.parametrize(
    "key_range",
    [
        days("2024-03-05-10:00", "2024-03-05-10:00"),
        days("20240305", "20240305"),
        days("2024-13-01", "2024-13-01"),
        days("2024-03-07", "2024-03-05"),  # ends before it starts
        days("2024-01-01", "2025-01-01"),  # 367 days
        days("2024-01-01", 20240102),  # type: ignore[arg-type]
        {"start": "2024-01-01"},
        {"start": "2024-01-01", "end": "2024-01-01", "extra": 1},
        "2024-01-01..2024-01-02",
        ["2024-01-01"],
    ],
)
def test_malformed_or_too_long_ranges_are_request_errors(key_range: Any) -> None:
    with pytest.raises(RequestError) as raised:
        parse_partition_window(pipes(key_range))
    assert raised.value.field == "partition_key_range" and raised.value.status == 400


@pytest.mark.parametrize(
    "time_window",
    [
        {"start": "2024-03-01T00:00:00+00:00", "end": "2024-03-03T00:00:00+00:00"},  # a day short
        {"start": "2024-03-02T00:00:00+00:00", "end": "2024-03-04T00:00:00+00:00"},  # shifted
        {"start": "2024-03-01T00:00:00-05:00", "end": "2024-03-04T00:00:00-05:00"},  # not UTC
        {"start": "2024-03-01T00:00:00", "end": "2024-03-04T00:00:00"},  # no time zone
        {"start": "2024-03-01T06:00:00+00:00", "end": "2024-03-04T06:00:00+00:00"},
        {"start": "2024-03-01", "end": "2024-03-04"},
        {"start": "yesterday", "end": "2024-03-04T00:00:00+00:00"},
        {"start": 0, "end": 1},
        {"start": "2024-03-01T00:00:00+00:00"},
        "2024-03-01..2024-03-03",
    ],
)
def test_a_time_window_that_disagrees_with_the_range_is_a_request_error(time_window: Any) -> None:
    with pytest.raises(RequestError) as raised:
        parse_partition_window(pipes(days("2024-03-01", "2024-03-03"), time_window=time_window))
    assert raised.value.field == "partition_time_window" and raised.value.status == 400


def test_the_row_limit_counts_rows_per_day_times_days() -> None:
    request = parse_people_request({"num_rows": 1_000}, "/l")
    week = DayWindow(dt.date(2024, 1, 1), dt.date(2024, 1, 7))
    assert check_row_limit(request, None, 1_000) == 1_000
    assert check_row_limit(request, week, 7_000) == 7_000
    with pytest.raises(RequestError) as raised:
        check_row_limit(request, week, 6_999)
    assert raised.value.field == "num_rows" and "1000 x 7 days = 7000 rows" in str(raised.value)
    with pytest.raises(RequestError):
        check_row_limit(request, None, 999)


def test_invocation_ids_are_validated() -> None:
    assert parse_invocation_id(pipes()) is None
    valid = str(uuid.uuid4())
    assert parse_invocation_id(pipes(extras={"invocation_id": valid})) == valid
    for bad in ("", "a b", "../x", 7, "x" * 129):
        with pytest.raises(RequestError) as raised:
            parse_invocation_id(pipes(extras={"invocation_id": bad}))
        assert raised.value.field == "invocation_id"


def test_checks_fed_in_batches_find_duplicates_across_batches_and_nulls() -> None:
    people = generate_people(300, seed=8)
    repeated = people.head(4).with_columns(pl.Series("email", ["x"] * 4))
    nulls = people.head(2).with_columns(pl.lit(None, dtype=pl.String).alias("id"))
    everything = pl.concat([people, repeated, nulls])
    checks = DataChecks()
    for batch in (people, repeated, nulls):
        checks.add(batch)

    ids, emails = checks.outcomes(lambda hashes: ids_with_hashes(everything["id"], hashes))

    assert (ids.passed, ids.metadata["null_ids"], ids.metadata["duplicate_ids"]) == (False, 2, 4)
    assert emails.metadata["invalid_emails"] == 4 and emails.metadata["examples"].count("'x'") == 4
    assert checks.rows == 306


def test_equal_hashes_of_different_ids_are_not_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashes only narrow the search: with 2-bit hashes every id collides, and the ids that
    share a hash are compared exactly, within the rows and against the table's other ids."""
    monkeypatch.setattr(checks_module, "ID_HASH_BITS", 2)
    people, others = generate_people(50, seed=9)["id"], generate_people(30, seed=10)["id"]
    assert checks_module.id_hashes(pl.concat([people, others])).n_unique() <= 4
    checks = DataChecks()
    checks.add(generate_people(50, seed=9))

    def lookup(hashes: pl.Series) -> pl.Series:
        return ids_with_hashes(people, hashes)

    distinct, _ = checks.outcomes(lookup, [others.head(10), others.tail(20)])
    repeated, _ = checks.outcomes(lookup, [others, people.slice(7, 3)])

    assert distinct.passed and distinct.metadata == {
        "null_ids": 0,
        "duplicate_ids": 0,
        "ids_also_elsewhere_in_table": 0,
        "rows_compared_elsewhere": 30,
    }
    assert not repeated.passed and repeated.metadata["ids_also_elsewhere_in_table"] == 3
    assert repeated.metadata["rows_compared_elsewhere"] == 33


def test_the_row_limit_comes_from_the_environment() -> None:
    assert FunctionSettings.from_env({}).max_rows_per_request == 5_000_000
    assert FunctionSettings.from_env({MAX_ROWS_PER_REQUEST_VAR: " 70 "}).max_rows_per_request == 70
    for bad in ("0", "-1", "1e6", "many"):
        with pytest.raises(ValueError, match=MAX_ROWS_PER_REQUEST_VAR):
            FunctionSettings.from_env({MAX_ROWS_PER_REQUEST_VAR: bad})
