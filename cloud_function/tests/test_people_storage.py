"""Unit tests of lake locations, the allow-list, table paths, storage options and settings."""

import json
from pathlib import Path

import pytest

from devstack.fake_gcs import FakeClient
from gcf_pipes import RequestError
from people_lake.settings import FUNCTION_ENV_VARS, FunctionSettings
from people_lake.storage import (
    LakeLocation,
    check_remote_table_path,
    ensure_allowed,
    parse_lake_uri,
    storage_options_for,
    table_location,
    table_ref,
)


def test_gcs_and_local_uris_normalise_to_segments(tmp_path: Path) -> None:
    assert parse_lake_uri("gs://lake/a//b/") == LakeLocation(True, ("lake", "a", "b"))
    assert parse_lake_uri("gs://lake").uri == "gs://lake"
    assert parse_lake_uri(f"file://{tmp_path}/x//y").uri == str(tmp_path.resolve() / "x" / "y")
    assert parse_lake_uri(str(tmp_path)).uri == str(tmp_path.resolve())


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """``<tmp>/lake`` (the allowed root) next to ``<tmp>/outside``."""
    (tmp_path / "lake").mkdir()
    (tmp_path / "outside" / "people" / "_delta_log").mkdir(parents=True)
    return tmp_path / "lake"


def refused(lake: Path, dl_bucket: str, asset_key: list[str]) -> RequestError:
    with pytest.raises(RequestError) as raised:
        table = table_location(parse_lake_uri(dl_bucket), asset_key)
        ensure_allowed(table, [str(lake)])
    return raised.value


def test_a_symlinked_lake_is_resolved_before_the_allow_list(lake: Path) -> None:
    (lake / "link").symlink_to(lake.parent / "outside")
    error = refused(lake, str(lake / "link"), ["people"])
    assert error.status == 403 and error.field == "dl_bucket"
    assert str(lake.parent) not in error.message


def test_a_symlink_at_the_table_path_is_refused(lake: Path) -> None:
    (lake / "people").symlink_to(lake.parent / "outside" / "people")
    assert refused(lake, str(lake), ["people"]).status == 403


@pytest.mark.parametrize("inside", ["_delta_log", "event_date=2024-01-01"])
def test_a_symlink_inside_the_table_is_refused(lake: Path, inside: str) -> None:
    (lake / "people").mkdir()
    (lake / "people" / inside).symlink_to(lake.parent / "outside" / "people" / "_delta_log")
    error = refused(lake, str(lake), ["people"])
    assert error.status == 403 and "symbolic link" in error.message


def test_a_symlink_that_stays_inside_the_root_is_followed(lake: Path) -> None:
    (lake / "real").mkdir()
    (lake / "alias").symlink_to(lake / "real")
    table = table_location(parse_lake_uri(str(lake / "alias")), ["people"])
    ensure_allowed(table, [str(lake)])
    assert table.uri == str(lake.resolve() / "real" / "people")


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/x",
        "https://example.com/x",
        "gs://UPPER/x",
        "gs://a/../b",
        "gs://b/./c",
        "file://",
        "/srv/lake/../etc",
        "file:///srv/lake/./x",
        "/srv/lake/%2e%2e/x",
        "/srv/lake/%252e%252e/x",
        "gs://lake/%2e%2e/other",
        "gs://lake/a%2fb",
        "/srv/lake/a\\..\\b",
        "/srv/lake/a\x00b",
        "/srv/lake/a\nb",
        "gs://lake/x?y",
        "gs://lake/x#y",
        "gs://goog-lake/x",
        "gs://192.168.1.1/x",
        "/srv/" + "x" * 1100,
        "relative/lake",
        "~/lake",
        "file://host/srv/lake",
        "/srv/lake/\uff0e\uff0e/x",
        "/srv/lake/a\uff0f..\uff0fb",
        "gs://lake/\uff05\uff12e",
        "gs://lake/\u2024\u2024/x",
        "/srv/lake/a\u202eb",
        "/srv/lake/a\u200bb",
        "/srv/lake/a\x85b",
        "/srv/lake/t/_delta_log",
        "gs://lake/t/_delta_log/x",
        "/srv/lake/" + "x" * 256,
    ],
)
def test_unsupported_or_unsafe_uris_are_400(uri: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_lake_uri(uri)
    assert raised.value.status == 400 and raised.value.field == "dl_bucket"
    assert uri not in raised.value.message  # a refusal never echoes a path


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("gs://lake", True),
        ("gs://lake/team/x", True),
        ("gs://lake-evil", False),
        ("gs://other/lake", False),
        ("/srv/lake/sub", True),
        ("/srv/lakehouse", False),
        ("/srv", False),
        ("gs://srv/lake", False),
    ],
)
def test_the_allow_list_compares_whole_segments(uri: str, allowed: bool) -> None:
    roots = ["gs://lake", "/srv/lake"]
    if allowed:
        ensure_allowed(parse_lake_uri(uri), roots)
        return
    with pytest.raises(RequestError) as raised:
        ensure_allowed(parse_lake_uri(uri), roots)
    assert raised.value.status == 403 and "/srv" not in raised.value.message


def test_no_allowed_root_refuses_everything() -> None:
    with pytest.raises(RequestError, match="not allowed") as raised:
        ensure_allowed(parse_lake_uri("gs://lake"), [])
    assert raised.value.status == 403


@pytest.mark.parametrize(
    "key", [["..", "x"], ["a/b"], [""], ["."], [".hidden"], ["a\\b"], ["-x"], []]
)
def test_asset_key_paths_are_sanitised(key: list[str]) -> None:
    with pytest.raises(RequestError) as raised:
        table_location(parse_lake_uri("gs://lake"), key)
    assert raised.value.field == "asset_key" and raised.value.status == 400


def test_table_locations_join_the_asset_key(tmp_path: Path) -> None:
    assert (
        table_location(parse_lake_uri("gs://lake/"), ["a", "b_c-1.v2"]).uri
        == "gs://lake/a/b_c-1.v2"
    )
    assert table_location(parse_lake_uri(str(tmp_path)), ["people"]).uri == str(
        tmp_path.resolve() / "people"
    )


def test_storage_options_are_built_in_one_place() -> None:
    assert storage_options_for("/local/lake") is None
    assert storage_options_for("gs://lake/t") is None  # credentials from the environment (ADC)
    assert storage_options_for("/local/lake", "127.0.0.1:9023") is None
    options = storage_options_for("gs://lake/t", "127.0.0.1:9023")
    assert options is not None and options["allow_http"] == "true"
    key = json.loads(options["google_service_account_key"])
    assert key["gcs_base_url"] == "http://127.0.0.1:9023" and key["disable_oauth"] is True
    ref = table_ref(parse_lake_uri("gs://lake/t"), "http://emulator:1")
    assert ref.uri == "gs://lake/t" and not ref.is_local and ref.storage_options is not None


def test_settings_default_the_allow_list_to_the_data_lake() -> None:
    assert "ALLOWED_DATA_LAKE_ROOTS" in FUNCTION_ENV_VARS
    only_lake = FunctionSettings.from_env({"DATA_LAKE_URI": "gs://lake"})
    assert only_lake.allowed_roots == ("gs://lake",)
    explicit = FunctionSettings.from_env(
        {"DATA_LAKE_URI": "gs://lake", "ALLOWED_DATA_LAKE_ROOTS": " gs://aaa , /b/c,, "}
    )
    assert explicit.allowed_roots == ("gs://aaa", "/b/c")
    nothing = FunctionSettings.from_env({})
    assert (nothing.data_lake_uri, nothing.allowed_roots, nothing.storage_emulator_host) == (
        None, (), None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATA_LAKE_URI", "gs://a/lake"),
        ("DATA_LAKE_URI", "s3://lake"),
        ("ALLOWED_DATA_LAKE_ROOTS", "gs://lake,/srv/../etc"),
        ("ALLOWED_DATA_LAKE_ROOTS", "/srv/%2e%2e"),
    ],
)
def test_settings_refuse_a_lake_uri_a_request_could_not_name(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        FunctionSettings.from_env({"DATA_LAKE_URI": "gs://lake", variable: value})


# --- gs:// tables inside or around another (in-memory GCS; refusals through the real
# --- server and emulator are in test_hostile_requests.py) -----------------------------------


@pytest.fixture
def lake_bucket() -> FakeClient:
    gcs = FakeClient()
    gcs.create_bucket("lake")
    return gcs


def check_gs(gcs: FakeClient, uri: str) -> None:
    check_remote_table_path(parse_lake_uri(uri), gcs)  # type: ignore[arg-type]


def test_a_new_gs_table_in_an_empty_place_or_an_existing_table_is_fine(
    lake_bucket: FakeClient,
) -> None:
    lake_bucket.objects["lake"]["l/people/_delta_log/00000000000000000000.json"] = "{}"
    lake_bucket.objects["lake"]["l/people/day=1/part.parquet"] = ""
    lake_bucket.objects["lake"]["l/people-old/x"] = ""  # shares a prefix, not a segment
    check_gs(lake_bucket, "gs://lake/l/people")  # exists: it was checked when made
    check_gs(lake_bucket, "gs://lake/l/people-2")
    check_gs(lake_bucket, "gs://lake/l/peop")


def test_a_table_a_racing_copy_creates_during_the_check_is_not_taken_for_a_stranger(
    lake_bucket: FakeClient,
) -> None:
    """The first look finds no table; a racing copy of the request creates it before the
    look for other objects: those objects are that table's, not another's."""
    lists: list[str] = []

    def racing_copy_creates_the_table(operation: str, prefix: str) -> None:
        if operation == "list":
            lists.append(prefix)
            if len(lists) == 2:  # after the look for the table's own log
                log = "l/people/_delta_log/00000000000000000000.json"
                lake_bucket.objects["lake"][log] = "{}"

    lake_bucket.fault = racing_copy_creates_the_table
    check_gs(lake_bucket, "gs://lake/l/people")
    assert lists[0] == "l/people/_delta_log/" and lists[-1] == "l/people/_delta_log/"


@pytest.mark.parametrize(
    ("existing", "uri", "reason"),
    [
        ("l/outer/_delta_log/0.json", "gs://lake/l/outer/people", "inside another"),
        ("l/_delta_log/0.json", "gs://lake/l/a/b/people", "inside another"),
        ("_delta_log/0.json", "gs://lake/l/people", "inside another"),
        ("l/people/sub/_delta_log/0.json", "gs://lake/l/people", "already holds objects"),
        ("l/people/stray.txt", "gs://lake/l/people", "already holds objects"),
    ],
)
def test_a_new_gs_table_inside_or_around_another_is_refused(
    lake_bucket: FakeClient, existing: str, uri: str, reason: str
) -> None:
    lake_bucket.objects["lake"][existing] = "{}"
    with pytest.raises(RequestError, match=reason) as raised:
        check_gs(lake_bucket, uri)
    assert raised.value.status == 403 and raised.value.field == "dl_bucket"
    assert "gs://" not in raised.value.message
