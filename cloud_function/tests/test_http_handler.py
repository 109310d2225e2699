"""Unit tests of the HTTP wrapper: every outcome is a JSON response naming its cause."""

import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flask
import functions_framework
import pytest
from dagster_pipes import PipesContext, decode_param, encode_param

from devstack.fake_gcs import FakeClient
from gcf_pipes import RequestError, WriterSettings, handle_pipes_request, install_logging_bridge
from gcf_pipes.http import MAX_BODY_BYTES

from .conftest import PIPES_BUCKET, messages, pipes_body

app = flask.Flask(__name__)
FAST = WriterSettings(flush_interval=0.01, upload_attempts=2)


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket(PIPES_BUCKET)
    return fake


def call(client: FakeClient, job: Any, **request: Any) -> tuple[int, dict[str, Any]]:
    with app.test_request_context("/", method="POST", **request):
        response, status = handle_pipes_request(
            flask.request,
            job,
            storage_client=client,
            pipes_bucket=PIPES_BUCKET,
            writer_settings=FAST,
        )  # type: ignore[arg-type]
    return status, json.loads(response.get_data())


def ok_job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    pipes.log.info(f"hello {event['who']}")
    return {"done": True}


def test_success_is_200_with_the_job_result_and_a_closed_message(client: FakeClient) -> None:
    status, body = call(client, ok_job, json=pipes_body({"who": "you"}))
    assert status == 200 and body["status"] == "ok" and body["result"] == {"done": True}
    methods = [m["method"] for m in messages(client)]
    assert methods[0] == "opened" and methods[-1] == "closed" and "log" in methods


@pytest.mark.parametrize("request_kwargs", [{"data": "{not json"}, {"json": [1, 2]}, {"data": ""}])
def test_a_body_that_is_not_a_json_object_is_400(
    client: FakeClient, request_kwargs: dict[str, Any]
) -> None:
    status, body = call(client, ok_job, **request_kwargs)
    assert status == 400 and body["error"]["field"] == "body"
    assert client.objects[PIPES_BUCKET] == {}


def test_missing_pipes_params_are_400_naming_the_parameter(client: FakeClient) -> None:
    status, body = call(client, ok_job, json={"who": "you"})
    assert status == 400
    assert body["error"]["field"] == "DAGSTER_PIPES_CONTEXT"
    assert "DAGSTER_PIPES_MESSAGES" in body["error"]["message"]


def test_undecodable_pipes_params_are_400(client: FakeClient) -> None:
    payload = pipes_body()
    payload["DAGSTER_PIPES_MESSAGES"] = "%%%"
    status, body = call(client, ok_job, json=payload)
    assert status == 400 and body["error"]["field"] == "DAGSTER_PIPES_MESSAGES"


def test_a_request_error_from_the_job_keeps_its_status_and_field(client: FakeClient) -> None:
    def picky(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        raise RequestError("'num_rows' must be an integer", field="num_rows")

    status, body = call(client, picky, json=pipes_body())
    assert status == 400 and body["error"]["field"] == "num_rows"
    closed = messages(client)[-1]
    assert closed["method"] == "closed" and "num_rows" in closed["params"]["exception"]["message"]


def test_a_refusal_from_the_job_tells_pipes_what_it_tells_http_and_no_more(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_LAKE_SETTING", "/srv/secret-lake")

    def deep_refusal(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        try:
            raise ValueError("parser detail at /srv/secret-lake/x")
        except ValueError as exc:
            raise RequestError(
                "'dl_bucket' /srv/secret-lake/x is refused", field="dl_bucket"
            ) from exc

    status, body = call(client, deep_refusal, json=pipes_body())
    assert (
        status == 400
        and body["error"]["message"] == "'dl_bucket' ${SOME_LAKE_SETTING}/x is refused"
    )
    assert messages(client)[-1]["params"]["exception"] == {
        "name": "RequestError", "message": body["error"]["message"], "stack": [], "cause": None,
        "context": None,
    }  # fmt: skip


def test_a_crash_is_500_with_type_message_and_traceback(client: FakeClient) -> None:
    def crash(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        raise ZeroDivisionError("boom")

    status, body = call(client, crash, json=pipes_body())
    assert status == 500
    assert body["error"]["type"] == "ZeroDivisionError" and body["error"]["message"] == "boom"
    assert "Traceback" in body["error"]["traceback"]
    assert messages(client)[-1]["params"]["exception"]["name"] == "ZeroDivisionError"


def test_undeliverable_messages_are_502(client: FakeClient) -> None:
    client.objects.pop(PIPES_BUCKET)  # the Pipes bucket does not exist
    status, body = call(client, ok_job, json=pipes_body({"who": "x"}))
    assert status == 502
    assert body["error"]["type"] == "PipesMessageDeliveryError"
    assert "gs://pipes/t/1/1.json" in body["error"]["message"]
    assert body["error"]["job_outcome"]["status"] == "ok"


def test_python_logging_in_the_job_reaches_dagster(client: FakeClient) -> None:
    install_logging_bridge()

    def logs(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        logging.getLogger("business").info("from logging")
        logging.getLogger("urllib3.connectionpool").warning("transport noise")

    call(client, logs, json=pipes_body())
    logged = [m["params"]["message"] for m in messages(client) if m["method"] == "log"]
    assert logged == ["from logging"]


def test_an_oversized_body_is_413_and_nothing_runs(client: FakeClient) -> None:
    ran = []
    payload = pipes_body({"padding": "x" * (1024 * 1024)})
    status, body = call(client, lambda pipes, event: ran.append(1), json=payload)
    assert (
        status == 413 and body["error"]["field"] == "body" and "limit" in body["error"]["message"]
    )
    assert ran == [] and client.objects[PIPES_BUCKET] == {}


class Spaces(io.RawIOBase):
    """A request body of ``size`` spaces that counts the bytes read from it."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes, self._told = size, 0, 0

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:  # how the test client sizes a body
        self._told = self.size if whence == 2 else 0
        return self._told

    def tell(self) -> int:
        return self._told

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size - self.read_bytes)
        buffer[:count] = b" " * count
        self.read_bytes += count
        return count


FRAMEWORK_FUNCTION = """
import functions_framework
from gcf_pipes import handle_pipes_request

@functions_framework.http
def main(request):
    return handle_pipes_request(request, lambda pipes, event: {}, storage_client=None,
                                pipes_bucket="pipes")
"""
# A chunked body reaches the app without a Content-Length; gunicorn ends its stream.
CHUNKED = {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}


@pytest.fixture
def framework_app(tmp_path: Path) -> flask.Flask:
    """The handler in functions-framework's own app, whose hook reads the body after the
    handler answered (what the real server runs, gunicorn aside)."""
    source = tmp_path / "function.py"
    source.write_text(FRAMEWORK_FUNCTION)
    return functions_framework.create_app("main", str(source))  # type: ignore[no-any-return]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_is_413_and_read_no_further_by_anyone(
    framework_app: flask.Flask, chunked: bool
) -> None:
    body = Spaces(64 * MAX_BODY_BYTES)
    answer = framework_app.test_client().post(
        "/", input_stream=body, environ_overrides=CHUNKED if chunked else {}
    )
    assert answer.status_code == 413, answer.get_data()
    assert answer.get_json()["error"]["field"] == "body"
    assert body.read_bytes <= MAX_BODY_BYTES + 1


def test_a_body_shorter_than_its_content_length_is_400_naming_body(
    framework_app: flask.Flask,
) -> None:
    environ = {"CONTENT_LENGTH": str(MAX_BODY_BYTES)}  # the client went away before the end
    answer = framework_app.test_client().post(
        "/", input_stream=Spaces(1000), environ_overrides=environ
    )
    assert answer.status_code == 400, answer.get_data()
    assert answer.get_json()["error"]["field"] == "body"


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(framework_app: flask.Flask) -> None:
    body = Spaces(MAX_BODY_BYTES)
    answer = framework_app.test_client().post("/", input_stream=body, environ_overrides=CHUNKED)
    error = answer.get_json()["error"]
    assert answer.status_code == 400 and error["field"] == "body", error
    assert "not strict JSON" in error["message"]  # all spaces: read whole, and not JSON
    assert body.read_bytes == MAX_BODY_BYTES


def test_messages_for_another_bucket_are_403_and_nothing_is_written(client: FakeClient) -> None:
    client.create_bucket("elsewhere")
    payload = pipes_body({"who": "x"})
    payload["DAGSTER_PIPES_MESSAGES"] = encode_param({"bucket": "elsewhere", "key_prefix": "t/1"})
    status, body = call(client, ok_job, json=payload)
    assert status == 403 and body["error"]["field"] == "DAGSTER_PIPES_MESSAGES.bucket"
    assert client.objects == {PIPES_BUCKET: {}, "elsewhere": {}}


def test_without_a_configured_pipes_bucket_every_request_is_refused(client: FakeClient) -> None:
    with app.test_request_context("/", method="POST", json=pipes_body({"who": "x"})):
        response, status = handle_pipes_request(
            flask.request, ok_job, storage_client=client, pipes_bucket=None
        )  # type: ignore[arg-type]
    assert (
        status == 500 and "no Pipes bucket" in json.loads(response.get_data())["error"]["message"]
    )
    assert client.objects[PIPES_BUCKET] == {}


def test_a_crash_report_carries_no_environment_value(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET_SETTING", "hunter2-hunter2")

    def leaky(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        raise RuntimeError("cannot open hunter2-hunter2/table") from KeyError("hunter2-hunter2")

    status, body = call(client, leaky, json=pipes_body())
    assert status == 500 and "Traceback" in body["error"]["traceback"]
    assert (
        "hunter2" not in json.dumps(body) and "${SOME_SECRET_SETTING}" in body["error"]["message"]
    )
    closed = messages(client)[-1]["params"]["exception"]
    assert closed["name"] == "RuntimeError" and closed["cause"]["name"] == "KeyError"
    assert "hunter2" not in json.dumps(closed) and "${SOME_SECRET_SETTING}" in closed["message"]


def test_a_refusal_carries_no_traceback(client: FakeClient) -> None:
    payload = pipes_body()
    payload["DAGSTER_PIPES_CONTEXT"] = encode_param({"path": "/etc/hostname"})
    status, body = call(client, ok_job, json=payload)
    assert status == 400 and body["error"]["field"] == "DAGSTER_PIPES_CONTEXT"
    assert set(body["error"]) == {"type", "message", "field"}


def test_asking_for_what_the_request_did_not_define_is_400_naming_it(client: FakeClient) -> None:
    def single_asset(pipes: PipesContext, event: Mapping[str, Any]) -> None:
        pipes.log.info(pipes.asset_key)

    payload = pipes_body()
    payload["DAGSTER_PIPES_CONTEXT"] = encode_param(
        {"data": {**context_of(payload), "asset_keys": ["a", "b"],
                  "code_version_by_asset_key": None, "provenance_by_asset_key": None}}
    )  # fmt: skip
    status, body = call(client, single_asset, json=payload)
    assert status == 400 and body["error"]["field"] == "DAGSTER_PIPES_CONTEXT.asset_keys"
    assert "multiple assets" in body["error"]["message"]


def context_of(payload: dict[str, Any]) -> dict[str, Any]:
    return decode_param(payload["DAGSTER_PIPES_CONTEXT"])["data"]  # type: ignore[no-any-return]
