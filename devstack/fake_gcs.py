"""An in-memory stand-in for the slice of google-cloud-storage the Pipes reader/writer use.

For unit tests and the in-process memory benchmark only. It enforces
``if_generation_match=0`` as GCS and the local emulator (fake-gcs-server) do; every
capability is also tested against the emulator process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

Fault = Callable[[str, str], None]  # (operation, key) -> may raise


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

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)

    def get_bucket(self, name: str) -> FakeBucket:
        """Only for the stock ``dagster_pipes.PipesGCSMessageWriter`` (ours never call it)."""
        self._bucket_objects(name)
        return self.bucket(name)

    def create_bucket(self, name: str) -> FakeBucket:
        self.objects.setdefault(name, {})
        return self.bucket(name)

    def list_blobs(
        self, bucket: FakeBucket | str, prefix: str = "", max_results: int | None = None
    ) -> Iterator[FakeBlob]:
        name = bucket if isinstance(bucket, str) else bucket.name
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

    def blob(self, key: str) -> FakeBlob:
        return FakeBlob(self, key)


@dataclass
class FakeBlob:
    bucket: FakeBucket
    name: str

    def upload_from_string(
        self, data: str, *, if_generation_match: int | None = None, **_: Any
    ) -> None:
        client = self.bucket.client
        client._fault("upload", self.name)
        with client.lock:
            objects = client._bucket_objects(self.bucket.name)
            if if_generation_match == 0 and self.name in objects:
                raise gexc.PreconditionFailed(f"{self.name} exists")
            objects[self.name] = data

    def exists(self, **_: Any) -> bool:
        client = self.bucket.client
        client._fault("exists", self.name)
        with client.lock:
            return self.name in client._bucket_objects(self.bucket.name)

    def download_as_text(self, **_: Any) -> str:
        client = self.bucket.client
        client._fault("download", self.name)
        with client.lock:
            objects = client._bucket_objects(self.bucket.name)
            if self.name not in objects:
                raise gexc.NotFound(f"No such object: {self.bucket.name}/{self.name}")
            return objects[self.name]
