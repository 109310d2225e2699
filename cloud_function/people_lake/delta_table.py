"""Writing to (and describing) the Delta table, on a local directory or on ``gs://``."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import deltalake  # imported before polars anywhere both are used (crash at exit otherwise)
import polars as pl

from gcf_pipes import RequestError


@dataclass(frozen=True)
class TableWrite:
    """Outcome of one write."""

    table_uri: str
    version: int
    rows_written: int


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def table_uri_for(lake_uri: str, asset_key_path: Sequence[str]) -> str:
    """``<lake_uri>/<asset key path>``, refusing path segments that escape the lake."""
    for part in asset_key_path:
        if not part or part in {".", ".."} or "/" in part or "\\" in part:
            raise RequestError(
                f"asset key part {part!r} is not a valid table path segment", field="asset_key"
            )
    if is_remote(lake_uri):
        return posixpath.join(lake_uri.rstrip("/"), *asset_key_path)
    root = Path(lake_uri.removeprefix("file://")).expanduser().resolve()
    return str(root.joinpath(*asset_key_path))


def storage_options_for(uri: str) -> dict[str, str]:
    """delta-rs storage options; on ``gs://`` credentials come from the environment."""
    return {}


def append_rows(df: pl.DataFrame, table_uri: str) -> TableWrite:
    """Append ``df`` to the Delta table at ``table_uri`` (created on first write)."""
    if not is_remote(table_uri):
        Path(table_uri).mkdir(parents=True, exist_ok=True)
    deltalake.write_deltalake(
        table_uri, df, mode="append", storage_options=storage_options_for(table_uri)
    )
    version = deltalake.DeltaTable(
        table_uri, storage_options=storage_options_for(table_uri)
    ).version()
    return TableWrite(table_uri=table_uri, version=version, rows_written=df.height)
