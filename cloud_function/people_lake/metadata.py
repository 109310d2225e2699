"""Materialization metadata that renders well in the Dagster UI (Pipes metadata values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import deltalake  # imported before polars (crash at exit otherwise)
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
# What the checks verify on every write (people_lake.checks.DataChecks).
CONSTRAINTS: Mapping[str, Mapping[str, bool]] = {"id": {"nullable": False, "unique": True}}
PREVIEW_ROWS = 5


def _type_name(field: deltalake.Field) -> str:
    kind = field.type
    return kind.type if isinstance(kind, deltalake.schema.PrimitiveType) else str(kind)


def column_schema(schema: deltalake.Schema) -> PipesMetadataValue:
    """``dagster/column_schema`` of the Delta table: types, descriptions, checked constraints."""
    columns = [
        {
            "name": field.name,
            "type": _type_name(field),
            "description": COLUMN_DESCRIPTIONS.get(field.name),
            "constraints": CONSTRAINTS.get(field.name),
        }
        for field in schema.fields
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
