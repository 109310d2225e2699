"""Unit tests of the GCS message writer against an in-memory bucket."""

import json
import time

import pytest
from dagster_pipes import PipesMessage
from google.api_core import exceptions as gexc

from devstack.fake_gcs import FakeClient, always_fail, fail_first
from gcf_pipes.errors import RequestError
from gcf_pipes.writer import PipesCloudStorageMessageWriter, WriterSettings, chunk_key

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
