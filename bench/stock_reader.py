"""The comparison column: Dagster's stock blob-store reader semantics, at default settings.

This is what a GCS reader built on ``PipesBlobStoreMessageReader`` does (as in the blog post):
one chunk per poll, a 10 s interval, ~10 s of draining after the call, and a chunk counter
kept on the instance across sessions.
"""

import random
import string
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import PipesBlobStoreMessageReader
from dagster_pipes import PipesParams
from google.cloud import storage


class StockGCSMessageReader(PipesBlobStoreMessageReader):
    """Reads ``<key_prefix>/<n>.json`` chunks the way the stock blob-store reader does."""

    def __init__(self, *, bucket: str, client: storage.Client, interval: float = 10):
        super().__init__(interval=interval)
        self.bucket = bucket
        self.client = client

    @contextmanager
    def get_params(self) -> Iterator[PipesParams]:
        yield {
            "bucket": self.bucket,
            "key_prefix": "".join(random.choices(string.ascii_letters, k=30)),
        }

    def messages_are_readable(self, params: PipesParams) -> bool:
        return True

    def download_messages_chunk(self, index: int, params: PipesParams) -> str | None:
        blob = self.client.bucket(self.bucket).blob(f"{params['key_prefix']}/{index}.json")
        return str(blob.download_as_text()) if blob.exists() else None

    def no_messages_debug_text(self) -> str:
        return f"stock reader on gs://{self.bucket}"
