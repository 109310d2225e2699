"""Unit tests of what the function accepts from a request before a Pipes context opens:
bounded decoding, inline context only, the Pipes bucket and key prefix, the context's shape."""

import base64
import json
import zlib
from typing import Any

import pytest
from dagster_pipes import PipesContextData, encode_param

from gcf_pipes import RequestError, parse_bootstrap
from gcf_pipes.bootstrap import MAX_DECODED_PARAM_BYTES, decode_bounded_param
from gcf_pipes.context_data import (
    CONTEXT_KEYS,
    REQUIRED_CONTEXT_KEYS,
    context_defaults,
    validate_context_data,
)
from gcf_pipes.gcs_names import is_bucket_name, is_key_prefix
from gcf_pipes.redact import Redactor

from .conftest import PIPES_BUCKET, pipes_body

CONTEXT, MESSAGES = "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"


def refusal(call: Any, *args: Any, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as raised:
        call(*args, **kwargs)
    return raised.value


def compressed(payload: bytes) -> str:
    return base64.b64encode(zlib.compress(payload, 9)).decode()


# --- bounded decoding -------------------------------------------------------------------------


def test_a_param_decodes_like_dagster_pipes_encodes_it() -> None:
    value = {"data": {"nested": [1, "two", None]}}
    assert decode_bounded_param(CONTEXT, encode_param(value)) == value


def test_a_compression_bomb_is_413_after_inflating_no_more_than_the_limit() -> None:
    bomb = compressed(b'{"x": "' + b"a" * (8 * MAX_DECODED_PARAM_BYTES) + b'"}')
    error = refusal(decode_bounded_param, CONTEXT, bomb)
    assert error.status == 413 and error.field == CONTEXT
    exactly = compressed(b'"' + b"a" * (MAX_DECODED_PARAM_BYTES - 2) + b'"')
    assert len(str(decode_bounded_param(CONTEXT, exactly))) == MAX_DECODED_PARAM_BYTES - 2


@pytest.mark.parametrize(
    "value",
    [
        12,
        None,
        "%%%",
        "not base64 at all!",
        base64.b64encode(b"plain text").decode(),
        compressed(b"not json"),
        compressed(b"\xff\xfe"),
        compressed(b"[" * 50_000 + b"]" * 50_000),
        base64.b64encode(zlib.compress(b'{"a": 1}' * 40)[:-5]).decode(),
        base64.b64encode(zlib.compress(b'{"a": 1}') + b"tail").decode(),
    ],
)
def test_an_undecodable_param_is_400_naming_it(value: Any) -> None:
    error = refusal(decode_bounded_param, MESSAGES, value)
    assert error.status == 400 and error.field == MESSAGES


# --- inline context, Pipes bucket, key prefix --------------------------------------------------


def with_params(context: Any = None, messages: Any = None) -> dict[str, Any]:
    body = pipes_body({"num_rows": 3})
    if context is not None:
        body[CONTEXT] = encode_param(context)
    if messages is not None:
        body[MESSAGES] = encode_param(messages)
    return body


def test_a_valid_body_splits_into_checked_params_and_the_event() -> None:
    bootstrap, event = parse_bootstrap(with_params(), pipes_bucket=PIPES_BUCKET)
    assert event == {"num_rows": 3}
    assert bootstrap.messages_params == {"bucket": PIPES_BUCKET, "key_prefix": "t/1"}
    assert bootstrap.context_data["asset_keys"] == ["people"]


@pytest.mark.parametrize(
    "context",
    [
        {"path": "/dev/zero"},
        {"path": "/etc/hostname"},
        {"env": "DAGSTER_PIPES_CONTEXT"},
        {"data": {}, "path": "/dev/zero"},
        {"data": "inline?"},
        [],
        "data",
    ],
)
def test_only_an_inline_context_is_accepted(context: Any) -> None:
    error = refusal(parse_bootstrap, with_params(context=context), pipes_bucket=PIPES_BUCKET)
    assert error.status == 400 and error.field is not None and error.field.startswith(CONTEXT)


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ({"path": "/tmp/messages"}, f"{MESSAGES}.bucket"),
        ({"bucket": PIPES_BUCKET}, f"{MESSAGES}.key_prefix"),
        ({"bucket": PIPES_BUCKET, "key_prefix": "a/1", "include_stdio_in_messages": "yes"},
         f"{MESSAGES}.include_stdio_in_messages"),
        ({"bucket": PIPES_BUCKET, "key_prefix": "a/1", "include_stdio_in_messages": None},
         f"{MESSAGES}.include_stdio_in_messages"),
        (["bucket"], MESSAGES),
    ],
)  # fmt: skip
def test_messages_params_need_a_bucket_and_a_key_prefix(messages: Any, field: str) -> None:
    error = refusal(parse_bootstrap, with_params(messages=messages), pipes_bucket=PIPES_BUCKET)
    assert error.status == 400 and error.field == field, error.message


@pytest.mark.parametrize(
    "extra",
    [
        {"include_stdio_in_messages": True},  # dagster-gcp's PipesGCSMessageReader sends it
        {"include_stdio_in_messages": False},
        {"compression": "none", "log_writer": {"stream": "stdout"}},  # a newer Dagster's keys
    ],
)
def test_the_stock_messages_params_are_accepted_and_only_the_target_used(
    extra: dict[str, Any],
) -> None:
    messages = {"bucket": PIPES_BUCKET, "key_prefix": "a/1", **extra}
    bootstrap, _ = parse_bootstrap(with_params(messages=messages), pipes_bucket=PIPES_BUCKET)
    assert bootstrap.messages_params == {"bucket": PIPES_BUCKET, "key_prefix": "a/1"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"future": json.loads('{"a":' * 9 + "1" + "}" * 9)}, f"{MESSAGES}.future"),
        ({"future": "x" * 70_000}, MESSAGES),
        ({"a": "x" * 40_000, "b": "y" * 40_000}, MESSAGES),
        ({"not a name": 1}, MESSAGES),
        ({"x\n": 1}, MESSAGES),
    ],
)
def test_unknown_messages_params_are_bounded(extra: dict[str, Any], field: str) -> None:
    messages = {"bucket": PIPES_BUCKET, "key_prefix": "a/1", **extra}
    error = refusal(parse_bootstrap, with_params(messages=messages), pipes_bucket=PIPES_BUCKET)
    assert error.status == 400 and error.field == field, error.message
    assert "not a name" not in error.message


def test_another_bucket_is_403_and_an_invalid_one_400() -> None:
    other = with_params(messages={"bucket": "someone-elses", "key_prefix": "a/1"})
    error = refusal(parse_bootstrap, other, pipes_bucket=PIPES_BUCKET)
    assert (error.status, error.field) == (403, f"{MESSAGES}.bucket")
    assert "someone-elses" not in error.message and PIPES_BUCKET not in error.message
    invalid = with_params(messages={"bucket": "Bad_Bucket", "key_prefix": "a/1"})
    error = refusal(parse_bootstrap, invalid, pipes_bucket=PIPES_BUCKET)
    assert (error.status, error.field) == (400, f"{MESSAGES}.bucket")


def test_a_bad_key_prefix_is_400_naming_it() -> None:
    body = with_params(messages={"bucket": PIPES_BUCKET, "key_prefix": "../x"})
    error = refusal(parse_bootstrap, body, pipes_bucket=PIPES_BUCKET)
    assert (error.status, error.field) == (400, f"{MESSAGES}.key_prefix")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("abc", True),
        ("my-project-dagster-pipes-logs", True),
        ("a_b.c-d", True),
        ("a.b." + "c" * 63, True),
        ("ab", False),
        ("a" * 64, False),
        ("a." + "b" * 64, False),
        ("Upper", False),
        ("-start", False),
        ("end-", False),
        ("a..b", False),
        ("goog-x", False),
        ("my-google-bucket", False),
        ("my-g00gle-bucket", False),
        ("10.0.0.1", False),
        ("a/b", False),
        ("a b", False),
    ],
)
def test_bucket_names_follow_the_gcs_rules(name: str, valid: bool) -> None:
    assert is_bucket_name(name) is valid


@pytest.mark.parametrize(
    ("prefix", "valid"),
    [
        (f"dagster-pipes/{'0f' * 16}/1", True),
        ("team.a/runs_2/x-y/12", True),
        ("a" * 512, True),
        ("a" * 513, False),
        ("", False),
        ("/a", False),
        ("a/", False),
        ("a//b", False),
        ("a/../b", False),
        ("a/./b", False),
        ("..", False),
        ("a/%2e%2e", False),
        ("a\\b", False),
        ("a b", False),
        ("a\n", False),
        ("ä", False),
    ],
)
def test_key_prefixes_follow_the_client_contract(prefix: str, valid: bool) -> None:
    assert is_key_prefix(prefix) is valid


# --- the context's shape ------------------------------------------------------------------------


def context(**overrides: Any) -> dict[str, Any]:
    return {
        "asset_keys": ["daily_people"],
        "code_version_by_asset_key": {"daily_people": "v1"},
        "provenance_by_asset_key": {
            "daily_people": {
                "code_version": "v1",
                "input_data_versions": {"upstream": "abc"},
                "is_user_provided": False,
            }
        },
        "partition_key": None,  # a range run's (one key: the range from it to itself)
        "partition_key_range": {"start": "2024-01-01", "end": "2024-01-07"},
        "partition_time_window": {
            "start": "2024-01-01T00:00:00+00:00",
            "end": "2024-01-08T00:00:00+00:00",
        },
        "run_id": "0b7c3f3e-8c8a-4c1e-9d55-1f0c1e6f7a11",
        "job_name": "__ASSET_JOB",
        "retry_number": 1,
        "extras": {"invocation_id": "abc", "nested": {"list": [1, 2, {"x": None}]}},
        **overrides,
    }


def test_a_context_as_dagster_sends_it_is_kept_as_is() -> None:
    assert validate_context_data(context()) == context()
    unpartitioned = context(
        partition_key=None, partition_key_range=None, partition_time_window=None
    )
    assert validate_context_data(unpartitioned) == unpartitioned
    one_day = context(
        partition_key="2024-01-01",
        partition_key_range={"start": "2024-01-01", "end": "2024-01-01"},
        partition_time_window={"start": "2024-01-01T00:00:00+00:00",
                               "end": "2024-01-02T00:00:00+00:00"},
    )  # fmt: skip
    assert validate_context_data(one_day) == one_day
    no_assets = context(
        asset_keys=None, code_version_by_asset_key=None, provenance_by_asset_key=None
    )
    assert validate_context_data(no_assets) == no_assets


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"asset_keys": "daily_people"}, "asset_keys"),
        ({"asset_keys": []}, "asset_keys"),
        ({"asset_keys": ["a", "a"]}, "asset_keys"),
        ({"asset_keys": [None]}, "asset_keys.0"),
        ({"asset_keys": ["/".join("x" * 17)]}, "asset_keys.0"),
        ({"asset_keys": ["a//b"]}, "asset_keys.0"),
        ({"asset_keys": ["a\x00"]}, "asset_keys.0"),
        ({"code_version_by_asset_key": {"other": "v1"}}, "code_version_by_asset_key"),
        ({"code_version_by_asset_key": {"daily_people": 1}},
         "code_version_by_asset_key.daily_people"),
        ({"provenance_by_asset_key": {"daily_people": {}}},
         "provenance_by_asset_key.daily_people.code_version"),
        ({"provenance_by_asset_key": []}, "provenance_by_asset_key"),
        ({"partition_key": 20240101}, "partition_key"),
        ({"partition_key": "2024-01-01"}, "partition_key"),
        ({"partition_key": "2024-01-01", "partition_key_range": None,
          "partition_time_window": None}, "partition_key"),
        ({"partition_key_range": None}, "partition_time_window"),
        ({"partition_key": "x" * 1025}, "partition_key"),
        ({"partition_key_range": {"start": "a"}}, "partition_key_range.end"),
        ({"partition_key_range": ["a", "b"]}, "partition_key_range"),
        ({"partition_time_window": {"start": "monday", "end": "tuesday"}},
         "partition_time_window.start"),
        ({"partition_time_window": {"start": "2024-01-02", "end": "2024-01-01"}},
         "partition_time_window"),
        ({"partition_time_window": {"start": "2024-01-01T00:00:00+00:00",
                                    "end": "2024-01-02T00:00:00"}}, "partition_time_window"),
        ({"run_id": ""}, "run_id"),
        ({"run_id": 7}, "run_id"),
        ({"job_name": ["x"]}, "job_name"),
        ({"retry_number": -1}, "retry_number"),
        ({"retry_number": 1.5}, "retry_number"),
        ({"retry_number": False}, "retry_number"),
        ({"extras": None}, "extras"),
        ({"extras": {"a": "x" * 70_000}}, "extras"),
        ({"extras": {"a": [[[[[[[[[1]]]]]]]]]}}, "extras"),
        ({"future": json.loads('{"a":' * 9 + "1" + "}" * 9)}, "future"),
        ({"future": "x" * 70_000}, ""),
        ({"a_future": "x" * 40_000, "b_future": "y" * 40_000}, ""),
        ({"no name": 1}, ""),
        ({"partition_key_range": {"start": "a", "end": "a",
                                  "next": json.loads("[" * 9 + "]" * 9)}},
         "partition_key_range.next"),
        ({"provenance_by_asset_key": {"daily_people": {
            "code_version": "v1", "input_data_versions": {}, "is_user_provided": False,
            "blob": "x" * 70_000}}}, "provenance_by_asset_key.daily_people"),
    ],
)  # fmt: skip
def test_a_malformed_context_is_400_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    error = refusal(validate_context_data, context(**overrides))
    expected = f"{CONTEXT}.{field}" if field else CONTEXT
    assert error.status == 400 and error.field == expected, error.message


def test_a_context_without_a_run_id_is_refused_naming_it() -> None:
    data = context()
    del data["run_id"]
    assert refusal(validate_context_data, data).field == f"{CONTEXT}.run_id"


def test_keys_a_newer_dagster_adds_are_ignored_at_every_level() -> None:
    newer = context(run_tags={"team": "lake"}, step_key="people", asset_check_keys=None)
    newer["partition_key_range"] = {**newer["partition_key_range"], "keys": ["2024-01-01"]}
    newer["partition_time_window"] = {**newer["partition_time_window"], "timezone": "UTC"}
    newer["provenance_by_asset_key"]["daily_people"]["storage_id"] = 12
    newer["extras"]["future"] = {"kept": True}  # extras are the caller's: kept whole
    expected = context()
    expected["extras"]["future"] = {"kept": True}
    assert validate_context_data(newer) == expected


@pytest.mark.parametrize("key", [key for key in CONTEXT_KEYS if key != "run_id"])
def test_a_missing_optional_key_reads_as_dagster_s_undefined_value(key: str) -> None:
    data = context(partition_key=None, partition_key_range=None, partition_time_window=None)
    if key == "asset_keys":  # the maps by asset key come with it
        data.update(code_version_by_asset_key=None, provenance_by_asset_key=None)
    del data[key]
    assert validate_context_data(data) == {**data, key: context_defaults()[key]}


def test_a_context_of_a_run_id_alone_is_an_unpartitioned_step_without_assets() -> None:
    read = validate_context_data({"run_id": "r"})
    assert read == {**context_defaults(), "run_id": "r"}
    assert read["extras"] is not validate_context_data({"run_id": "r"})["extras"]


def test_every_key_dagster_pipes_defines_is_required_or_has_a_default() -> None:
    defaults = set(context_defaults())
    assert defaults.isdisjoint(REQUIRED_CONTEXT_KEYS)
    assert defaults | set(REQUIRED_CONTEXT_KEYS) == set(PipesContextData.__annotations__)
    assert set(validate_context_data({"run_id": "r"})) == set(PipesContextData.__annotations__)


# --- redaction ----------------------------------------------------------------------------------


def test_environment_values_are_replaced_by_their_names() -> None:
    redactor = Redactor.from_env(
        {"DATA_LAKE_URI": "/srv/lake", "LAKE_ROOT": "/srv", "THREADS": "8", "TOKEN": "s3cr3t-v"}
    )
    assert redactor.text("at /srv/lake/people with 8 threads") == (
        "at ${DATA_LAKE_URI}/people with 8 threads"
    )
    assert redactor.json({"k s3cr3t-v": ["s3cr3t-v", 8]}) == {"k ${TOKEN}": ["${TOKEN}", 8]}
