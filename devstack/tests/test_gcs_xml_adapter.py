"""The XML-API adapter: list paging and strictness as units, then the requests delta-rs
(object_store) really sends, through fake-gcs-server."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import deltalake  # before polars (see the brief of the project: crash at exit otherwise)
import polars as pl
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.gcs_xml_adapter import (
    ListQuery,
    XmlError,
    decode_token,
    encode_token,
    list_page,
    parse_complete_body,
)
from devstack.net import LOOPBACK, free_port
from devstack.services import adapter_command, emulator_command, running

BUCKET = "xml-adapter-test"
MIB = 1024 * 1024

# --- units: list paging ---------------------------------------------------------------------

NAMES = ["a/1", "a/2", "a/b/1", "b", "c/1", "c/2", "d", "e/1"]


def resources(names: list[str]) -> list[dict[str, Any]]:
    return [{"name": name} for name in sorted(names)]


def walk(query: ListQuery) -> list[tuple[list[str], list[str]]]:
    """Every page of a list, following continuation tokens as a client does."""
    pages, token = [], None
    while True:
        page_query = ListQuery(**{**query.__dict__, "after_entry": token or ""})
        page = list_page(resources(NAMES), page_query)
        pages.append(([str(o["name"]) for o in page.objects], page.prefixes))
        if page.next_entry is None:
            return pages
        token = decode_token(encode_token(page.next_entry))


def test_a_list_pages_by_max_keys_and_continues_where_it_stopped() -> None:
    pages = walk(ListQuery(max_keys=3))
    assert pages == [(["a/1", "a/2", "a/b/1"], []), (["b", "c/1", "c/2"], []), (["d", "e/1"], [])]


def test_common_prefixes_count_as_entries_and_are_never_repeated_across_pages() -> None:
    pages = walk(ListQuery(delimiter="/", max_keys=2))
    assert pages == [(["b"], ["a/"]), (["d"], ["c/"]), ([], ["e/"])]


def test_prefix_delimiter_and_start_after_combine() -> None:
    query = ListQuery(prefix="a/", delimiter="/", start_after="a/1")
    assert walk(query) == [(["a/2"], ["a/b/"])]
    assert walk(ListQuery(start_after="c/2")) == [(["d", "e/1"], [])]
    assert walk(ListQuery(start_after="e/1")) == [([], [])]


def test_max_keys_zero_lists_nothing_and_is_not_truncated() -> None:
    assert walk(ListQuery(max_keys=0)) == [([], [])]


@pytest.mark.parametrize(
    "query",
    [
        {"list-type": "1"},
        {},
        {"list-type": "2", "encoding-type": "url"},
        {"list-type": "2", "fetch-owner": "true"},
        {"list-type": "2", "versions": ""},
    ],
)
def test_a_list_it_does_not_implement_is_501(query: dict[str, str]) -> None:
    with pytest.raises(XmlError) as error:
        ListQuery.parse(query)
    assert error.value.status == 501


def test_bad_list_arguments_are_400() -> None:
    for query in ({"list-type": "2", "max-keys": "-1"}, {"list-type": "2", "max-keys": "x"}):
        with pytest.raises(XmlError) as error:
            ListQuery.parse(query)
        assert error.value.status == 400
    with pytest.raises(XmlError) as error:
        ListQuery.parse({"list-type": "2", "continuation-token": "%%%"})
    assert error.value.status == 400
    assert ListQuery.parse({"list-type": "2", "max-keys": "5000"}).max_keys == 1000


def test_a_complete_multipart_body_is_parsed_and_malformed_ones_are_400() -> None:
    body = (
        b'<CompleteMultipartUpload><Part><ETag>"e1"</ETag><PartNumber>1</PartNumber></Part>'
        b"<Part><ETag>e2</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"
    )
    assert parse_complete_body(body) == [(1, '"e1"'), (2, "e2")]
    for bad in (b"<x/>", b"not xml", b"<CompleteMultipartUpload><Part/></CompleteMultipartUpload>"):
        with pytest.raises(XmlError) as error:
            parse_complete_body(bad)
        assert error.value.status == 400


# --- through fake-gcs-server ---------------------------------------------------------------


class Adapter:
    """fake-gcs-server and the adapter in front of it, each a process as in the stack.

    Not a thread of the test process: some deltalake calls hold the GIL while they wait
    for their requests (``DeltaTable.history``), which would then never be answered.
    """

    def __init__(self, url: str, work: Path) -> None:
        self.url = url
        self.work = work

    def requests_logged(self) -> list[str]:
        return (self.work / "adapter.log").read_text().splitlines()

    def object_url(self, key: str, bucket: str = BUCKET) -> str:
        return f"{self.url}/{bucket}/{quote(key, safe='')}"

    def storage_options(self) -> dict[str, str]:
        key = {"gcs_base_url": self.url, "disable_oauth": True,
               "client_email": "", "private_key": "", "private_key_id": ""}  # fmt: skip
        return {"google_service_account_key": json.dumps(key), "allow_http": "true"}

    def gcs(self) -> storage.Client:
        return storage.Client(
            project="local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
        )


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    work = tmp_path_factory.mktemp("adapter")
    emulator_port, adapter_port = free_port(), free_port()
    adapter_url, emulator_url = (
        f"http://{LOOPBACK}:{adapter_port}",
        f"http://{LOOPBACK}:{emulator_port}",
    )
    emulator = emulator_command(emulator_port, adapter_url, work / "objects")
    adapter = adapter_command(adapter_port, emulator_url, [BUCKET])
    adapter += ["--log-requests", f"--work-dir={work / 'parts'}"]
    with running("GCS emulator", emulator, emulator_port, log_path=work / "emulator.log"):
        with running("adapter", adapter, adapter_port, log_path=work / "adapter.log"):
            yield Adapter(adapter_url, work)


def new_table(adapter: Adapter) -> str:
    return f"gs://{BUCKET}/tables/{uuid.uuid4().hex[:8]}"


def people(start: int, count: int, day: str = "2024-01-01") -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(start, start + count)), "day": [day] * count})


def test_delta_rs_creates_appends_replaces_checkpoints_and_vacuums(adapter: Adapter) -> None:
    uri, options = new_table(adapter), adapter.storage_options()
    deltalake.write_deltalake(uri, people(0, 10), storage_options=options, partition_by=["day"])
    deltalake.write_deltalake(
        uri, people(10, 5, "2024-01-02"), storage_options=options, mode="append",
        partition_by=["day"],
    )  # fmt: skip
    deltalake.write_deltalake(
        uri, people(100, 3), storage_options=options, mode="overwrite",
        predicate="day = '2024-01-01'", partition_by=["day"],
    )  # fmt: skip
    table = deltalake.DeltaTable(uri, storage_options=options)
    table.create_checkpoint()
    removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)

    reopened = deltalake.DeltaTable(uri, storage_options=options)
    ids = sorted(pl.read_delta(uri, storage_options=options)["id"].to_list())
    assert ids == [10, 11, 12, 13, 14, 100, 101, 102]
    assert len(removed) == 1 and reopened.version() == 4  # vacuum start and end commits
    prefix = uri.removeprefix(f"gs://{BUCKET}/")
    listed = {blob.name for blob in adapter.gcs().list_blobs(BUCKET, prefix=prefix)}
    assert any(name.endswith(".checkpoint.parquet") for name in listed)
    assert sum(name.endswith(".parquet") and "_delta_log" not in name for name in listed) == 2


def test_a_data_file_over_the_multipart_threshold_is_uploaded_in_parts(adapter: Adapter) -> None:
    uri, options = new_table(adapter), adapter.storage_options()
    random = os.urandom(24 * MIB)  # incompressible: one data file larger than 20 MiB
    rows = pl.DataFrame({"blob": [random[i : i + MIB] for i in range(0, len(random), MIB)]})
    table_key = quote(uri.removeprefix(f"gs://{BUCKET}/"), safe="")

    deltalake.write_deltalake(uri, rows, storage_options=options)

    logged = [line for line in adapter.requests_logged() if table_key in line]
    assert any("?uploads" in line and line.endswith(" 200") for line in logged)
    assert any("?partNumber=2&" in line and line.endswith(" 200") for line in logged)
    assert any("?uploadId=" in line and "POST" in line and line.endswith(" 200") for line in logged)
    read = pl.read_delta(uri, storage_options=options)
    assert b"".join(read["blob"].to_list()) == random
    assert not list((adapter.work / "parts").glob("upload-*")), "parts left behind"


def test_concurrent_appends_meet_412s_and_commit_each_version_once(adapter: Adapter) -> None:
    uri, options = new_table(adapter), adapter.storage_options()
    deltalake.write_deltalake(uri, people(0, 1), storage_options=options)
    writers = 8

    def append(index: int) -> None:
        deltalake.write_deltalake(uri, people(1000 * index, 3), storage_options=options,
                                  mode="append")  # fmt: skip

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(append, range(1, writers + 1)))

    table = deltalake.DeltaTable(uri, storage_options=options)
    table_log = quote(uri.removeprefix(f"gs://{BUCKET}/") + "/_delta_log/", safe="")
    losers = [line for line in adapter.requests_logged() if table_log in line and "412" in line]
    assert losers, "no commit lost a race: the writers did not overlap"
    assert table.version() == writers
    versions = [entry["version"] for entry in table.history()]
    assert sorted(versions) == list(range(writers + 1))
    assert len(pl.read_delta(uri, storage_options=options)) == 1 + 3 * writers


def test_racing_create_only_puts_have_exactly_one_winner(adapter: Adapter) -> None:
    url = adapter.object_url(f"race/{uuid.uuid4().hex}/_delta_log/00000000000000000001.json")

    def put(index: int) -> int:
        answer = requests.put(url, data=f"writer {index}".encode(), timeout=30,
                              headers={"x-goog-if-generation-match": "0"})  # fmt: skip
        return answer.status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(put, range(20)))

    assert statuses == Counter({200: 1, 412: 19})
    assert requests.get(url, timeout=30).text.startswith("writer ")


def test_answers_carry_what_object_store_reads(adapter: Adapter) -> None:
    key = "meta/a b%c/ü.json"
    put = requests.put(adapter.object_url(key), data=b"0123456789", timeout=30)
    assert put.status_code == 200 and put.headers["ETag"] and put.headers["x-goog-generation"]

    head = requests.head(adapter.object_url(key), timeout=30)
    assert head.headers["Content-Length"] == "10"
    assert head.headers["ETag"] == put.headers["ETag"]
    assert head.headers["x-goog-generation"] == put.headers["x-goog-generation"]
    assert head.headers["Last-Modified"].endswith(" GMT")

    ranged = requests.get(adapter.object_url(key), headers={"Range": "bytes=-3"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == b"789"
    assert ranged.headers["Content-Range"] == "bytes 7-9/10"

    again = requests.put(adapter.object_url(key), data=b"x", timeout=30,
                         headers={"x-goog-if-generation-match": "0"})  # fmt: skip
    assert again.status_code == 412 and b"PreconditionFailed" in again.content


def test_copy_honours_create_only_and_delete_then_answers_404(adapter: Adapter) -> None:
    source, target = f"copy/{uuid.uuid4().hex}", f"copy/{uuid.uuid4().hex}"
    requests.put(adapter.object_url(source), data=b"original", timeout=30)
    copy_source = {"x-goog-copy-source": f"{BUCKET}/{quote(source, safe='')}"}
    first = requests.put(adapter.object_url(target), timeout=30,
                         headers={**copy_source, "x-goog-if-generation-match": "0"})  # fmt: skip
    second = requests.put(adapter.object_url(target), timeout=30,
                          headers={**copy_source, "x-goog-if-generation-match": "0"})  # fmt: skip
    assert (first.status_code, second.status_code) == (200, 412)
    assert requests.get(adapter.object_url(target), timeout=30).content == b"original"

    assert requests.delete(adapter.object_url(target), timeout=30).status_code == 204
    assert requests.get(adapter.object_url(target), timeout=30).status_code == 404
    assert requests.delete(adapter.object_url(target), timeout=30).status_code == 404


def test_a_list_honours_start_after_and_pages_over_http(adapter: Adapter) -> None:
    prefix = f"list/{uuid.uuid4().hex}/"
    for name in NAMES:
        requests.put(adapter.object_url(prefix + name), data=b"x", timeout=30)
    seen: list[str] = []
    prefixes: list[str] = []
    params: dict[str, str] = {"list-type": "2", "prefix": prefix, "delimiter": "/",
                              "max-keys": "2", "start-after": prefix + "a/2"}  # fmt: skip
    while True:
        answer = requests.get(f"{adapter.url}/{BUCKET}", params=params, timeout=30)
        assert answer.status_code == 200, answer.text
        text = answer.text
        seen += [part.split("</Key>")[0] for part in text.split("<Key>")[1:]]
        prefixes += [
            part.split("</Prefix>")[0] for part in text.split("<CommonPrefixes><Prefix>")[1:]
        ]
        if "<NextContinuationToken>" not in text:
            break
        params["continuation-token"] = text.split("<NextContinuationToken>")[1].split("<")[0]
    assert seen == [prefix + "b", prefix + "d"]
    assert prefixes == [prefix + "a/", prefix + "c/", prefix + "e/"]


@pytest.mark.parametrize(
    ("method", "suffix", "headers"),
    [
        ("PUT", "", {"x-goog-meta-owner": "me"}),
        ("PUT", "", {"Content-Encoding": "gzip"}),
        ("PUT", "?acl", {}),
        ("POST", "", {}),
        ("PUT", "", {"x-goog-if-metageneration-match": "1"}),
        ("POST", "?uploads", {"x-goog-if-generation-match": "0"}),
        ("DELETE", "", {"x-goog-if-generation-match": "0"}),
        ("GET", "?acl", {}),
        ("PATCH", "", {}),
    ],
)
def test_what_it_does_not_implement_is_501_and_writes_nothing(
    adapter: Adapter, method: str, suffix: str, headers: dict[str, str]
) -> None:
    key = f"strict/{uuid.uuid4().hex}"
    answer = requests.request(method, adapter.object_url(key) + suffix, data=b"data",
                              headers=headers, timeout=30)  # fmt: skip
    assert answer.status_code == 501, answer.text
    assert b"NotImplemented" in answer.content
    assert not list(adapter.gcs().list_blobs(BUCKET, prefix=key))


def test_bucket_requests_other_than_a_v2_list_are_501(adapter: Adapter) -> None:
    for method, suffix in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("GET", "?location")):
        answer = requests.request(method, f"{adapter.url}/{BUCKET}{suffix}", timeout=30)
        assert answer.status_code == 501, (method, suffix)
    assert requests.get(f"{adapter.url}/", timeout=30).status_code == 501


def test_multipart_parts_are_checked_like_gcs(adapter: Adapter) -> None:
    url = adapter.object_url(f"mp/{uuid.uuid4().hex}")
    started = requests.post(url + "?uploads", timeout=30)
    upload_id = started.text.split("<UploadId>")[1].split("<")[0]
    small = requests.put(f"{url}?partNumber=1&uploadId={upload_id}", data=b"a", timeout=30)
    last = requests.put(f"{url}?partNumber=2&uploadId={upload_id}", data=b"b", timeout=30)
    body = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        for n, etag in ((1, small.headers["ETag"]), (2, last.headers["ETag"]))
    )
    document = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>"
    complete = requests.post(f"{url}?uploadId={upload_id}", data=document, timeout=30)
    assert complete.status_code == 400 and b"EntityTooSmall" in complete.content
    assert requests.get(url, timeout=30).status_code == 404, "nothing is written"

    aborted = requests.delete(f"{url}?uploadId={upload_id}", timeout=30)
    assert aborted.status_code == 204
    unknown = requests.put(f"{url}?partNumber=3&uploadId={upload_id}", data=b"c", timeout=30)
    assert unknown.status_code == 404 and b"NoSuchUpload" in unknown.content


def test_the_json_api_passes_through_with_resumable_uploads(adapter: Adapter) -> None:
    blob = adapter.gcs().bucket(BUCKET).blob(f"json/{uuid.uuid4().hex}")
    data = os.urandom(9 * MIB)  # over google-cloud-storage's 8 MiB: a resumable upload

    blob.upload_from_string(data, if_generation_match=0)

    assert blob.download_as_bytes() == data
    with pytest.raises(Exception, match="412"):
        blob.upload_from_string(b"again", if_generation_match=0)


def test_the_adapter_module_starts_and_stops_as_a_process(tmp_path: Path) -> None:
    emulator_port, adapter_port = free_port(), free_port()
    adapter_url = f"http://{LOOPBACK}:{adapter_port}"
    command = emulator_command(emulator_port, adapter_url, tmp_path / "objects")
    emulator_url = f"http://{LOOPBACK}:{emulator_port}"
    adapter_cmd = adapter_command(adapter_port, emulator_url, ["made-at-start"])
    with running("GCS emulator", command, emulator_port):
        with running("adapter", adapter_cmd, adapter_port, log_path=tmp_path / "adapter.log"):
            answer = requests.get(f"{adapter_url}/storage/v1/b/made-at-start", timeout=30)
            assert answer.status_code == 200
            requests.put(f"{adapter_url}/made-at-start/kept", data=b"kept", timeout=30)
    with running("GCS emulator", command, emulator_port):
        with running("adapter", adapter_cmd, adapter_port, log_path=tmp_path / "adapter.log"):
            again = requests.get(f"{adapter_url}/made-at-start/kept", timeout=30)
            assert again.content == b"kept", "objects survive a restart"
