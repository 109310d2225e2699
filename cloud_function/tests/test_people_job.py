"""The people job behind the HTTP wrapper: metadata, checks, idempotency, strict input."""

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import deltalake  # before polars
import flask
import polars as pl
import pytest

from devstack.fake_gcs import FakeClient
from gcf_pipes import WriterSettings, handle_pipes_request
from people_lake import checks as checks_module
from people_lake import delta_table, job
from people_lake.checks import CHECK_NAMES, EMAILS_CHECK, IDS_CHECK, ROW_COUNT_CHECK, id_hashes
from people_lake.delta_table import commit_files, write_people_table
from people_lake.fake_people import generate_people
from people_lake.job import write_people
from people_lake.settings import (
    MAX_ROWS_PER_REQUEST_VAR,
)
from people_lake.storage import TableRef

from .conftest import PIPES_BUCKET, messages, pipes_body

app = flask.Flask(__name__)
FAST = WriterSettings(flush_interval=0.01, upload_attempts=2)


def body(event: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """A request body of invocation ``inv-1`` unless ``invocation_id`` says otherwise."""
    return pipes_body(event, **{"invocation_id": "inv-1", **kwargs})


def call(gcs: FakeClient, payload: Any) -> tuple[int, dict[str, Any]]:
    kwargs = {"data": payload} if isinstance(payload, str) else {"json": payload}
    with app.test_request_context("/", method="POST", **kwargs):
        response, status = handle_pipes_request(
            flask.request,
            write_people,
            storage_client=gcs,
            pipes_bucket=PIPES_BUCKET,
            writer_settings=FAST,
        )  # type: ignore[arg-type]
    return status, json.loads(response.get_data())


def of(gcs: FakeClient, method: str, prefix: str = "t/1") -> list[dict[str, Any]]:
    return [m["params"] for m in messages(gcs, prefix) if m["method"] == method]


def test_a_write_reports_metadata_and_passing_checks(gcs: FakeClient, lake: Path) -> None:
    status, response = call(gcs, body({"num_rows": 30, "seed": 5}))

    assert status == 200, response
    assert response["result"]["rows_written"] == 30
    (materialization,) = of(gcs, "report_asset_materialization")
    meta = materialization["metadata"]
    assert meta["dagster/row_count"]["raw_value"] == 30
    assert meta["table_uri"]["raw_value"] == str(lake / "people")
    assert meta["delta_version"]["raw_value"] == 1  # version 0 created the empty table
    schema = meta["dagster/column_schema"]
    assert schema["type"] == "table_schema"
    assert [c["name"] for c in schema["raw_value"]["columns"]] == [
        "id", "name", "address", "email", "phone", "created_at",
    ]  # fmt: skip
    types = {c["name"]: c["type"] for c in schema["raw_value"]["columns"]}
    assert types["id"] == "string" and types["created_at"] == "timestamp"
    id_column = schema["raw_value"]["columns"][0]
    assert id_column["constraints"] == {"nullable": False, "unique": True}
    preview = meta["preview"]
    assert preview["type"] == "md" and preview["raw_value"].count("\n") == 6  # header, rule, 5
    checks = {c["check_name"]: c for c in of(gcs, "report_asset_check")}
    assert set(checks) == set(CHECK_NAMES)
    assert all(check["passed"] for check in checks.values())
    assert pl.read_delta(str(lake / "people")).height == 30


def test_invalid_emails_fail_the_email_check_with_the_reason(gcs: FakeClient, lake: Path) -> None:
    status, _ = call(gcs, body({"num_rows": 200, "invalid_email_rate": 0.05}))

    assert status == 200  # a failed check is reported, not an error
    checks = {c["check_name"]: c for c in of(gcs, "report_asset_check")}
    emails = checks[EMAILS_CHECK]
    assert emails["passed"] is False and emails["severity"] == "ERROR"
    assert emails["metadata"]["invalid_emails"]["raw_value"] == 10
    assert "10 of 200" in emails["metadata"]["reason"]["raw_value"]
    assert checks[ROW_COUNT_CHECK]["passed"] is True


def test_a_repeated_invocation_writes_nothing_and_reports_the_first_write(
    gcs: FakeClient, lake: Path
) -> None:
    first_status, first = call(gcs, body({"num_rows": 40, "invalid_email_rate": 0.1}))
    again_status, again = call(
        gcs, body({"num_rows": 40, "invalid_email_rate": 0.1}, key_prefix="t/2")
    )

    assert first_status == again_status == 200
    assert again["result"]["repeated"] is True and first["result"]["repeated"] is False
    assert again["result"]["delta_version"] == first["result"]["delta_version"] == 1
    assert pl.read_delta(str(lake / "people")).height == 40
    (repeat,) = of(gcs, "report_asset_materialization", "t/2")
    assert repeat["metadata"]["repeated_invocation"]["raw_value"] is True
    assert repeat["metadata"]["dagster/row_count"]["raw_value"] == 40
    checks = {c["check_name"]: c["passed"] for c in of(gcs, "report_asset_check", "t/2")}
    assert checks[EMAILS_CHECK] is False  # the first attempt's rows, read back
    status, _ = call(gcs, body({"num_rows": 40}, invocation_id="inv-2", key_prefix="t/3"))
    assert status == 200 and pl.read_delta(str(lake / "people")).height == 80


@pytest.mark.parametrize(
    "other",
    [{"num_rows": 41}, {"num_rows": 40, "seed": 7}, {"num_rows": 40, "invalid_email_rate": 0.5}],
)
def test_an_invocation_id_reused_for_other_work_is_409_and_writes_nothing(
    gcs: FakeClient, lake: Path, other: dict[str, Any]
) -> None:
    assert call(gcs, body({"num_rows": 40}))[0] == 200
    version = deltalake.DeltaTable(str(lake / "people")).version()

    status, answer = call(gcs, body(other, key_prefix="t/2"))

    assert status == 409, answer
    error = answer["error"]
    assert error["field"] == "invocation_id" and "already committed version 1" in error["message"]
    assert "call_key" in error["message"]
    assert deltalake.DeltaTable(str(lake / "people")).version() == version
    assert pl.read_delta(str(lake / "people")).height == 40


WEEK = ("2024-03-01", "2024-03-07")


def window_of(first: int, after_last: int) -> dict[str, str]:
    """The time window Dagster sends for March ``first`` .. the day before ``after_last``."""
    return {
        "start": f"2024-03-{first:02d}T00:00:00+00:00",
        "end": f"2024-03-{after_last:02d}T00:00:00+00:00",
    }


def test_a_partition_write_sets_the_partition_column(gcs: FakeClient, lake: Path) -> None:
    status, response = call(gcs, body({"num_rows": 12}, partition="2024-03-05"))

    assert status == 200, response
    people = pl.read_delta(str(lake / "people"))
    assert people["event_date"].cast(pl.String).unique().to_list() == ["2024-03-05"]
    assert people["created_at"].dt.date().cast(pl.String).unique().to_list() == ["2024-03-05"]
    (materialization,) = of(gcs, "report_asset_materialization")
    metadata = materialization["metadata"]
    assert metadata["dagster/partition_row_count"]["raw_value"] == 12
    columns = metadata["dagster/column_schema"]["raw_value"]["columns"]
    assert columns[-1]["name"] == "event_date" and columns[-1]["type"] == "date"
    assert "| event_date |" in metadata["preview"]["raw_value"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("{not json", "body"),
        (body({"num_rows": "12"}), "num_rows"),
        (body({"num_rows": 0}), "num_rows"),
        (body({"num_rows": 5_000_001}), "num_rows"),
        (body({"num_rows": 2.5}), "num_rows"),
        (body({"seed": -1}), "seed"),
        (body({"invalid_email_rate": 1.5}), "invalid_email_rate"),
        (body({"num_row": 10}), "num_row"),
        (body({"dl_bucket": 7}), "dl_bucket"),
        (body({"dl_bucket": "s3://elsewhere"}), "dl_bucket"),
        (body({"dl_bucket": "/srv/lake/../x"}), "dl_bucket"),
        (body(partition="2024/03/05"), "partition_key_range"),
        (body(partition="2024-02-30"), "partition_key_range"),
        (body(partition_range=("2024-01-01", "2025-01-01")), "partition_key_range"),
        (body(partition_range=("2024-01-02", "2024-01-01")), "partition_key_range"),
        (body(partition_range=WEEK, time_window=window_of(1, 7)), "partition_time_window"),
        (body({"num_rows": 714_286}, partition_range=WEEK), "num_rows"),
        (body(asset="../escape"), "asset_key"),
        (body(invocation_id="has spaces"), "invocation_id"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(
    gcs: FakeClient, lake: Path, payload: Any, field: str
) -> None:
    status, response = call(gcs, payload)

    assert status == 400, response
    assert response["error"]["field"] == field, response
    assert list(lake.iterdir()) == []


@pytest.mark.parametrize("outside", ["/etc", "gs://someone-elses-bucket/lake", "{lake}-evil"])
def test_a_lake_outside_the_allowed_roots_is_403_and_writes_nothing(
    gcs: FakeClient, lake: Path, outside: str
) -> None:
    status, response = call(gcs, body({"dl_bucket": outside.format(lake=lake)}))

    assert status == 403, response
    assert response["error"]["field"] == "dl_bucket"
    assert "not allowed" in response["error"]["message"]
    assert list(lake.iterdir()) == []
    assert not Path(f"{lake}-evil").exists() and not (lake.parent / "x").exists()


def test_a_sub_directory_of_an_allowed_root_is_allowed(gcs: FakeClient, lake: Path) -> None:
    status, _ = call(gcs, body({"dl_bucket": str(lake / "team-a"), "num_rows": 3}))
    assert status == 200
    assert pl.read_delta(str(lake / "team-a" / "people")).height == 3


def rows_by_day(path: Path) -> dict[str, int]:
    table = pl.read_delta(str(path)).group_by("event_date").len()
    return {str(day): n for day, n in table.iter_rows()}


def test_a_range_of_days_is_one_commit_with_the_rows_of_each_day(
    gcs: FakeClient, lake: Path
) -> None:
    before = body({"num_rows": 3}, partition="2024-02-29", invocation_id="before", key_prefix="t/0")
    assert call(gcs, before)[0] == 200
    after = body({"num_rows": 3}, partition="2024-03-08", invocation_id="after", key_prefix="t/9")
    assert call(gcs, after)[0] == 200
    ranged = body(
        {"num_rows": 10, "seed": 4},
        partition_range=WEEK,
        time_window=window_of(1, 8),
        key_prefix="t/2",
    )
    status, response = call(gcs, ranged)

    assert status == 200, response
    result = response["result"]
    assert (result["rows_written"], result["partition"]) == (70, "2024-03-01..2024-03-07")
    days = {f"2024-03-{d:02d}": 10 for d in range(1, 8)}
    assert rows_by_day(lake / "people") == {"2024-02-29": 3, "2024-03-08": 3, **days}
    (materialization,) = of(gcs, "report_asset_materialization", "t/2")
    meta = {key: value["raw_value"] for key, value in materialization["metadata"].items()}
    assert meta["partition_window"] == "2024-03-01..2024-03-07"
    assert (meta["days"], meta["rows_per_day"], meta["rows_written"]) == (7, 10, 70)
    assert meta["dagster/row_count"] == 76 and meta["dagster/partition_row_count"] == 10
    checks = {c["check_name"]: c for c in of(gcs, "report_asset_check", "t/2")}
    assert all(check["passed"] for check in checks.values()), checks
    assert checks[ROW_COUNT_CHECK]["metadata"]["requested_rows"]["raw_value"] == 70
    logs = [m["params"]["message"] for m in messages(gcs, "t/2") if m["method"] == "log"]
    assert any("10 rows per day x 7 days = 70 rows" in line for line in logs), logs

    # the same seed gives each day the rows a single-day materialization of it gets
    single = body({"num_rows": 10, "seed": 4}, partition="2024-03-04", invocation_id="one")
    call(gcs, {**single, "dl_bucket": str(lake / "single")})
    table = pl.read_delta(str(lake / "people"))
    one_day = pl.read_delta(str(lake / "single" / "people"))
    day_four = table.filter(pl.col("event_date") == dt.date(2024, 3, 4))
    assert day_four.sort("id").equals(one_day.sort("id"))


def test_a_repeated_range_writes_nothing(gcs: FakeClient, lake: Path) -> None:
    ranged = body({"num_rows": 5}, partition_range=WEEK, time_window=window_of(1, 8))
    call(gcs, ranged)
    version = deltalake.DeltaTable(str(lake / "people")).version()
    status, again = call(gcs, {**ranged, **body(partition_range=WEEK, key_prefix="t/2")})

    assert status == 200 and again["result"]["repeated"] is True
    assert again["result"]["rows_written"] == 35
    assert deltalake.DeltaTable(str(lake / "people")).version() == version
    (repeat,) = of(gcs, "report_asset_materialization", "t/2")
    assert repeat["metadata"]["partition_window"]["raw_value"] == "2024-03-01..2024-03-07"
    assert all(c["passed"] for c in of(gcs, "report_asset_check", "t/2"))


def test_rows_beyond_the_configured_limit_are_400_naming_num_rows(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_ROWS_PER_REQUEST_VAR, "69")
    status, response = call(gcs, body({"num_rows": 10}, partition_range=WEEK))

    assert status == 400 and response["error"]["field"] == "num_rows"
    assert "10 x 7 days = 70 rows" in response["error"]["message"]
    assert list(lake.iterdir()) == []
    monkeypatch.setenv(MAX_ROWS_PER_REQUEST_VAR, "70")
    assert call(gcs, body({"num_rows": 10}, partition_range=WEEK, key_prefix="t/2"))[0] == 200


def test_large_writes_stream_in_batches_with_one_log_line_each(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job, "BATCH_ROWS", 40)
    status, response = call(gcs, body({"num_rows": 30}, partition_range=WEEK))

    assert status == 200, response
    logs = [m["params"]["message"] for m in messages(gcs) if m["method"] == "log"]
    progress = [line for line in logs if line.startswith("batch ")]
    assert progress == [f"batch {n}: {min(30 * n, 210)} of 210 rows streamed to Delta" for n in
                        range(1, 8)]  # fmt: skip
    assert deltalake.DeltaTable(str(lake / "people")).version() == 1  # one commit


def test_duplicate_ids_in_a_commit_are_found_exactly_when_read_back(lake: Path) -> None:
    table = TableRef(str(lake / "people"))
    people = generate_people(50, seed=1)
    rows = pl.concat([people, people.head(5)])
    written = write_people_table(rows, table, invocation_id="dups")

    ids, emails = job._checks_of_commit(written, commit_files(table, written.version))

    assert ids.passed is False and ids.metadata == {
        "null_ids": 0,
        "duplicate_ids": 5,
        "ids_also_elsewhere_in_table": 0,
        "rows_compared_elsewhere": 0,
    }
    assert emails.passed is True


def ids_check(gcs: FakeClient, prefix: str) -> dict[str, Any]:
    (check,) = [c for c in of(gcs, "report_asset_check", prefix) if c["check_name"] == IDS_CHECK]
    return {"passed": check["passed"]} | {
        key: value["raw_value"] for key, value in check["metadata"].items()
    }


def test_the_id_check_covers_the_table_not_just_the_commit(gcs: FakeClient, lake: Path) -> None:
    """Appending the same seed twice puts every id into the table twice: the second write's
    check fails, also when it is repeated; the first write's check stays as it was."""
    seeded = {"num_rows": 30, "seed": 3}
    assert call(gcs, body(seeded))[0] == 200
    status, _ = call(gcs, body(seeded, invocation_id="inv-2", key_prefix="t/2"))
    call(gcs, body(seeded, invocation_id="inv-2", key_prefix="t/3"))
    call(gcs, body(seeded, key_prefix="t/4"))  # a repeat of the first

    assert status == 200  # a failed check is reported, not an error
    assert pl.read_delta(str(lake / "people"))["id"].n_unique() == 30
    first = {"passed": True, "null_ids": 0, "duplicate_ids": 0,
             "ids_also_elsewhere_in_table": 0, "rows_compared_elsewhere": 0}  # fmt: skip
    second = first | {"passed": False, "ids_also_elsewhere_in_table": 30}
    second["rows_compared_elsewhere"] = 30
    assert ids_check(gcs, "t/2") == ids_check(gcs, "t/3") == second
    assert ids_check(gcs, "t/1") == ids_check(gcs, "t/4") == first


def test_replacing_a_day_with_the_same_seed_keeps_the_ids_unique(
    gcs: FakeClient, lake: Path
) -> None:
    """The replaced day's old rows are no longer in the table: nothing to collide with."""
    seeded = {"num_rows": 20, "seed": 3}
    call(gcs, body(seeded, partition="2024-03-04"))
    call(gcs, body(seeded, partition="2024-03-05", invocation_id="next", key_prefix="t/2"))

    status, _ = call(gcs, body(seeded, partition="2024-03-04", invocation_id="again",
                               key_prefix="t/3"))  # fmt: skip

    assert status == 200 and pl.read_delta(str(lake / "people")).height == 40
    assert ids_check(gcs, "t/3") == {"passed": True, "null_ids": 0, "duplicate_ids": 0,
                                     "ids_also_elsewhere_in_table": 0,
                                     "rows_compared_elsewhere": 20}  # fmt: skip


def test_ids_with_equal_hashes_are_compared_exactly_in_the_table(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashes only narrow the search. With 2-bit hashes every id collides with others, and
    the real lookup (the commit's rows, read back) tells distinct ids from duplicates."""
    monkeypatch.setattr(checks_module, "ID_HASH_BITS", 2)
    table = TableRef(str(lake / "people"))
    before = generate_people(40, seed=1)
    write_people_table(before, table, invocation_id="before")
    people = generate_people(50, seed=2)
    assert id_hashes(people["id"]).n_unique() <= 4  # collisions within and with the table

    distinct = write_people_table(people, table, invocation_id="distinct")
    passed, _ = job._checks_of_commit(distinct, commit_files(table, distinct.version))
    repeating = pl.concat([before.head(3), people.head(2), generate_people(5, seed=4)])
    written = write_people_table(repeating, table, invocation_id="repeating")
    failed, _ = job._checks_of_commit(written, commit_files(table, written.version))

    assert passed.passed and passed.metadata["duplicate_ids"] == 0
    assert passed.metadata["ids_also_elsewhere_in_table"] == 0
    assert not failed.passed and failed.metadata["duplicate_ids"] == 0
    assert failed.metadata["ids_also_elsewhere_in_table"] == 5  # 3 of "before", 2 of "distinct"
    assert failed.metadata["rows_compared_elsewhere"] == 90


def test_a_repeat_whose_commit_record_expired_is_409_and_reports_no_rows(
    gcs: FakeClient, lake: Path
) -> None:
    """Its commit file was cleaned from the log: the newest commit is not reported as its."""
    assert call(gcs, body({"num_rows": 40}))[0] == 200
    assert call(gcs, body({"num_rows": 7}, invocation_id="inv-2", key_prefix="t/2"))[0] == 200
    table = deltalake.DeltaTable(str(lake / "people"))
    table.create_checkpoint()
    log = lake / "people" / "_delta_log"
    expired = time.time() - 61 * 24 * 3600  # past the table's delta.logRetentionDuration
    for version in (0, 1):
        os.utime(log / f"{version:020d}.json", (expired, expired))
    table.cleanup_metadata()

    status, answer = call(gcs, body({"num_rows": 40}, key_prefix="t/3"))

    assert status == 409, answer
    assert answer["error"]["field"] == "invocation_id" and "expired" in answer["error"]["message"]
    assert of(gcs, "report_asset_materialization", "t/3") == []
    assert of(gcs, "report_asset_check", "t/3") == []
    assert pl.read_delta(str(lake / "people")).height == 47


class CountedTable(deltalake.DeltaTable):
    """A DeltaTable that counts how often the log is read from scratch (a table opened) or
    looked at by ``is_deltatable``."""

    opened = 0
    looked_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        CountedTable.opened += 1
        super().__init__(*args, **kwargs)

    @staticmethod
    def is_deltatable(*args: Any, **kwargs: Any) -> bool:
        CountedTable.looked_at += 1
        return deltalake.DeltaTable.is_deltatable(*args, **kwargs)


def test_a_write_opens_its_table_three_times_its_checks_and_metadata_once(
    gcs: FakeClient, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each opening lists and replays the Delta log (on gs://, requests per commit): the
    repeat look-up, the write and the committed version, which the id check of the table
    and the metadata share; the version before it is read by bringing it forward."""
    seeded = {"num_rows": 20, "seed": 3}
    assert call(gcs, body(seeded, partition="2024-03-04", invocation_id="first"))[0] == 200
    monkeypatch.setattr(delta_table, "DeltaTable", CountedTable)
    CountedTable.opened = CountedTable.looked_at = 0

    status, _ = call(gcs, body(seeded, partition="2024-03-05", key_prefix="t/2"))

    assert status == 200
    assert (CountedTable.opened, CountedTable.looked_at) == (3, 0)
    assert ids_check(gcs, "t/2")["rows_compared_elsewhere"] == 20  # the whole table still
