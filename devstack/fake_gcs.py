"""An in-memory stand-in for the slice of google-cloud-storage the Pipes reader/writer use.

For unit tests and the in-process memory benchmark only. It enforces
``if_generation_match=0`` as GCS and the local emulator (fake-gcs-server) do; every
capability is also tested against the emulator process. Each method takes exactly the
arguments of its google-cloud-storage original: a call the real library would refuse with
``TypeError`` is refused here too.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from google.api_core import exceptions as gexc
from google.cloud import storage

Fault = Callable[[str, str], None]  # (operation, key) -> may raise
Method = TypeVar("Method", bound=Callable[..., Any])


def like(real: Callable[..., Any]) -> Callable[[Method], Method]:
    """Checks each call against ``real``'s signature, then passes the arguments by name."""
    signature = inspect.signature(real)

    def decorate(fake: Method) -> Method:
        @functools.wraps(fake)
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            arguments = signature.bind(self, *args, **kwargs).arguments
            arguments.pop("self")
            return fake(self, **arguments)

        return cast(Method, checked)

    return decorate


def fail_first(operation: str, times: int, error: Exception) -> Fault:
    """A fault raising ``error`` on the first ``times`` calls of ``operation``."""
    left = [times]

    def fault(op: str, key: str) -> None:
        if op == operation and left[0] > 0:
            left[0] -= 1
            raise error

    return fault


def always_fail(error: Exception) -> Fault:
    """A fault raising ``error`` on every call."""

    def fault(op: str, key: str) -> None:
        raise error

    return fault


@dataclass
class FakeClient:
    """``storage.Client`` look-alike holding buckets in memory, with injectable faults."""

    objects: dict[str, dict[str, str]] = field(default_factory=dict)
    fault: Fault | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @like(storage.Client.bucket)
    def bucket(self, bucket_name: str, **_: Any) -> FakeBucket:
        return FakeBucket(self, bucket_name)

    @like(storage.Client.get_bucket)
    def get_bucket(self, bucket_or_name: FakeBucket | str, **_: Any) -> FakeBucket:
        """Only for the stock ``dagster_pipes.PipesGCSMessageWriter`` (ours never call it)."""
        name = _bucket_name(bucket_or_name)
        self._bucket_objects(name)
        return self.bucket(name)

    @like(storage.Client.create_bucket)
    def create_bucket(self, bucket_or_name: FakeBucket | str, **_: Any) -> FakeBucket:
        name = _bucket_name(bucket_or_name)
        self.objects.setdefault(name, {})
        return self.bucket(name)

    @like(storage.Client.list_blobs)
    def list_blobs(
        self,
        bucket_or_name: FakeBucket | str,
        max_results: int | None = None,
        prefix: str | None = None,
        **_: Any,
    ) -> Iterator[FakeBlob]:
        name, prefix = _bucket_name(bucket_or_name), prefix or ""
        self._fault("list", prefix)
        keys = [key for key in sorted(self._bucket_objects(name)) if key.startswith(prefix)]
        for key in keys[:max_results]:
            yield FakeBlob(self.bucket(name), key)

    def _bucket_objects(self, name: str) -> dict[str, str]:
        if name not in self.objects:
            raise gexc.NotFound(f"The specified bucket does not exist: {name}")
        return self.objects[name]

    def _fault(self, operation: str, key: str) -> None:
        if self.fault is not None:
            self.fault(operation, key)


@dataclass
class FakeBucket:
    client: FakeClient
    name: str

    @like(storage.Bucket.blob)
    def blob(self, blob_name: str, **_: Any) -> FakeBlob:
        return FakeBlob(self, blob_name)


@dataclass
class FakeBlob:
    bucket: FakeBucket
    name: str

    @like(storage.Blob.upload_from_string)
    def upload_from_string(
        self, data: str, if_generation_match: int | None = None, **_: Any
    ) -> None:
        client = self.bucket.client
        client._fault("upload", self.name)
        with client.lock:
            objects = client._bucket_objects(self.bucket.name)
            if if_generation_match == 0 and self.name in objects:
                raise gexc.PreconditionFailed(f"{self.name} exists")
            objects[self.name] = data

    @like(storage.Blob.exists)
    def exists(self, **_: Any) -> bool:
        client = self.bucket.client
        client._fault("exists", self.name)
        with client.lock:
            return self.name in client._bucket_objects(self.bucket.name)

    @like(storage.Blob.download_as_text)
    def download_as_text(self, **_: Any) -> str:
        client = self.bucket.client
        client._fault("download", self.name)
        with client.lock:
            objects = client._bucket_objects(self.bucket.name)
            if self.name not in objects:
                raise gexc.NotFound(f"No such object: {self.bucket.name}/{self.name}")
            return objects[self.name]


def _bucket_name(bucket_or_name: FakeBucket | str) -> str:
    return bucket_or_name if isinstance(bucket_or_name, str) else bucket_or_name.name
