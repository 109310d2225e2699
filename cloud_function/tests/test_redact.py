"""Redaction of environment values from error reports: what is replaced, in which forms, and
what is left alone."""

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import flask
import pytest
from dagster_pipes import PipesContext

from devstack.fake_gcs import FakeClient
from gcf_pipes import WriterSettings, handle_pipes_request
from gcf_pipes.redact import Redactor

from .conftest import PIPES_BUCKET, messages, pipes_body

ROOTS = "gs://acme-lake-eu/tables, gs://acme-lake-us/tables,/srv/lake"


def redact(text: str, **env: str) -> str:
    return Redactor.from_env(env).text(text)


def test_each_part_of_a_comma_separated_value_is_replaced() -> None:
    env = {"ALLOWED_DATA_LAKE_ROOTS": ROOTS}
    assert redact("gs://acme-lake-us/tables/people", **env) == ("${ALLOWED_DATA_LAKE_ROOTS}/people")
    assert redact("not under /srv/lake/x", **env) == "not under ${ALLOWED_DATA_LAKE_ROOTS}/x"
    assert redact(f"roots {ROOTS}", **env) == "roots ${ALLOWED_DATA_LAKE_ROOTS}"


def test_the_bucket_of_a_gs_uri_and_the_host_of_a_url_are_replaced_bare() -> None:
    env = {
        "DATA_LAKE_URI": "gs://acme-lake-eu/people",
        "STORAGE_EMULATOR_HOST": "http://10.1.2.3:9023",
    }
    redacted = redact(
        "404 GET https://storage.googleapis.com/storage/v1/b/acme-lake-eu/o/x: "
        "bucket acme-lake-eu not found; HTTPConnectionPool(host='10.1.2.3', port=9023) "
        "at 10.1.2.3:9023",
        **env,
    )
    assert "acme-lake-eu" not in redacted and "10.1.2.3" not in redacted
    assert "b/${DATA_LAKE_URI}/o/x: bucket ${DATA_LAKE_URI} not found" in redacted
    assert redacted.endswith("at ${STORAGE_EMULATOR_HOST}")


def test_a_short_bucket_name_is_replaced_as_a_whole_token_only() -> None:
    env = {"PIPES_BUCKET": "pipes"}
    assert redact("gs://pipes/t/1/1.json", **env) == "gs://${PIPES_BUCKET}/t/1/1.json"
    assert redact("b/pipes/o", **env) == "b/${PIPES_BUCKET}/o"
    untouched = "dagster-pipes wrote pipes_bucket and pipes2"
    assert redact(untouched, **env) == untouched


@pytest.mark.parametrize(
    "form",
    [
        lambda value: json.dumps({"path": value}),  # JSON, ASCII-escaped
        lambda value: json.dumps({"path": value}, ensure_ascii=False),
        lambda value: repr({"path": value}),  # a repr: backslashes doubled, quotes escaped
        lambda value: json.dumps(repr([value])),  # a repr inside a JSON string
        lambda value: json.dumps(json.dumps(value)),  # JSON inside JSON
        lambda value: f"https://storage.googleapis.com/o/{quote(value, safe='')}",
    ],
    ids=["json", "json-unicode", "repr", "repr-in-json", "json-in-json", "url-quoted"],
)
def test_escaped_and_repr_forms_are_replaced(form: Any) -> None:
    value = 'C:\\lakes\\o\'brien "caf\u00e9"'  # backslashes, both quotes, non-ASCII
    text = form(value)
    assert value not in text, "the form really differs from the raw value"

    redacted = redact(text, DATA_LAKE_URI=value)
    assert "${DATA_LAKE_URI}" in redacted
    for fragment in ("lakes", "brien", "caf"):
        assert fragment not in redacted, redacted


def test_common_words_numbers_and_the_platform_s_public_names_are_left_alone() -> None:
    env = {
        "K_SERVICE": "people",
        "K_REVISION": "people-00042-abc",
        "K_CONFIGURATION": "people",
        "FUNCTION_TARGET": "main",
        "DEBIAN_FRONTEND": "noninteractive",
        "THREADS": "8",
        "MAX_ROWS": "100000",
        "HOME": "/root",
    }
    text = "people table people-00042-abc: 100000 rows in main, noninteractive, 8 threads, /root"
    assert redact(text, **env) == text


def test_a_specific_value_of_any_variable_is_replaced_anywhere() -> None:
    env = {"SOME_SETTING": "s3cr3t-v4lue", "WORKDIR": "/workspace"}
    assert redact("x=s3cr3t-v4lue; xs3cr3t-v4luex; /workspace/main.py", **env) == (
        "x=${SOME_SETTING}; x${SOME_SETTING}x; ${WORKDIR}/main.py"
    )


def test_the_longest_value_wins_and_json_structures_are_redacted() -> None:
    redactor = Redactor.from_env({"DATA_LAKE_URI": "/srv/lake/eu", "LAKE_ROOT": "/srv/lake"})
    assert redactor.text("/srv/lake/eu/people and /srv/lake/us") == (
        "${DATA_LAKE_URI}/people and ${LAKE_ROOT}/us"
    )
    assert redactor.json({"/srv/lake": ["/srv/lake/eu", 3]}) == {
        "${LAKE_ROOT}": ["${DATA_LAKE_URI}", 3]
    }
    assert Redactor.from_env({}).text("nothing /srv/lake") == "nothing /srv/lake"


# --- through the HTTP wrapper: the answer and the ``closed`` message -------------------------


def test_a_crash_naming_config_values_in_any_form_is_redacted_in_both_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_DATA_LAKE_ROOTS", "gs://acme-lake-eu/t,gs://acme-lake-us/t")
    monkeypatch.setenv("K_SERVICE", "people")
    client = FakeClient()
    client.create_bucket(PIPES_BUCKET)

    def crash(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        raise ValueError(
            f"people table: cannot open {['gs://acme-lake-us/t/people']!r} in bucket acme-lake-us"
        )

    with flask.Flask(__name__).test_request_context("/", method="POST", json=pipes_body()):
        response, status = handle_pipes_request(
            flask.request,
            crash,
            storage_client=client,  # type: ignore[arg-type]
            pipes_bucket=PIPES_BUCKET,
            writer_settings=WriterSettings(flush_interval=0.01),
        )

    body = json.loads(response.get_data())
    closed = messages(client)[-1]["params"]["exception"]
    assert status == 500
    for reported in (json.dumps(body), json.dumps(closed)):
        assert "acme-lake" not in reported
        assert "${ALLOWED_DATA_LAKE_ROOTS}/people" in reported
        assert "people table" in reported  # K_SERVICE=people is not replaced
