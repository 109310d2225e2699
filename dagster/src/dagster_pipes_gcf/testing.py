"""A test double for unit tests of assets that call a Cloud Function: no emulator, no network.

:class:`FakeCloudFunction` runs a Python handler ``handler(pipes, event) -> dict`` in process
when the asset calls the function, and :class:`InMemoryStorageClient` stands in for the Pipes
bucket. Everything between them is the production code path and protocol: the real
:class:`~dagster_pipes_gcf.PipesCloudFunctionClient` and
:class:`~dagster_pipes_gcf.CloudFunctionInvoker` send the real JSON request body through
``requests`` (only the socket is replaced), the handler gets a real
``dagster_pipes.PipesContext`` whose messages are written as JSON-lines chunks
``<key_prefix>/<n>.json``, and the real :class:`~dagster_pipes_gcf.PipesCloudStorageMessageReader`
reads them. So the asset sees logs, materialization metadata and check results as it would in
production, and a handler that raises fails the step with its remote error (its traceback
shown once in the run).

The doubles are strict: a call the production code does not make (another URL, another
bucket, a storage method the reader and writer never use) raises instead of pretending.
What they leave out is the function side's own plumbing (``gcf_pipes``: bounds on the request,
context validation, cancellation markers, deadlines); test that through the real local stack.

Example::

    def handler(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
        pipes.report_asset_materialization(metadata={"rows": 3})
        return {"rows": 3}

    function = FakeCloudFunction(handler, url="https://my-function-xyz-ew.a.run.app")
    result = dg.materialize([my_asset], resources={"cloud_function": function.pipes_client()})
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContext,
    PipesDefaultContextLoader,
    PipesMappingParamsLoader,
    PipesMessage,
    PipesMessageWriter,
    PipesMessageWriterChannel,
    PipesParams,
)
from google.api_core import exceptions as gexc

from dagster_pipes_gcf.auth import IdTokenAuth, needs_id_token
from dagster_pipes_gcf.client import PipesCloudFunctionClient
from dagster_pipes_gcf.invocation import CloudFunctionInvoker, InvocationPolicy
from dagster_pipes_gcf.message_reader import PipesCloudStorageMessageReader, PollingPolicy

Handler = Callable[[PipesContext, Mapping[str, Any]], Mapping[str, Any] | None]

DEFAULT_FUNCTION_URL = "https://europe-west1-fake-project.cloudfunctions.net/fake-function"
DEFAULT_PIPES_BUCKET = "fake-pipes-bucket"
FAKE_ID_TOKEN = "fake-id-token"
# Loggers whose records never reach Dagster (transport chatter), as in the deployed function.
NOT_FORWARDED_LOGGERS = ("urllib3", "google", "werkzeug", "requests", "dagster")


class UnsupportedByFake(NotImplementedError):
    """The code under test made a call that the double does not serve (and production would
    not accept, or the double cannot imitate faithfully)."""


def _unsupported(owner: object, name: str) -> UnsupportedByFake:
    return UnsupportedByFake(
        f"{type(owner).__name__}.{name} is not supported by the test double: it serves only "
        "the calls dagster_pipes_gcf's client, reader and the Pipes message writer make"
    )


class _Strict:
    """Attribute access beyond what the class defines raises :class:`UnsupportedByFake`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _unsupported(self, name)


def _gcs_error(kind: type[gexc.GoogleAPICallError], message: str) -> gexc.GoogleAPICallError:
    """The error google-cloud-storage raises for that HTTP status (404, 412)."""
    return kind(message)


class InMemoryStorageClient(_Strict):
    """The subset of ``google.cloud.storage.Client`` that Pipes uses, kept in memory.

    Only ``buckets`` exist; like GCS, ``bucket(name)`` makes no request and reading from a
    bucket that does not exist raises ``NotFound``. Thread-safe: the reader polls from a
    background thread while the handler writes.
    """

    def __init__(self, buckets: tuple[str, ...] = (DEFAULT_PIPES_BUCKET,)):
        self._objects: dict[str, dict[str, str]] = {name: {} for name in buckets}
        self._lock = threading.Lock()

    def bucket(self, bucket_name: str) -> InMemoryBucket:
        """A handle on ``bucket_name`` (no request, as in google-cloud-storage)."""
        return InMemoryBucket(self, bucket_name)

    def list_blobs(self, bucket_or_name: InMemoryBucket | str, prefix: str = "") -> list[Any]:
        """The objects of a bucket whose names start with ``prefix``, sorted by name."""
        name = bucket_or_name if isinstance(bucket_or_name, str) else bucket_or_name.name
        handle = self.bucket(name)
        return [handle.blob(key) for key in self.object_names(name) if key.startswith(prefix)]

    def object_names(self, bucket_name: str) -> list[str]:
        """Names of the objects in ``bucket_name`` (for assertions in tests)."""
        with self._lock:
            return sorted(self._existing(bucket_name))

    def read(self, bucket_name: str, object_name: str) -> str:
        """An object's text (for assertions in tests); ``KeyError`` when it does not exist."""
        with self._lock:
            return self._existing(bucket_name)[object_name]

    def _existing(self, bucket_name: str) -> dict[str, str]:
        if bucket_name not in self._objects:
            raise _gcs_error(gexc.NotFound, f"The specified bucket does not exist: {bucket_name}")
        return self._objects[bucket_name]

    def _download(self, bucket_name: str, object_name: str) -> str:
        with self._lock:
            objects = self._existing(bucket_name)
            if object_name not in objects:
                raise _gcs_error(gexc.NotFound, f"No such object: {bucket_name}/{object_name}")
            return objects[object_name]

    def _upload(self, bucket_name: str, object_name: str, data: str, only_if_new: bool) -> None:
        with self._lock:
            objects = self._existing(bucket_name)
            if only_if_new and object_name in objects:
                raise _gcs_error(
                    gexc.PreconditionFailed,
                    f"At least one of the pre-conditions you specified did not hold: "
                    f"{bucket_name}/{object_name} exists",
                )
            objects[object_name] = data


class InMemoryBucket(_Strict):
    """The subset of ``google.cloud.storage.Bucket`` that Pipes uses."""

    def __init__(self, client: InMemoryStorageClient, name: str):
        self.client = client
        self.name = name

    def blob(self, blob_name: str) -> InMemoryBlob:
        return InMemoryBlob(self, blob_name)


class InMemoryBlob(_Strict):
    """The subset of ``google.cloud.storage.Blob`` that Pipes uses: text objects only."""

    def __init__(self, bucket: InMemoryBucket, name: str):
        self.bucket = bucket
        self.name = name

    def download_as_text(self, *, retry: Any = None, timeout: float | None = None) -> str:
        return self.bucket.client._download(self.bucket.name, self.name)

    def exists(self, *, timeout: float | None = None) -> bool:
        try:
            self.bucket.client._download(self.bucket.name, self.name)
        except gexc.NotFound:
            return False
        return True

    def upload_from_string(
        self,
        data: str | bytes,
        content_type: str | None = None,
        *,
        if_generation_match: int | None = None,
        timeout: float | None = None,
        retry: Any = None,
    ) -> None:
        """Store ``data``; with ``if_generation_match=0`` only if the object is new (else
        ``PreconditionFailed``, HTTP 412 in GCS). Other generations are not supported."""
        if if_generation_match not in (None, 0):
            raise _unsupported(self, "upload_from_string(if_generation_match != 0)")
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        self.bucket.client._upload(self.bucket.name, self.name, text, if_generation_match == 0)


class _ChunkChannel(PipesMessageWriterChannel):
    """Writes each message at once as the next chunk ``<key_prefix>/<n>.json`` (one JSON
    line), never overwriting one: the chunk layout the function-side writer uses."""

    def __init__(self, bucket: InMemoryBucket, key_prefix: str):
        self._bucket = bucket
        self._key_prefix = key_prefix
        self._next_index = 1
        self._lock = threading.Lock()

    def write_message(self, message: PipesMessage) -> None:
        line = json.dumps(message)
        with self._lock:
            key = f"{self._key_prefix}/{self._next_index}.json"
            self._bucket.blob(key).upload_from_string(
                line, content_type="application/x-ndjson", if_generation_match=0
            )
            self._next_index += 1

    @property
    def chunks_written(self) -> int:
        return self._next_index - 1


class InMemoryChunkWriter(PipesMessageWriter[_ChunkChannel]):
    """A Pipes message writer to a bucket of :class:`InMemoryStorageClient`, at the bucket
    and key prefix the Dagster-side reader sent in ``DAGSTER_PIPES_MESSAGES``."""

    def __init__(self, storage: InMemoryStorageClient):
        self._storage = storage
        self.channel: _ChunkChannel | None = None

    @contextmanager
    def open(self, params: PipesParams) -> Iterator[_ChunkChannel]:
        bucket, key_prefix = params.get("bucket"), params.get("key_prefix")
        if not isinstance(bucket, str) or not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"{DAGSTER_PIPES_MESSAGES_ENV_VAR} needs bucket and key_prefix")
        self.channel = _ChunkChannel(self._storage.bucket(bucket), key_prefix)
        yield self.channel


@dataclass(frozen=True)
class FakeCall:
    """One request the fake function answered."""

    url: str
    event: Mapping[str, Any]
    headers: Mapping[str, str]
    status: int
    body: Mapping[str, Any]


class FakeCloudFunction:
    """An HTTP Cloud Function served in process: each call runs ``handler(pipes, event)``.

    The handler gets a real ``PipesContext`` (its messages go to the in-memory Pipes bucket)
    and the request body without the Pipes params, as a handler of
    ``gcf_pipes.handle_pipes_request`` does, so the same business-logic function can be
    tested here and deployed there; its Python ``logging`` records (INFO and up) reach Dagster
    as with ``gcf_pipes.install_logging_bridge()``. The answer is the one that function gives: 200
    ``{"status": "ok", "result": ...}``; for an exception, HTTP 500 with its type, message
    and traceback (or, for an error carrying a 4xx ``status`` such as ``gcf_pipes``'
    ``RequestError``, that status without a traceback), and the Pipes context is closed with
    the exception.

    Args:
        handler: the function's business logic; its return value (JSON) is the ``result``.
        url: the URL the asset calls; any other URL raises :class:`UnsupportedByFake`. An
            ``https`` URL requires the ID token the invoker sends (a fake one here).
        pipes_bucket: the function's Pipes bucket; a request naming another one gets 403.
        storage: the Pipes bucket's storage; a new :class:`InMemoryStorageClient` by default.

    Attributes:
        calls: the requests answered so far, in order.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        url: str = DEFAULT_FUNCTION_URL,
        pipes_bucket: str = DEFAULT_PIPES_BUCKET,
        storage: InMemoryStorageClient | None = None,
    ):
        self.handler = handler
        self.url = url
        self.pipes_bucket = pipes_bucket
        self.storage = storage or InMemoryStorageClient((pipes_bucket,))
        self.calls: list[FakeCall] = []

    def pipes_client(
        self, invocation: InvocationPolicy | None = None, **client_kwargs: Any
    ) -> PipesCloudFunctionClient:
        """A production :class:`PipesCloudFunctionClient` wired to this fake."""
        return PipesCloudFunctionClient(
            message_reader=self.message_reader(),
            invoker=self.invoker(invocation),
            **client_kwargs,
        )

    def message_reader(
        self, polling: PollingPolicy | None = None
    ) -> PipesCloudStorageMessageReader:
        """The production reader on the in-memory Pipes bucket (quick polling by default)."""
        return PipesCloudStorageMessageReader(
            bucket=self.pipes_bucket,
            client=self.storage,
            polling=polling or PollingPolicy(min_interval=0.01, max_interval=0.1),
        )

    def invoker(self, policy: InvocationPolicy | None = None) -> CloudFunctionInvoker:
        """The production invoker, its HTTP transport and ID tokens replaced by this fake."""
        return CloudFunctionInvoker(
            policy=policy or InvocationPolicy(attempts=1),
            auth=IdTokenAuth(default_factory=lambda _audience: _FakeIdTokenCredentials()),
            session=self.http_session(),
        )

    def http_session(self) -> requests.Session:
        """A ``requests.Session`` whose every request is served by this fake."""
        session = requests.Session()
        adapter = _FakeFunctionAdapter(self)
        for scheme in ("https://", "http://"):
            session.mount(scheme, adapter)
        return session

    def answer(self, url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """Serve one request: the HTTP status and the JSON body (or text) of the answer."""
        if url.rstrip("/") != self.url.rstrip("/"):
            raise UnsupportedByFake(f"the fake function serves {self.url}, not {url}")
        if needs_id_token(url) and headers.get("Authorization") != f"Bearer {FAKE_ID_TOKEN}":
            return 401, "Your client does not have permission to the requested URL."
        request = json.loads(body)
        event = {
            key: value
            for key, value in request.items()
            if key not in (DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR)
        }
        status, answer = self._run(request, event)
        self.calls.append(FakeCall(url, event, dict(headers), status, answer))
        return status, answer

    def _run(self, request: Mapping[str, Any], event: Mapping[str, Any]) -> tuple[int, Any]:
        started = time.monotonic()
        params = PipesMappingParamsLoader(request)
        if params.load_messages_params().get("bucket") != self.pipes_bucket:
            message = "Pipes message param 'bucket' is not this function's Pipes bucket"
            return 403, _error("RequestError", message, field="DAGSTER_PIPES_MESSAGES.bucket")
        writer = InMemoryChunkWriter(self.storage)
        status, answer = 200, dict[str, Any]()
        try:
            with (
                PipesContext(params, PipesDefaultContextLoader(), writer) as pipes,
                _forwarding_logging(pipes),
            ):
                result = dict(self.handler(pipes, event) or {})
            answer = {"status": "ok", "result": json.loads(json.dumps(result))}
        except Exception as exc:  # noqa: BLE001 - a crash is the function's HTTP 500, as deployed
            status, answer = _error_answer(exc)
        answer["duration_s"] = round(time.monotonic() - started, 3)
        answer["pipes_chunks"] = writer.channel.chunks_written if writer.channel else 0
        return status, answer


class _LoggingBridge(logging.Handler):
    """Forwards the handler's ``logging`` records (INFO and up, from its thread) to its Pipes
    context, as ``gcf_pipes.install_logging_bridge()`` does in the deployed function."""

    def __init__(self, pipes: PipesContext):
        super().__init__(level=logging.INFO)
        self._pipes = pipes
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread or record.name.startswith(NOT_FORWARDED_LOGGERS):
            return
        if not self._pipes.is_closed:
            self._pipes.log.log(record.levelno, record.getMessage())


@contextmanager
def _forwarding_logging(pipes: PipesContext) -> Iterator[None]:
    root = logging.getLogger()
    level, bridge = root.level, _LoggingBridge(pipes)
    root.addHandler(bridge)
    if level == logging.NOTSET or level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(bridge)
        root.setLevel(level)


def _error(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"status": "error", "error": {"type": kind, "message": message, **details}}


def _error_answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:  # the caller's error: no traceback
        return status, _error(type(exc).__name__, str(exc), field=getattr(exc, "field", None))
    trace = "".join(traceback.format_exception(exc))
    return 500, _error(type(exc).__name__, str(exc), traceback=trace)


class _FakeIdTokenCredentials:
    """Always-valid ID-token credentials (what ``IdTokenAuth`` needs of google-auth's)."""

    token = FAKE_ID_TOKEN
    valid = True

    def refresh(self, request: Any) -> None:
        raise UnsupportedByFake("the fake ID token never needs a refresh")


class _FakeFunctionAdapter(requests.adapters.BaseAdapter):
    """A transport adapter that hands POSTs to the fake function instead of a socket."""

    def __init__(self, function: FakeCloudFunction):
        super().__init__()
        self._function = function

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        if request.method != "POST" or request.url is None:
            raise UnsupportedByFake(f"the fake function serves POST only, not {request.method}")
        body = request.body or b""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        status, answer = self._function.answer(request.url, dict(request.headers), raw)
        response = requests.Response()
        response.status_code = status
        response.url = request.url
        response.request = request
        if isinstance(answer, str):
            response.headers["Content-Type"] = "text/plain"
            response.raw = io.BytesIO(answer.encode("utf-8"))
        else:
            response.headers["Content-Type"] = "application/json"
            response.raw = io.BytesIO(json.dumps(answer).encode("utf-8"))
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass
