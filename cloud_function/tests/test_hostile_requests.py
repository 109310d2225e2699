"""The attack surface of the function, tried through the real server and the real emulator.

Every request below is what a caller holding ``run.invoker`` could send. For each one: the
status and the field named; a refusal body without traceback, path or environment value;
nothing changed in the lake, in the directory next to it or in any bucket but the Pipes
bucket (and nothing at all there when the request is refused before Pipes opens); and the
next valid request still succeeds. Four cases also bound the worker's peak memory (a big
body among them, chunked or not); hostile requests also run in parallel with valid ones, and
header values are shown not to forge log fields.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltalake  # noqa: F401 - before polars
import polars as pl
import pytest
import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR as CONTEXT,
)
from dagster_pipes import (
    DAGSTER_PIPES_MESSAGES_ENV_VAR as MESSAGES,
)
from dagster_pipes import (
    encode_param,
)
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.services import REPO_ROOT
from devstack.stack import LocalStack, local_stack
from gcf_pipes.http import MAX_BODY_BYTES

pytestmark = pytest.mark.integration

PIPES_BUCKET = "hostile-pipes"
OTHER_BUCKET = "victim-lake"  # another bucket the runtime account could write to
GS_LAKE_BUCKET = "hostile-gs-lake"  # gs://<it>/lake is an allowed root, beside the local lake
MiB = 1024 * 1024
MEMORY_BOUND = 256 * MiB
# The stack's own files next to the lake (logs, emulator data) change with every request.
NOT_LAKE = frozenset({"function.log", "emulator.log", "emulator-data"})


@dataclass(frozen=True)
class Target:
    """The running stack and the directories around its lake."""

    stack: LocalStack
    work: Path
    lake: Path  # the function's only allowed root
    outside: Path  # next to the lake, holding a real Delta table
    gcs: storage.Client
    context_file: Path  # a valid context as a JSON file on the function's disk

    @property
    def port(self) -> int:
        return int(self.stack.function_url.rsplit(":", 1)[1])


def context_data(asset: str = "people", **overrides: Any) -> dict[str, Any]:
    return {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "hostile-run",
        "job_name": "hostile_job",
        "retry_number": 0,
        "extras": {"invocation_id": uuid.uuid4().hex},
        **overrides,
    }


def new_key_prefix() -> str:
    return f"dagster-pipes/{uuid.uuid4().hex}/1"


def body(
    *,
    context: Any = None,
    messages: Any = None,
    raw_context: Any = None,
    raw_messages: Any = None,
    **event: Any,
) -> dict[str, Any]:
    """A request body: params encoded as the client does, unless ``raw_*`` replaces them."""
    result: dict[str, Any] = dict(event)
    context = context or {"data": context_data()}
    result[CONTEXT] = raw_context if raw_context is not None else encode_param(context)
    result[MESSAGES] = (
        raw_messages
        if raw_messages is not None
        else encode_param(messages or {"bucket": PIPES_BUCKET, "key_prefix": new_key_prefix()})
    )
    return result


def ctx(**overrides: Any) -> dict[str, Any]:
    """``body`` kwargs with one context field replaced (or dropped when given ``DROP``)."""
    data = {k: v for k, v in context_data(**overrides).items() if v is not DROP}
    return {"context": {"data": data}}


def msgs(**fields: Any) -> dict[str, Any]:
    return {"messages": {"bucket": PIPES_BUCKET, "key_prefix": new_key_prefix(), **fields}}


DROP = object()


def raw_param(payload: bytes) -> str:
    return base64.b64encode(zlib.compress(payload)).decode()


@functools.cache
def bomb(decompressed_bytes: int) -> str:
    """A JSON object that inflates to ``decompressed_bytes`` but is about 1/1000 of that."""
    packer = zlib.compressobj(9)
    parts = [packer.compress(b'{"data": {"padding": "')]
    block = b"a" * MiB
    for _ in range(decompressed_bytes // MiB):
        parts.append(packer.compress(block))
    parts.append(packer.compress(b'"}}') + packer.flush())
    return base64.b64encode(b"".join(parts)).decode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def with_raw(payload: dict[str, Any], raw_member: bytes) -> bytes:
    """``payload`` as JSON with ``raw_member`` (JSON text as an attacker writes it) added."""
    return json.dumps(payload).encode()[:-1] + b", " + raw_member + b"}"


def raw_context_text(text: str) -> str:
    """A context param carrying ``text`` verbatim after the valid context's opening."""
    valid = json.dumps({"data": context_data()})
    return raw_param(valid[:-2].encode() + text.encode() + b"}}")


@dataclass(frozen=True)
class Case:
    """One hostile request and how it must be refused."""

    id: str
    make: Callable[[Target], dict[str, Any] | bytes]
    status: int
    field: str  # the field named, or its prefix (``DAGSTER_PIPES_CONTEXT.partition_key_range``)
    reaches_job: bool = False  # refused by the business logic, after Pipes opened
    headers: tuple[tuple[str, str], ...] = ()

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


Make = Callable[[Target], Any]


def case(
    name: str,
    status: int,
    field: str,
    make: Make,
    *,
    job: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Any:
    return Case(name, make, status, field, job, headers).param()


def bucket_case(name: str, status: int, bucket: object) -> Any:
    return case(name, status, f"{MESSAGES}.bucket", lambda t: body(**msgs(bucket=bucket)))


def prefix_case(name: str, key_prefix: object) -> Any:
    return case(name, 400, f"{MESSAGES}.key_prefix", lambda t: body(**msgs(key_prefix=key_prefix)))


def context_case(name: str, field: str, **overrides: Any) -> Any:
    return case(name, 400, f"{CONTEXT}.{field}", lambda t: body(**ctx(**overrides)))


def lake_case(name: str, status: int, dl_bucket: Callable[[Target], str]) -> Any:
    return case(name, status, "dl_bucket", lambda t: body(dl_bucket=dl_bucket(t)), job=True)


def raw_context_case(name: str, status: int, raw: Callable[[], str]) -> Any:
    return case(name, status, CONTEXT, lambda t: body(raw_context=raw()))


INLINE_ONLY = [
    case("context-path-dev-zero", 400, CONTEXT, lambda t: body(context={"path": "/dev/zero"})),
    case("context-path-json-file", 400, CONTEXT,
         lambda t: body(context={"path": str(t.context_file)})),
    case("context-env-indirection", 400, CONTEXT,
         lambda t: body(context={"env": "DAGSTER_PIPES_CONTEXT"})),
    case("context-data-plus-path", 400, CONTEXT,
         lambda t: body(context={"data": context_data(), "path": str(t.context_file)})),
    case("context-data-not-object", 400, CONTEXT, lambda t: body(context={"data": "people"})),
    case("context-missing", 400, CONTEXT, lambda t: {MESSAGES: body()[MESSAGES]}),
    case("context-not-string", 400, CONTEXT, lambda t: body(raw_context=12345)),
    raw_context_case("context-is-array", 400, lambda: raw_param(b"[1, 2]")),
    raw_context_case("context-not-base64", 400, lambda: "%%%not base64%%%"),
    raw_context_case("context-not-zlib", 400, lambda: base64.b64encode(b"plain").decode()),
    raw_context_case("context-not-json", 400, lambda: raw_param(b"\xff\xfe not json")),
    raw_context_case("context-truncated-stream", 400,
                     lambda: base64.b64encode(zlib.compress(b'{"data": {}}' * 50)[:-6]).decode()),
    raw_context_case("context-trailing-bytes", 400,
                     lambda: base64.b64encode(zlib.compress(b'{"data": {}}') + b"xx").decode()),
    raw_context_case("context-nested-200k", 400, lambda: raw_param(nested(100_000))),
    raw_context_case("context-bomb", 413, lambda: bomb(300 * MiB)),
    case("messages-bomb", 413, MESSAGES, lambda t: body(raw_messages=bomb(300 * MiB))),
    case("messages-path", 400, MESSAGES, lambda t: body(messages={"path": "/tmp/messages"})),
    case("messages-env-indirection", 400, MESSAGES,
         lambda t: body(messages={"env": "PIPES_BUCKET"})),
    # A key the function ignores (a newer Dagster's) is still bounded.
    case("messages-unknown-key-20-deep", 400, f"{MESSAGES}.path",
         lambda t: body(**msgs(path=json.loads('{"a":' * 20 + "1" + "}" * 20)))),
    case("messages-unknown-keys-70-kib", 400, MESSAGES, lambda t: body(**msgs(path="x" * 70_000))),
    case("messages-stdio-not-boolean", 400, f"{MESSAGES}.include_stdio_in_messages",
         lambda t: body(**msgs(include_stdio_in_messages="/dev/stdout"))),
    case("messages-missing-prefix", 400, MESSAGES,
         lambda t: body(messages={"bucket": PIPES_BUCKET})),
    # One param, one meaning: a repeated key is not "the last one wins".
    raw_context_case("context-data-key-twice", 400,
                     lambda: raw_param(b'{"data": {}, "data": {"path": "/dev/zero"}}')),
    raw_context_case("context-run-id-twice", 400, lambda: raw_context_text(', "run_id": "x"')),
    case("messages-bucket-twice", 400, MESSAGES, lambda t: body(raw_messages=raw_param(
        f'{{"bucket": "{OTHER_BUCKET}", "key_prefix": "{new_key_prefix()}", '
        f'"bucket": "{PIPES_BUCKET}"}}'.encode()))),
    raw_context_case("context-nan", 400, lambda: raw_context_text(', "x": NaN')),
    raw_context_case("context-lone-surrogate", 400, lambda: raw_context_text(', "x": "\\udfff"')),
    raw_context_case("context-base64-with-newlines", 400,
                     lambda: base64.encodebytes(zlib.compress(b'{"data": {}}')).decode()),
    raw_context_case("context-gzip-not-zlib", 400,
                     lambda: base64.b64encode(gzip.compress(b'{"data": {}}')).decode()),
    raw_context_case("context-zlib-preset-dictionary", 400, lambda: base64.b64encode(
        (packer := zlib.compressobj(zdict=b"data")).compress(b'{"data": {}}') + packer.flush()
    ).decode()),
]  # fmt: skip

PIPES_BUCKET_ONLY = [
    bucket_case("bucket-other-existing", 403, OTHER_BUCKET),
    bucket_case("bucket-other-missing", 403, "not-the-pipes-bucket"),
    bucket_case("bucket-with-slash", 400, f"{PIPES_BUCKET}/../{OTHER_BUCKET}"),
    bucket_case("bucket-gs-uri", 400, f"gs://{OTHER_BUCKET}"),
    bucket_case("bucket-uppercase", 400, "Hostile-Pipes"),
    bucket_case("bucket-empty", 400, ""),
    bucket_case("bucket-goog-prefix", 400, "goog-pipes"),
    bucket_case("bucket-ip-address", 400, "192.168.1.1"),
    bucket_case("bucket-number", 400, 7),
    bucket_case("bucket-trailing-space", 400, PIPES_BUCKET + " "),
    prefix_case("prefix-dotdot", "../escape/1"),
    prefix_case("prefix-absolute", "/abs/1"),
    prefix_case("prefix-empty-segment", "a//1"),
    prefix_case("prefix-trailing-slash", "a/1/"),
    prefix_case("prefix-dot-segment", "a/./1"),
    prefix_case("prefix-percent", "a/%2e%2e/1"),
    prefix_case("prefix-too-long", "a" * 513),
    prefix_case("prefix-backslash", "a\\..\\1"),
    prefix_case("prefix-newline", "a\n1"),
    prefix_case("prefix-null", None),
    bucket_case(
        "bucket-222-chars-dotted", 403, ".".join(["a" * 63] * 3) + ".abcdefghijklmnopqrstu"
    ),
    bucket_case("bucket-unicode-hyphen", 400, "hostile\u2010pipes"),
    bucket_case("bucket-google-inside", 400, "my-g00gle-pipes"),
    bucket_case("bucket-two-chars", 400, "ab"),
    bucket_case("bucket-array", 400, [PIPES_BUCKET]),
    prefix_case("prefix-unicode", "dagster-pipes/\u00e9t\u00e9/1"),
    prefix_case("prefix-dot-start", "./dagster-pipes/1"),
    prefix_case("prefix-number", 5),
    prefix_case("prefix-empty", ""),
    prefix_case("prefix-fullwidth-dots", "a/\uff0e\uff0e/1"),
]

DAY = "2024-01-02T00:00:00+00:00"
CONTEXT_SHAPES = [
    context_case("asset-keys-string", "asset_keys", asset_keys="people"),
    context_case("asset-keys-empty", "asset_keys", asset_keys=[]),
    context_case("asset-keys-number", "asset_keys", asset_keys=[1]),
    context_case("asset-key-17-parts", "asset_keys", asset_keys=["/".join("abcdefghijklmnopq")]),
    context_case("asset-keys-300", "asset_keys", asset_keys=[f"a{i}" for i in range(300)]),
    context_case("asset-key-2000-chars", "asset_keys", asset_keys=["a" * 2000]),
    context_case("key-range-missing-end", "partition_key_range",
                 partition_key_range={"start": "2024-01-01"}),
    context_case("key-range-string", "partition_key_range", partition_key_range="2024-01-01"),
    context_case("key-range-numbers", "partition_key_range",
                 partition_key_range={"start": 1, "end": 2}),
    context_case("time-window-not-iso", "partition_time_window",
                 partition_time_window={"start": "yesterday", "end": DAY}),
    context_case("time-window-backwards", "partition_time_window",
                 partition_time_window={"start": "2024-01-03T00:00:00+00:00", "end": DAY}),
    context_case("extras-string", "extras", extras="x"),
    context_case("extras-20-deep", "extras", extras=json.loads('{"a":' * 20 + "1" + "}" * 20)),
    context_case("extras-70-kib", "extras", extras={"blob": "x" * 70_000}),
    context_case("retry-number-string", "retry_number", retry_number="0"),
    context_case("retry-number-bool", "retry_number", retry_number=True),
    context_case("run-id-missing", "run_id", run_id=DROP),
    context_case("run-id-null", "run_id", run_id=None),
    context_case("unknown-context-key-20-deep", "path",
                 path=json.loads('{"a":' * 20 + "1" + "}" * 20)),
    case("unknown-context-keys-70-kib", 400, CONTEXT,
         lambda t: body(**ctx(path="x" * 40_000, env="y" * 40_000))),
    case("unknown-context-key-not-a-name", 400, CONTEXT, lambda t: body(**ctx(**{"../path": 1}))),
    context_case("code-version-other-asset", "code_version_by_asset_key",
                 code_version_by_asset_key={"other": "1"}),
    context_case("provenance-bad-shape", "provenance_by_asset_key",
                 provenance_by_asset_key={"people": {"code_version": 1}}),
    context_case("partition-key-number", "partition_key", partition_key=5),
    context_case("partition-key-control-chars", "partition_key", partition_key="2024\x00-01"),
    context_case("job-name-object", "job_name", job_name={}),
    # A partition key alone ran the step unpartitioned; one outside its range wrote other days.
    context_case("partition-key-without-range", "partition_key", partition_key="2024-01-01"),
    context_case("partition-key-outside-range", "partition_key", partition_key="2024-01-05",
                 partition_key_range={"start": "2024-01-01", "end": "2024-01-01"}),
    context_case("time-window-without-range", "partition_time_window",
                 partition_time_window={"start": "2024-01-01T00:00:00+00:00", "end": DAY}),
    context_case("time-window-naive-and-aware", "partition_time_window",
                 partition_time_window={"start": "2024-01-01T00:00:00", "end": DAY}),
    context_case("run-id-c1-control", "run_id", run_id="run\x85id"),
    context_case("retry-number-negative", "retry_number", retry_number=-1),
    context_case("retry-number-float", "retry_number", retry_number=1.0),
    context_case("input-versions-2000", "provenance_by_asset_key", provenance_by_asset_key={
        "people": {"code_version": None, "is_user_provided": False,
                   "input_data_versions": {str(i): "v" for i in range(2000)}}}),
    context_case("extras-list", "extras", extras=[1]),
]  # fmt: skip

LAKE_PATHS = [
    lake_case("lake-percent-dotdot", 400, lambda t: f"{t.lake}/%2e%2e/outside"),
    lake_case("lake-double-encoded", 400, lambda t: f"{t.lake}/%252e%252e/outside"),
    lake_case("lake-file-uri-percent", 400, lambda t: f"file://{t.lake}/%2e%2e/outside"),
    lake_case("lake-encoded-slash", 400, lambda t: f"{t.lake}/x%2f..%2f..%2foutside"),
    lake_case("lake-dotdot", 400, lambda t: f"{t.lake}/../outside"),
    lake_case("lake-dot", 400, lambda t: f"{t.lake}/./x"),
    lake_case("lake-backslash", 400, lambda t: f"{t.lake}\\..\\outside"),
    lake_case("lake-nul", 400, lambda t: f"{t.lake}/x\x00y"),
    lake_case("lake-query", 400, lambda t: f"{t.lake}/x?y=1"),
    lake_case("lake-symlink-to-sibling", 403, lambda t: f"{t.lake}/escape"),
    lake_case("table-symlink", 403, lambda t: f"{t.lake}/linked"),
    lake_case("delta-log-symlink", 403, lambda t: f"{t.lake}/inner"),
    lake_case("lake-sibling-prefix", 403, lambda t: f"{t.lake}-evil"),
    lake_case("lake-outside", 403, lambda t: str(t.outside)),
    lake_case("lake-other-bucket", 403, lambda t: f"gs://{OTHER_BUCKET}/lake"),
    lake_case("lake-gs-percent", 400, lambda t: f"gs://{OTHER_BUCKET}/%2e%2e"),
    lake_case("lake-other-scheme", 400, lambda t: "s3://elsewhere/lake"),
    case("asset-keys-two", 400, f"{CONTEXT}.asset_keys",
         lambda t: body(**ctx(asset_keys=["people", "other"])), job=True),
    case("asset-keys-null", 400, f"{CONTEXT}.asset_keys",
         lambda t: body(**ctx(asset_keys=None, code_version_by_asset_key=None,
                              provenance_by_asset_key=None)), job=True),
    case("asset-key-dotdot", 400, "asset_key", lambda t: body(**ctx(asset="../outside")), job=True),
    case("asset-key-escaped-slash", 400, "asset_key",
         lambda t: body(**ctx(asset="a\\/..\\/..")), job=True),
    # What a file system or a reader may fold, hide or cut.
    lake_case("lake-fullwidth-dotdot", 400, lambda t: f"{t.lake}/\uff0e\uff0e/outside"),
    lake_case("lake-one-dot-leaders", 400, lambda t: f"{t.lake}/\u2024\u2024/outside"),
    lake_case("lake-fullwidth-solidus", 400, lambda t: f"{t.lake}/x\uff0f..\uff0f..\uff0foutside"),
    lake_case("lake-bidi-override", 400, lambda t: f"{t.lake}/\u202eelpoep"),
    lake_case("lake-zero-width-space", 400, lambda t: f"{t.lake}/a\u200bb"),
    lake_case("lake-c1-control", 400, lambda t: f"{t.lake}/a\x85b"),
    lake_case("lake-segment-300-bytes", 400, lambda t: f"{t.lake}/{'a' * 300}"),
    lake_case("lake-path-1000-bytes", 400, lambda t: f"{t.lake}" + f"/{'a' * 200}" * 5),
    lake_case("lake-gs-fullwidth-dotdot", 400, lambda t: f"gs://{OTHER_BUCKET}/\uff0e\uff0e"),
    lake_case("lake-gs-bucket-with-port", 400, lambda t: f"gs://{OTHER_BUCKET}:443/lake"),
    lake_case("lake-gs-user-info", 400, lambda t: f"gs://user@{OTHER_BUCKET}/lake"),
    lake_case("lake-gs-uppercase-scheme", 400, lambda t: f"GS://{OTHER_BUCKET}/lake"),
    lake_case("lake-file-uri-host", 400, lambda t: f"file://elsewhere{t.outside}"),
    lake_case("lake-relative", 400, lambda t: "lake"),
    lake_case("lake-home", 400, lambda t: "~/lake"),
    lake_case("lake-dev-null", 403, lambda t: "/dev/null"),
    # A table inside another table's directory or log (a vacuum would take its files for
    # the other table's), around one, or where a file is in the way.
    lake_case("lake-in-delta-log", 400, lambda t: f"{t.lake}/tables/people/_delta_log"),
    lake_case("lake-gs-in-delta-log", 400, lambda t: f"gs://{OTHER_BUCKET}/t/_delta_log"),
    lake_case("lake-inside-a-table", 403, lambda t: f"{t.lake}/tables/people"),
    lake_case("lake-gs-inside-a-table", 403, lambda t: f"gs://{GS_LAKE_BUCKET}/lake/outer"),
    lake_case("lake-gs-around-a-table", 403, lambda t: f"gs://{GS_LAKE_BUCKET}/lake/around"),
    case("asset-around-a-table", 403, "dl_bucket", lambda t: body(**ctx(asset="tables")),
         job=True),
    case("asset-key-delta-log", 400, "asset_key",
         lambda t: body(**ctx(asset="people/_delta_log")), job=True),
    lake_case("lake-file-in-the-way", 400, lambda t: f"{t.lake}/plain-file"),
    lake_case("lake-below-a-file", 400, lambda t: f"{t.lake}/plain-file/x"),
    case("asset-key-path-too-long", 400, "asset_key",
         lambda t: body(**ctx(asset="/".join(["k" * 120] * 8))), job=True),
]  # fmt: skip

BODIES = [
    case("body-not-json", 400, "body", lambda t: b"{not json"),
    case("body-array", 400, "body", lambda t: b"[1, 2, 3]"),
    case("body-not-utf8", 400, "body", lambda t: b'{"a": "\xff"}'),
    case("body-nested-deep", 400, "body", lambda t: nested(400_000)),
    case("body-content-length-over-limit", 413, "body",
         lambda t: b"{" + b" " * MAX_BODY_BYTES + b"}"),
    case("event-unknown-field", 400, "padding", lambda t: body(padding="x"), job=True),
    case("event-unknown-field-900-kib", 400, "k" * 64,
         lambda t: body(**{"k" * 900_000: 1}), job=True),
    # Strict JSON: one body, one meaning, Unicode text throughout.
    case("body-key-twice", 400, "body", lambda t: with_raw(body(num_rows=1), b'"num_rows": 9')),
    case("body-nan", 400, "body", lambda t: with_raw(body(), b'"invalid_email_rate": NaN')),
    case("body-infinity", 400, "body", lambda t: with_raw(body(), b'"seed": -Infinity')),
    case("body-int-5000-digits", 400, "body",
         lambda t: with_raw(body(), b'"seed": ' + b"9" * 5000)),
    case("body-lone-surrogate-in-dl-bucket", 400, "dl_bucket",
         lambda t: with_raw(body(), b'"dl_bucket": "\\ud800"')),
    case("body-lone-surrogate-key", 400, "body", lambda t: with_raw(body(), b'"\\udc00": 1')),
    case("body-bom", 400, "body", lambda t: b"\xef\xbb\xbf" + json.dumps(body()).encode()),
    case("body-utf-16", 400, "body", lambda t: json.dumps(body()).encode("utf-16")),
    case("body-empty", 400, "body", lambda t: b""),
    case("body-null", 400, "body", lambda t: b"null"),
    # A compressed body is never inflated (a bomb stays a few kilobytes of junk).
    case("body-gzip-encoded", 400, "body",
         lambda t: gzip.compress(json.dumps(body(num_rows=1)).encode()),
         headers=(("Content-Encoding", "gzip"),)),
    case("body-deflate-encoded", 400, "body",
         lambda t: zlib.compress(json.dumps(body(num_rows=1)).encode()),
         headers=(("Content-Encoding", "deflate"),)),
    # Event values of the wrong type or range.
    case("num-rows-bool", 400, "num_rows", lambda t: body(num_rows=True), job=True),
    case("num-rows-float", 400, "num_rows", lambda t: body(num_rows=1.0), job=True),
    case("num-rows-string", 400, "num_rows", lambda t: body(num_rows="1"), job=True),
    case("num-rows-10-pow-30", 400, "num_rows", lambda t: body(num_rows=10**30), job=True),
    case("num-rows-zero", 400, "num_rows", lambda t: body(num_rows=0), job=True),
    case("num-rows-4000-digits", 400, "num_rows", lambda t: body(num_rows=10**4000), job=True),
    case("email-rate-4000-digits", 400, "invalid_email_rate",
         lambda t: body(invalid_email_rate=10**4000), job=True),
    case("invocation-id-too-long", 400, "invocation_id",
         lambda t: body(**ctx(extras={"invocation_id": "i" * 129})), job=True),
    case("invocation-id-number", 400, "invocation_id",
         lambda t: body(**ctx(extras={"invocation_id": 7})), job=True),
    case("invocation-id-path", 400, "invocation_id",
         lambda t: body(**ctx(extras={"invocation_id": "../other"})), job=True),
    case("seed-negative", 400, "seed", lambda t: body(seed=-1), job=True),
    case("email-rate-above-one", 400, "invalid_email_rate",
         lambda t: body(invalid_email_rate=1.5), job=True),
    case("email-rate-string", 400, "invalid_email_rate",
         lambda t: body(invalid_email_rate="0.1"), job=True),
    case("dl-bucket-object", 400, "dl_bucket", lambda t: body(dl_bucket={"path": "/"}), job=True),
]  # fmt: skip

# --- the stack and what is checked around each request ---------------------------------------


def snapshot_tree(*roots: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``roots`` (links not followed): kind, size and modification time."""
    found: dict[str, tuple[str, int, int]] = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory, name)
                info = path.lstat()
                kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
                found[str(path)] = (kind, info.st_size, info.st_mtime_ns)
    return found


def snapshot_lake(target: Target) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    """The names next to the lake and every entry in the lake and its sibling directory."""
    beside = sorted(p.name for p in target.work.iterdir() if p.name not in NOT_LAKE)
    return beside, snapshot_tree(target.lake, target.outside)


def snapshot_buckets(gcs: storage.Client) -> dict[str, set[str]]:
    return {
        bucket.name: {blob.name for blob in gcs.list_blobs(bucket.name)}
        for bucket in gcs.list_buckets()
    }


def make_table(path: Path) -> None:
    pl.DataFrame({"secret": [1, 2, 3]}).write_delta(str(path))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("hostile")
    outside = work / "outside"
    make_table(outside / "people")
    lake = work / "lake"
    (lake / "linked").mkdir(parents=True)
    (lake / "escape").symlink_to(outside)
    (lake / "linked" / "people").symlink_to(outside / "people")
    make_table(lake / "inner" / "people")
    delta_log = lake / "inner" / "people" / "_delta_log"
    for entry in delta_log.iterdir():
        entry.unlink()
    delta_log.rmdir()
    delta_log.symlink_to(outside / "people" / "_delta_log")
    make_table(lake / "tables" / "people")  # a table of the lake, never written here
    (lake / "plain-file").write_text("not a directory")
    context_file = work / "context.json"
    context_file.write_text(json.dumps(context_data()))
    roots = f"{lake},gs://{GS_LAKE_BUCKET}/lake"
    env = {"THREADS": "4", "ALLOWED_DATA_LAKE_ROOTS": roots}
    # A directory lake by default: the symlink and path tricks (gs://: test_hostile_gs_lake).
    with local_stack(work, pipes_bucket=PIPES_BUCKET, function_env=env, gs_lake=False) as stack:
        gcs = storage.Client(
            project="local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": stack.emulator_url},
        )
        gcs.create_bucket(OTHER_BUCKET)
        gs_lake = gcs.create_bucket(GS_LAKE_BUCKET)
        for table in ("lake/outer", "lake/around/people/sub"):  # tables a new one would wrap
            gs_lake.blob(f"{table}/_delta_log/00000000000000000000.json").upload_from_string("{}")
        yield Target(stack, work, lake, outside, gcs, context_file)


def post(
    target: Target,
    payload: dict[str, Any] | bytes | Body,
    headers: tuple[tuple[str, str], ...] = (),
) -> requests.Response:
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return requests.post(
        target.stack.function_url,
        data=data,
        headers={"Content-Type": "application/json", **dict(headers)},
        timeout=60,
    )


def assert_valid_request_succeeds(target: Target) -> None:
    answer = post(target, body(**ctx(asset="canary"), num_rows=1))
    assert answer.status_code == 200, answer.text


def secrets_shown(target: Target, text: str) -> list[str]:
    """What of the function's environment ``text`` shows: paths, the emulator, the bucket."""
    secrets = [str(target.work), str(REPO_ROOT), "site-packages", target.stack.emulator_url,
               PIPES_BUCKET, str(target.work).replace("/", "\\/")]  # fmt: skip
    return [secret for secret in secrets if secret in text]


def assert_refusal_reveals_nothing(target: Target, answer: requests.Response) -> None:
    text = answer.text
    assert "Traceback" not in text and "traceback" not in answer.json()["error"]
    leaked = secrets_shown(target, text)
    assert not leaked, f"the refusal shows {leaked}: {text}"


def new_pipes_messages(target: Target, before: set[str]) -> list[dict[str, Any]]:
    """The Pipes messages of the chunks written since ``before`` (one request's), in order."""
    bucket = target.gcs.bucket(PIPES_BUCKET)
    chunks = sorted(
        (name for name in {b.name for b in target.gcs.list_blobs(PIPES_BUCKET)} - before),
        key=lambda name: int(name.rsplit("/", 1)[1].removesuffix(".json")),
    )
    assert chunks, "the request wrote no Pipes messages"
    assert len({name.rsplit("/", 1)[0] for name in chunks}) == 1, chunks
    lines = [line for name in chunks for line in bucket.blob(name).download_as_text().splitlines()]
    return [json.loads(line) for line in lines]


def check_refused_in_pipes(
    target: Target, answer: requests.Response, messages: list[dict[str, Any]]
) -> None:
    """The ``closed`` message Dagster reads carries the HTTP answer's text, and nothing more:
    no stack, no chained errors, nothing of the function's environment in any message."""
    closed = [message for message in messages if message["method"] == "closed"]
    assert len(closed) == 1 and messages[-1] is closed[0], [m["method"] for m in messages]
    error = answer.json()["error"]
    exception = closed[0]["params"]["exception"]
    assert exception == {"name": error["type"], "message": error["message"], "stack": [],
                         "cause": None, "context": None}, exception  # fmt: skip
    text = json.dumps(messages)
    leaked = secrets_shown(target, text)
    assert "Traceback" not in text and not leaked, f"the Pipes messages show {leaked}: {text}"


# A refusal names the field and a reason; it never echoes the request back.
MAX_REFUSAL_BYTES = 1024


def check_refused(target: Target, case: Case, answer: requests.Response) -> None:
    assert answer.status_code == case.status, answer.text
    assert len(answer.content) <= MAX_REFUSAL_BYTES, answer.text[:2000]
    error = answer.json()["error"]
    assert error["field"].startswith(case.field), error
    assert error["message"], error
    assert_refusal_reveals_nothing(target, answer)


@pytest.mark.parametrize(
    "case", [*INLINE_ONLY, *PIPES_BUCKET_ONLY, *CONTEXT_SHAPES, *LAKE_PATHS, *BODIES]
)
def test_a_hostile_request_is_refused_and_changes_nothing(target: Target, case: Case) -> None:
    payload = case.make(target)
    lake, buckets = snapshot_lake(target), snapshot_buckets(target.gcs)

    answer = post(target, payload, case.headers)

    check_refused(target, case, answer)
    assert snapshot_lake(target) == lake
    after = snapshot_buckets(target.gcs)
    assert sorted(after) == sorted(buckets), "a bucket appeared"
    for name, objects in after.items():
        if name != PIPES_BUCKET or not case.reaches_job:
            new = objects - buckets[name]
            assert objects == buckets[name], f"objects appeared in {name}: {new}"
    if case.reaches_job:
        check_refused_in_pipes(target, answer, new_pipes_messages(target, buckets[PIPES_BUCKET]))
    assert_valid_request_succeeds(target)


def test_a_chunked_body_over_the_limit_is_413(target: Target) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"padding": "'
        for _ in range(2 * MAX_BODY_BYTES // 65536):
            yield b"x" * 65536
        yield b'"}'

    buckets = snapshot_buckets(target.gcs)
    answer = requests.post(
        target.stack.function_url,
        data=chunks(),  # a generator: sent with Transfer-Encoding: chunked, no Content-Length
        headers={"Content-Type": "application/json"},
        timeout=60,
    )

    assert "Content-Length" not in answer.request.headers
    check_refused(target, Case("chunked", lambda t: b"", 413, "body"), answer)
    assert snapshot_buckets(target.gcs) == buckets
    assert_valid_request_succeeds(target)


def test_the_escapes_did_not_reach_the_table_next_to_the_lake(target: Target) -> None:
    assert pl.read_delta(str(target.outside / "people")).height == 3
    assert pl.read_delta(str(target.lake / "tables" / "people")).height == 3
    assert not (target.work / "lake-evil").exists()


def test_days_for_an_unpartitioned_table_are_refused_and_change_nothing(target: Target) -> None:
    first = post(target, body(**ctx(asset="layout"), num_rows=2))
    assert first.status_code == 200, first.text
    lake = snapshot_lake(target)
    days = ctx(
        asset="layout",
        partition_key="2024-01-01",
        partition_key_range={"start": "2024-01-01", "end": "2024-01-01"},
        partition_time_window={"start": "2024-01-01T00:00:00+00:00", "end": DAY},
    )

    answer = post(target, body(**days, num_rows=2))  # was a 500 from delta-rs

    check_refused(target, Case("layout", lambda t: b"", 400, "partition_key_range"), answer)
    assert snapshot_lake(target) == lake
    assert pl.read_delta(str(target.lake / "layout")).height == 2
    assert_valid_request_succeeds(target)


def test_header_values_cannot_forge_log_fields(target: Target) -> None:
    forged = f'people", "severity": "CRITICAL", "x": "{uuid.uuid4().hex}'
    headers = {
        "X-Dagster-Asset-Key": forged,
        "X-Dagster-Run-Id": "r" * 5000,  # over the label limit: left out
        "traceparent": f"00-{'a' * 32}-{'b' * 16}-01-{'x' * 600}",  # malformed: ignored
        "X-Cloud-Trace-Context": "not-a-trace/1;o=1",
    }
    answer = requests.post(
        target.stack.function_url,
        data=json.dumps(body(**ctx(asset="canary"), num_rows=1)),
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )

    assert answer.status_code == 200, answer.text
    lines = (target.work / "function.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if forged[-32:] in line]
    assert entries, "the request wrote no log line"
    for entry in entries:
        assert entry["severity"] in {"INFO", "WARNING"} and "x" not in entry
        assert entry["logging.googleapis.com/labels"] == {"dagster_asset_key": forged}
        assert "logging.googleapis.com/trace" not in entry
    assert not any("r" * 5000 in line for line in lines)


def test_hostile_requests_in_parallel_leave_valid_ones_unaffected(target: Target) -> None:
    attacks: list[Callable[[], dict[str, Any] | bytes]] = [
        lambda: body(raw_context=bomb(300 * MiB)),
        lambda: body(context={"path": "/dev/zero"}),
        lambda: nested(400_000),
        lambda: body(**{"k" * 900_000: 1}),
        lambda: body(dl_bucket=f"{target.lake}/%2e%2e/outside"),
        lambda: body(**msgs(bucket=OTHER_BUCKET)),
    ]
    tables = [f"parallel_{i}" for i in range(3)]
    with ThreadPoolExecutor(max_workers=2 * len(attacks) + len(tables)) as pool:
        refused = [pool.submit(post, target, attack()) for attack in attacks * 2]
        valid = [pool.submit(post, target, body(**ctx(asset=name), num_rows=25)) for name in tables]
        answers = [future.result() for future in valid]
        refusals = [future.result() for future in refused]

    assert [answer.status_code for answer in answers] == [200] * len(tables), answers[0].text
    for name in tables:
        assert pl.read_delta(str(target.lake / name)).height == 25
    assert all(400 <= answer.status_code < 500 for answer in refusals), [
        (answer.status_code, answer.text[:200]) for answer in refusals
    ]
    assert not any("Traceback" in answer.text for answer in refusals)


# --- memory -------------------------------------------------------------------------------------


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def function_worker_pid(port: int) -> int:
    """The process serving requests: holds the listening socket, child of the one that
    opened it (gunicorn's master and its single worker both hold it)."""
    socket = f"socket:[{_listening_inode(port)}]"
    holders = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == socket for fd in (proc / "fd").iterdir()):
                holders.add(int(proc.name))
        except OSError:
            continue
    assert holders, "no process holds the function's socket"
    parent = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
              for pid in holders}  # fmt: skip
    workers = [pid for pid in holders if parent[pid] in holders]
    return (workers or sorted(holders))[0]


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


class SizedBody:
    """A request body of ``size`` spaces, sent with its Content-Length as it is read."""

    def __init__(self, size: int) -> None:
        self.size, self._sent = size, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(MiB):
            yield block

    def read(self, size: int = -1) -> bytes:
        count = min(self.size - self._sent, size if size >= 0 else self.size)
        self._sent += count
        return b" " * count


Body = SizedBody | Iterator[bytes]


def big_body(size: int, *, chunked: bool) -> Body:
    """``size`` spaces, chunked (a generator: no length known in advance) or not."""
    return iter(SizedBody(size)) if chunked else SizedBody(size)


MEMORY_CASES = [
    case("context-path-dev-zero", 400, CONTEXT, lambda t: body(context={"path": "/dev/zero"})),
    raw_context_case("context-bomb-300-mib", 413, lambda: bomb(300 * MiB)),
    case("body-chunked-300-mib", 413, "body", lambda t: big_body(300 * MiB, chunked=True)),
    case("body-content-length-300-mib", 413, "body",
         lambda t: big_body(300 * MiB, chunked=False)),
]  # fmt: skip


def reset_peak_rss(pid: int) -> int:
    """Make the worker's peak RSS (VmHWM) its current RSS and return it, in bytes; fail when
    the kernel does not allow it: the RSS after a request would hide a freed peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        pytest.fail(f"cannot reset the peak RSS of the function's worker ({exc})")
    return _status_kib(pid, "VmHWM") * 1024


def peak_rss_growth(
    pid: int, send: Callable[[], requests.Response]
) -> tuple[int, requests.Response]:
    """How far the worker's peak RSS rose above its RSS before ``send``, in bytes."""
    before = reset_peak_rss(pid)
    answer = send()
    return _status_kib(pid, "VmHWM") * 1024 - before, answer


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_a_memory_attack_grows_the_worker_by_less_than_256_mib(target: Target, case: Case) -> None:
    payload = case.make(target)
    pid = function_worker_pid(target.port)

    growth, answer = peak_rss_growth(pid, lambda: post(target, payload))

    check_refused(target, case, answer)
    if isinstance(payload, SizedBody):
        assert answer.request.headers["Content-Length"] == str(payload.size)
    elif isinstance(payload, Iterator):
        assert "Content-Length" not in answer.request.headers
    assert growth < MEMORY_BOUND, f"the worker's peak RSS grew by {growth / MiB:.0f} MiB"
    assert function_worker_pid(target.port) == pid, "the worker was replaced"
    assert_valid_request_succeeds(target)
