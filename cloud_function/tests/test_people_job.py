"""The people job behind the HTTP wrapper: metadata, checks, idempotency, strict input."""

import json
from pathlib import Path
from typing import Any

import deltalake  # noqa: F401 - before polars
import flask
import polars as pl
import pytest

from devstack.fake_gcs import FakeClient
from gcf_pipes import WriterSettings, handle_pipes_request
from people_lake.checks import CHECK_NAMES, EMAILS_CHECK, ROW_COUNT_CHECK
from people_lake.job import write_people
from people_lake.settings import ALLOWED_DATA_LAKE_ROOTS_VAR, DATA_LAKE_URI_VAR

from .conftest import PIPES_BUCKET, messages, pipes_body

app = flask.Flask(__name__)
FAST = WriterSettings(flush_interval=0.01, upload_attempts=2)


def body(event: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """A request body of invocation ``inv-1`` unless ``invocation_id`` says otherwise."""
    return pipes_body(event, **{"invocation_id": "inv-1", **kwargs})


@pytest.fixture
def gcs() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket(PIPES_BUCKET)
    return fake


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lake"
    root.mkdir()
    monkeypatch.setenv(DATA_LAKE_URI_VAR, str(root))
    monkeypatch.delenv(ALLOWED_DATA_LAKE_ROOTS_VAR, raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    return root


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
    assert meta["delta_version"]["raw_value"] == 0
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
    again_status, again = call(gcs, body({"num_rows": 40}, key_prefix="t/2"))

    assert first_status == again_status == 200
    assert again["result"]["repeated"] is True and first["result"]["repeated"] is False
    assert again["result"]["delta_version"] == first["result"]["delta_version"] == 0
    assert pl.read_delta(str(lake / "people")).height == 40
    (repeat,) = of(gcs, "report_asset_materialization", "t/2")
    assert repeat["metadata"]["repeated_invocation"]["raw_value"] is True
    assert repeat["metadata"]["dagster/row_count"]["raw_value"] == 40
    checks = {c["check_name"]: c["passed"] for c in of(gcs, "report_asset_check", "t/2")}
    assert checks[EMAILS_CHECK] is False  # the outcome recorded by the first attempt
    status, _ = call(gcs, body({"num_rows": 40}, invocation_id="inv-2", key_prefix="t/3"))
    assert status == 200 and pl.read_delta(str(lake / "people")).height == 80


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
        (body(partition="2024/03/05"), "partition_key"),
        (body(partition="2024-02-30"), "partition_key"),
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
