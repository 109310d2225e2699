"""A test double for unit tests of assets that call a Cloud Function: no emulator, no network.

:class:`FakeCloudFunction` runs ``handler(pipes, event) -> dict`` in process behind the
production client, invoker and reader (only the socket is replaced), with a real
``PipesContext`` writing the function side's JSON-lines chunks to an
:class:`InMemoryStorageClient`. A call production code does not make raises
:class:`UnsupportedByFake`. ``gcf_pipes``' own plumbing (request bounds, cancellation,
deadlines) is left out: test that through the local stack.

Example::

    function = FakeCloudFunction(handler, url="https://my-function-xyz-ew.a.run.app")
    result = dg.materialize([my_asset], resources={"cloud_function": function.pipes_client()})
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
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


class _Strict:
    """Attribute access beyond what the class defines raises :class:`UnsupportedByFake`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise UnsupportedByFake(
            f"{type(self).__name__}.{name} is not supported by the test double: it serves only "
            "the calls dagster_pipes_gcf's client, reader and the Pipes message writer make"
        )


def _gcs_error(kind: type[gexc.GoogleAPICallError], message: str) -> gexc.GoogleAPICallError:
    return kind(message)


class InMemoryStorageClient(_Strict):
    """The part of ``google.cloud.storage.Client`` that Pipes uses, in memory and thread-safe.

    Only ``buckets`` exist; as in GCS, ``bucket(name)`` makes no request, and reading a
    missing bucket or object raises ``NotFound``.
    """

    def __init__(self, buckets: tuple[str, ...] = (DEFAULT_PIPES_BUCKET,)):
        self._objects: dict[str, dict[str, str]] = {name: {} for name in buckets}
        self._lock = threading.Lock()

    def bucket(self, bucket_name: str) -> InMemoryBucket:
        return InMemoryBucket(self, bucket_name)

    def list_blobs(self, bucket_or_name: InMemoryBucket | str, prefix: str = "") -> list[Any]:
        name = bucket_or_name if isinstance(bucket_or_name, str) else bucket_or_name.name
        return [
            self.bucket(name).blob(key) for key in self.object_names(name) if key.startswith(prefix)
        ]

    def object_names(self, bucket_name: str) -> list[str]:
        """The names of the objects in ``bucket_name``, sorted (for assertions in tests)."""
        with self._lock:
            return sorted(self._bucket_objects(bucket_name))

    def read(self, bucket_name: str, object_name: str) -> str:
        """An object's text (for assertions in tests)."""
        with self._lock:
            objects = self._bucket_objects(bucket_name)
            if object_name not in objects:
                raise _gcs_error(gexc.NotFound, f"No such object: {bucket_name}/{object_name}")
            return objects[object_name]

    def _write(self, bucket_name: str, object_name: str, text: str, only_if_new: bool) -> None:
        with self._lock:
            objects = self._bucket_objects(bucket_name)
            if only_if_new and object_name in objects:
                raise _gcs_error(gexc.PreconditionFailed, f"{bucket_name}/{object_name} exists")
            objects[object_name] = text

    def _bucket_objects(self, bucket_name: str) -> dict[str, str]:
        if bucket_name not in self._objects:
            raise _gcs_error(gexc.NotFound, f"The specified bucket does not exist: {bucket_name}")
        return self._objects[bucket_name]


class InMemoryBucket(_Strict):
    """The part of ``google.cloud.storage.Bucket`` that Pipes uses."""

    def __init__(self, client: InMemoryStorageClient, name: str):
        self.client = client
        self.name = name

    def blob(self, blob_name: str) -> InMemoryBlob:
        return InMemoryBlob(self, blob_name)


class InMemoryBlob(_Strict):
    """The part of ``google.cloud.storage.Blob`` that Pipes uses: text objects only."""

    def __init__(self, bucket: InMemoryBucket, name: str):
        self.bucket = bucket
        self.name = name

    def download_as_text(self, *, retry: Any = None, timeout: float | None = None) -> str:
        return self.bucket.client.read(self.bucket.name, self.name)

    def exists(self, *, timeout: float | None = None) -> bool:
        return self.name in self.bucket.client.object_names(self.bucket.name)

    def upload_from_string(
        self,
        data: str | bytes,
        content_type: str | None = None,
        *,
        if_generation_match: int | None = None,
        timeout: float | None = None,
        retry: Any = None,
    ) -> None:
        if if_generation_match not in (None, 0):
            raise UnsupportedByFake("upload_from_string(if_generation_match != 0) is not supported")
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        self.bucket.client._write(self.bucket.name, self.name, text, if_generation_match == 0)


class _ChunkChannel(PipesMessageWriterChannel):
    """Writes each message at once as the next chunk ``<key_prefix>/<n>.json``, never
    overwriting one: the chunk layout of the function-side writer."""

    def __init__(self, bucket: InMemoryBucket, key_prefix: str):
        self._bucket = bucket
        self._key_prefix = key_prefix
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def write_message(self, message: PipesMessage) -> None:
        with self._lock:
            blob = self._bucket.blob(f"{self._key_prefix}/{next(self._numbers)}.json")
            blob.upload_from_string(
                json.dumps(message), content_type="application/x-ndjson", if_generation_match=0
            )


class _ChunkWriter(PipesMessageWriter[_ChunkChannel]):
    """Writes to the bucket and key prefix the Dagster-side reader sent."""

    def __init__(self, storage: InMemoryStorageClient):
        self._storage = storage

    @contextmanager
    def open(self, params: PipesParams) -> Iterator[_ChunkChannel]:
        yield _ChunkChannel(self._storage.bucket(params["bucket"]), params["key_prefix"])


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

    The handler gets a real ``PipesContext`` and the request body without the Pipes params,
    as under ``gcf_pipes.handle_pipes_request``; its ``logging`` records (INFO and up) reach
    Dagster. It answers as that function does: 200 ``{"status": "ok", "result": ...}``; for an
    exception, HTTP 500 with its traceback, or the 4xx ``status`` an error carries
    (``gcf_pipes.RequestError``) without one.

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
            message_reader=self.message_reader(), invoker=self.invoker(invocation), **client_kwargs
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
        token = SimpleNamespace(token=FAKE_ID_TOKEN, valid=True)
        session = requests.Session()
        for scheme in ("http://", "https://"):
            session.mount(scheme, _FakeFunctionAdapter(self))
        return CloudFunctionInvoker(
            policy=policy or InvocationPolicy(attempts=1),
            auth=IdTokenAuth(default_factory=lambda _audience: token),
            session=session,
        )

    def answer(self, url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """Serve one request: the HTTP status and the JSON body (or text) of the answer."""
        if url.rstrip("/") != self.url.rstrip("/"):
            raise UnsupportedByFake(f"the fake function serves {self.url}, not {url}")
        if needs_id_token(url) and headers.get("Authorization") != f"Bearer {FAKE_ID_TOKEN}":
            return 401, "Your client does not have permission to the requested URL."
        request = json.loads(body)
        pipes_params = (DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR)
        event = {key: value for key, value in request.items() if key not in pipes_params}
        started = time.monotonic()
        status, answer = self._run(PipesMappingParamsLoader(request), event)
        answer["duration_s"] = round(time.monotonic() - started, 3)
        self.calls.append(FakeCall(url, event, dict(headers), status, answer))
        return status, answer

    def _run(
        self, params: PipesMappingParamsLoader, event: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if params.load_messages_params().get("bucket") != self.pipes_bucket:
            message = "Pipes message param 'bucket' is not this function's Pipes bucket"
            return 403, _error("RequestError", message, field="DAGSTER_PIPES_MESSAGES.bucket")
        try:
            writer = _ChunkWriter(self.storage)
            with (
                PipesContext(params, PipesDefaultContextLoader(), writer) as pipes,
                _forwarding_logging(pipes),
            ):
                result = dict(self.handler(pipes, event) or {})
            return 200, {"status": "ok", "result": json.loads(json.dumps(result))}
        except Exception as exc:  # noqa: BLE001 - a crash is the function's HTTP 500, as deployed
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500:  # the caller's: no traceback
                return status, _error(
                    type(exc).__name__, str(exc), field=getattr(exc, "field", None)
                )
            trace = "".join(traceback.format_exception(exc))
            return 500, _error(type(exc).__name__, str(exc), traceback=trace)


def _error(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"status": "error", "error": {"type": kind, "message": message, **details}}


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
        text = answer if isinstance(answer, str) else json.dumps(answer)
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.headers["Content-Type"] = (
            "text/plain" if isinstance(answer, str) else "application/json"
        )
        response.raw, response.encoding = io.BytesIO(text.encode("utf-8")), "utf-8"
        return response

    def close(self) -> None:
        pass
