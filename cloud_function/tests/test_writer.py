"""Unit tests of the GCS message writer against an in-memory bucket."""

import datetime
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import flask
import pytest
from dagster_pipes import PipesContext, PipesMessage
from google.api_core import exceptions as gexc
from google.auth import exceptions as gauth

from devstack.fake_gcs import FakeClient, always_fail, fail_first
from gcf_pipes import (
    Cancellation,
    CancellationPolicy,
    PipesMessageDeliveryError,
    handle_pipes_request,
    raise_if_cancelled,
)
from gcf_pipes.errors import RequestError
from gcf_pipes.writer import PipesCloudStorageMessageWriter, WriterSettings, chunk_key

from .conftest import pipes_body

BUCKET = "pipes"
PARAMS = {"bucket": BUCKET, "key_prefix": "run/abc"}
FAST = WriterSettings(flush_interval=0.02, upload_attempts=4)


def log(i: int) -> PipesMessage:
    return {"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": f"m{i}"}}


def chunks(client: FakeClient, prefix: str = "run/abc") -> list[list[dict]]:
    objects = client.objects[BUCKET]
    out, index = [], 1
    while (key := chunk_key(prefix, index)) in objects:
        out.append([json.loads(line) for line in objects[key].splitlines()])
        index += 1
    assert len(out) == len(objects), f"gap or stray objects: {sorted(objects)}"
    return out


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket(BUCKET)
    return fake


def test_every_message_is_delivered_in_order_as_numbered_chunks(client: FakeClient) -> None:
    writer = PipesCloudStorageMessageWriter(
        client, WriterSettings(flush_interval=0.01, max_chunk_messages=7)
    )
    with writer.open(PARAMS) as channel:
        for i in range(100):
            channel.write_message(log(i))
            if i % 10 == 0:
                time.sleep(0.02)
    delivered = [m["params"]["message"] for chunk in chunks(client) for m in chunk]
    assert delivered == [f"m{i}" for i in range(100)]
    assert writer.channel is not None and writer.channel.delivery_error is None
    assert len(chunks(client)) > 1


def test_messages_are_uploaded_while_the_context_is_open(client: FakeClient) -> None:
    with PipesCloudStorageMessageWriter(client, FAST).open(PARAMS) as channel:
        channel.write_message(log(1))
        deadline = time.monotonic() + 2
        while chunk_key("run/abc", 1) not in client.objects[BUCKET] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chunk_key("run/abc", 1) in client.objects[BUCKET], "not streamed before close"


def test_transient_upload_errors_are_retried(client: FakeClient) -> None:
    client.fault = fail_first("upload", 2, gexc.ServiceUnavailable("try again"))
    writer = PipesCloudStorageMessageWriter(client, FAST)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
    assert writer.channel is not None and writer.channel.delivery_error is None
    assert [m["params"]["message"] for m in chunks(client)[0]] == ["m1"]


def test_lost_response_after_a_landed_upload_is_not_a_duplicate(client: FakeClient) -> None:
    state = {"first": True}

    def lands_then_times_out(operation: str, key: str) -> None:
        if operation == "upload" and state["first"]:
            state["first"] = False
            client.objects[BUCKET][key] = json.dumps(log(1))  # the write landed...
            raise gexc.GatewayTimeout("...but the response was lost")

    client.fault = lands_then_times_out
    writer = PipesCloudStorageMessageWriter(client, FAST)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
    assert writer.channel is not None and writer.channel.delivery_error is None
    assert len(chunks(client)) == 1


def test_an_existing_chunk_is_never_overwritten(client: FakeClient) -> None:
    client.objects[BUCKET][chunk_key("run/abc", 1)] = "someone else's"
    writer = PipesCloudStorageMessageWriter(client, FAST)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
    assert client.objects[BUCKET][chunk_key("run/abc", 1)] == "someone else's"
    assert writer.channel is not None and writer.channel.delivery_error is not None
    assert "already exists" in str(writer.channel.delivery_error)


def test_a_permanent_failure_is_recorded_with_the_chunk_it_lost(client: FakeClient) -> None:
    client.fault = always_fail(gexc.Forbidden("no storage.objects.create"))
    writer = PipesCloudStorageMessageWriter(client, FAST)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
        channel.write_message(log(2))
    error = writer.channel.delivery_error if writer.channel else None
    assert error is not None
    assert "gs://pipes/run/abc/1.json" in str(error) and "Forbidden" in str(error)


def test_bad_params_are_a_request_error(client: FakeClient) -> None:
    from gcf_pipes.errors import RequestError

    with pytest.raises(RequestError, match="bucket"):
        with PipesCloudStorageMessageWriter(client).open({"key_prefix": "x"}):
            pass


def test_a_writer_bound_to_one_bucket_refuses_any_other(client: FakeClient) -> None:
    client.create_bucket("elsewhere")
    writer = PipesCloudStorageMessageWriter(client, FAST, only_bucket=BUCKET)
    with pytest.raises(RequestError) as raised:
        with writer.open({**PARAMS, "bucket": "elsewhere"}):
            pass
    assert raised.value.status == 403 and client.objects["elsewhere"] == {}
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
    assert chunks(client) == [[log(1)]]


# --- any error of the upload thread is a delivery failure the job sees before committing ----


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def stops_the_job(cancellation: Cancellation) -> PipesMessageDeliveryError | None:
    try:
        cancellation.raise_if_cancelled()
    except PipesMessageDeliveryError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "error",
    [
        gauth.TransportError("metadata server: connection reset"),
        gauth.RefreshError("metadata server answered 503"),
        KeyError("anything else"),
        SystemExit("a library exits"),  # would end the thread without a word
    ],
    ids=["TransportError", "RefreshError", "KeyError", "SystemExit"],
)
def test_an_error_looking_for_the_cancel_marker_stops_the_job_and_drops_messages(
    client: FakeClient, error: BaseException
) -> None:
    def marker_fault(op: str, key: str) -> None:
        if op == "download":  # the cancel-marker GET, on the writer's thread
            raise error

    client.fault = marker_fault
    cancellation = Cancellation(client.bucket(BUCKET), "run/abc")  # type: ignore[arg-type]
    writer = PipesCloudStorageMessageWriter(client, FAST, cancellation=cancellation)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
        assert wait_for(lambda: stops_the_job(cancellation) is not None), "the job runs on"
        for i in range(10_000):  # nothing accumulates once the writer is gone
            channel.write_message(log(i))
        assert channel._buffer == []

    stop = stops_the_job(cancellation)
    assert stop is not None and stop is channel.delivery_error
    assert type(error).__name__ in str(stop) and "writer stopped" in str(stop)


def test_a_message_that_is_not_json_is_a_delivery_failure_raised_where_it_is_written(
    client: FakeClient,
) -> None:
    cancellation = Cancellation(client.bucket(BUCKET), "run/abc")  # type: ignore[arg-type]
    writer = PipesCloudStorageMessageWriter(client, FAST, cancellation=cancellation)
    with writer.open(PARAMS) as channel:
        channel.write_message(log(1))
        not_json: PipesMessage = {
            "__dagster_pipes_version": "0.1",
            "method": "report_custom_message",
            "params": {"payload": {"at": datetime.date(2024, 1, 1)}},
        }
        with pytest.raises(PipesMessageDeliveryError, match=r"report_custom_message.*not JSON"):
            channel.write_message(not_json)
        channel.write_message(log(2))  # dropped: it would follow a missing message

    assert channel.delivery_error is not None and stops_the_job(cancellation) is not None
    delivered = [m["params"]["message"] for chunk in chunks(client) for m in chunk]
    assert "m2" not in delivered


def test_a_job_whose_writer_died_answers_502_and_does_not_commit(client: FakeClient) -> None:
    def marker_fault(op: str, key: str) -> None:
        if op == "download":
            raise gauth.RefreshError("metadata server answered 503")

    committed: list[bool] = []

    def job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        pipes.log.info("working")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # batches, each followed by a check
            raise_if_cancelled()
            time.sleep(0.01)
        committed.append(True)
        return {"committed": True}

    client.fault = marker_fault
    with flask.Flask(__name__).test_request_context("/", method="POST", json=pipes_body()):
        response, status = handle_pipes_request(
            flask.request,
            job,
            storage_client=client,  # type: ignore[arg-type]
            pipes_bucket=BUCKET,
            writer_settings=FAST,
            cancellation_policy=CancellationPolicy(poll_interval=0.25),
        )
    body = json.loads(response.get_data())
    assert status == 502, body
    assert body["error"]["type"] == "PipesMessageDeliveryError"
    assert "RefreshError" in body["error"]["message"]
    assert committed == []
