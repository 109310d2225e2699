"""Materialization metadata that renders well in the Dagster UI (Pipes metadata values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl
from dagster_pipes import PipesMetadataValue

COLUMN_DESCRIPTIONS: Mapping[str, str] = {
    "id": "Random UUID4 of the person",
    "name": "First and last name",
    "address": "Street address, city, state and ZIP code",
    "email": "E-mail address (unique within one write)",
    "phone": "North American phone number",
    "created_at": "When the person was created (UTC)",
    "event_date": "Daily partition (UTC day of created_at)",
}
UNIQUE_COLUMNS = frozenset({"id"})
PREVIEW_ROWS = 5


def column_schema(schema: pl.Schema) -> PipesMetadataValue:
    """``dagster/column_schema``: a TableSchema with types, descriptions and constraints."""
    columns = [
        {
            "name": name,
            "type": str(dtype),
            "description": COLUMN_DESCRIPTIONS.get(name),
            "constraints": {"nullable": False, "unique": name in UNIQUE_COLUMNS},
        }
        for name, dtype in schema.items()
    ]
    return {"type": "table_schema", "raw_value": {"columns": columns}}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_preview(people: pl.DataFrame, rows: int = PREVIEW_ROWS) -> PipesMetadataValue:
    """The first ``rows`` rows as a Markdown table."""
    head = people.head(rows)
    lines = [
        "| " + " | ".join(head.columns) + " |",
        "|" + "---|" * head.width,
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in head.iter_rows()),
    ]
    return {"type": "md", "raw_value": "\n".join(lines)}
