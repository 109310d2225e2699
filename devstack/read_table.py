"""``python -m devstack table [ASSET]``: print a table of the local lake (either kind).

Reads ``<DATA_LAKE_URI>/<asset>`` as the function wrote it: from the emulator (through the
XML-API adapter at ``STORAGE_EMULATOR_HOST``) for a ``gs://`` lake, from disk otherwise.
"""

from __future__ import annotations

import os

import deltalake  # before polars (crash at exit otherwise)
import polars as pl

from people_lake.storage import storage_options_for


def describe_table(data_lake_uri: str, asset: str, emulator_host: str | None) -> str:
    """The table's URI, version, row count and first rows, as printed by the command."""
    uri = f"{data_lake_uri.rstrip('/')}/{asset}"
    options = storage_options_for(uri, emulator_host)
    try:
        table = deltalake.DeltaTable(uri, storage_options=options)
    except deltalake.exceptions.TableNotFoundError:
        return f"no Delta table at {uri} yet: materialize {asset} first"
    frame = pl.read_delta(uri, storage_options=options)
    return f"{uri} (version {table.version()}, {frame.height} rows)\n{frame}"


def main(asset: str) -> int:
    from gcf_demo.settings import DemoSettings

    settings = DemoSettings.from_env()  # also loads .env (no override)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
    print(describe_table(settings.data_lake_uri, asset, emulator))
    return 0
