"""A data-lake root of the local stack, of either kind (``gs://`` in the emulator, the default,
or a directory), with what tests read from it and plant in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltalake  # before polars (crash at exit otherwise)
import polars as pl
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from people_lake.storage import storage_options_for

GS = "gs://"


@dataclass(frozen=True)
class Lake:
    """A lake root: ``uri`` (``gs://<bucket>/<prefix>`` or a directory) and the emulator that
    holds a ``gs://`` one."""

    uri: str
    emulator_url: str

    def __str__(self) -> str:
        return self.uri

    @property
    def is_gs(self) -> bool:
        return self.uri.startswith(GS)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, str] | None:
        return storage_options_for(self.uri, self.emulator_url)

    def table(self, name: str) -> str:
        """The URI of the table ``name`` in this lake."""
        return f"{self.uri}/{name}"

    def delta(self, name: str, **kwargs: Any) -> deltalake.DeltaTable:
        options = self.storage_options
        return deltalake.DeltaTable(self.table(name), storage_options=options, **kwargs)

    def read(self, name: str) -> pl.DataFrame:
        return pl.read_delta(self.table(name), storage_options=self.storage_options)

    def version(self, name: str) -> int | None:
        """The table's version; None when there is no table (yet)."""
        if not deltalake.DeltaTable.is_deltatable(self.table(name), self.storage_options):
            return None
        return self.delta(name).version()

    def files(self) -> list[str]:
        """Every file (object) below the root, relative to it, sorted."""
        if not self.is_gs:
            root = Path(self.uri)
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        bucket, prefix = self._bucket_and_prefix()
        blobs = self._gcs().list_blobs(bucket, prefix=f"{prefix}/")
        return sorted(blob.name.removeprefix(f"{prefix}/") for blob in blobs)

    def bucket_objects(self) -> list[str]:
        """Every object of a ``gs://`` lake's bucket (where an escaping key would write)."""
        bucket, _ = self._bucket_and_prefix()
        return sorted(blob.name for blob in self._gcs().list_blobs(bucket))

    def put(self, relative: str, text: str) -> None:
        """Plant a file (an object) at ``relative`` below the root."""
        if not self.is_gs:
            path = Path(self.uri) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        bucket, prefix = self._bucket_and_prefix()
        self._gcs().bucket(bucket).blob(f"{prefix}/{relative}").upload_from_string(text)

    def _bucket_and_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.uri.removeprefix(GS).partition("/")
        return bucket, prefix.rstrip("/")

    def _gcs(self) -> storage.Client:
        return storage.Client(
            project="local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.emulator_url},
        )
