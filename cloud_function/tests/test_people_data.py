"""Unit tests of the business logic: request validation, fake people, table paths and writes."""

import datetime as dt
from pathlib import Path

import deltalake  # noqa: F401 - before polars
import polars as pl
import pytest

from gcf_pipes import RequestError
from people_lake.delta_table import append_rows, table_uri_for
from people_lake.fake_people import generate_people
from people_lake.request import MAX_NUM_ROWS, parse_people_request

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_people_have_the_documented_columns_and_unique_ids_and_emails() -> None:
    people = generate_people(5_000, seed=1, now=NOW)
    assert people.columns == ["id", "name", "address", "email", "phone", "created_at"]
    assert people.height == 5_000
    assert people["id"].n_unique() == 5_000 and people["email"].n_unique() == 5_000
    assert people.null_count().sum_horizontal().item() == 0
    assert people["email"].str.contains(r"^[^@\s]+@[^@\s]+\.[a-z]+$").all()
    assert (people["created_at"] <= NOW).all()


def test_the_same_seed_gives_the_same_people() -> None:
    assert generate_people(50, seed=3, now=NOW).equals(generate_people(50, seed=3, now=NOW))
    assert not generate_people(50, seed=3, now=NOW).equals(generate_people(50, seed=4, now=NOW))


def test_request_defaults_and_validation() -> None:
    request = parse_people_request({}, "/lake")
    assert (request.data_lake_uri, request.num_rows, request.seed) == ("/lake", 100, None)
    assert (
        parse_people_request({"dl_bucket": "gs://b", "num_rows": 3, "seed": 9}, None).num_rows == 3
    )


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"num_rows": "10"}, "num_rows"),
        ({"num_rows": True}, "num_rows"),
        ({"num_rows": 0}, "num_rows"),
        ({"num_rows": MAX_NUM_ROWS + 1}, "num_rows"),
        ({"seed": 1.5}, "seed"),
        ({"dl_bucket": ""}, "dl_bucket"),
        ({"dl_bucket": 3}, "dl_bucket"),
    ],
)
def test_bad_fields_are_request_errors_naming_the_field(event: dict, field: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_people_request(event, "/lake")
    assert raised.value.field == field and raised.value.status == 400


def test_no_lake_anywhere_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="DATA_LAKE_URI"):
        parse_people_request({}, None)


def test_table_uri_joins_the_asset_key_and_refuses_escapes(tmp_path: Path) -> None:
    assert table_uri_for("gs://lake/", ["a", "b"]) == "gs://lake/a/b"
    assert table_uri_for(str(tmp_path), ["people"]) == str(tmp_path / "people")
    for bad in (["..", "x"], ["a/b"], [""], ["."]):
        with pytest.raises(RequestError):
            table_uri_for("gs://lake", bad)


def test_appends_create_versions_and_read_back(tmp_path: Path) -> None:
    uri = str(tmp_path / "people")
    first = append_rows(generate_people(10, seed=1, now=NOW), uri)
    second = append_rows(generate_people(5, seed=2, now=NOW), uri)
    assert (first.version, second.version, second.rows_written) == (0, 1, 5)
    assert pl.read_delta(uri).height == 15
