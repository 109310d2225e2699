"""Data-quality checks of the written people, reported to Dagster as asset checks.

The checks are declared on the Dagster assets (``gcf_demo.defs.assets``) under the same names.
Each outcome is plain JSON so a commit can record it and a repeated invocation re-report it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import polars as pl

# Same names as the AssetCheckSpecs of the Dagster assets.
IDS_CHECK = "ids_unique_and_not_null"
EMAILS_CHECK = "emails_valid"
ROW_COUNT_CHECK = "row_count_matches_request"
CHECK_NAMES = (IDS_CHECK, EMAILS_CHECK, ROW_COUNT_CHECK)

EMAIL_PATTERN = r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$"
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: Pipes ``report_asset_check`` arguments, as plain JSON values."""

    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: Literal["ERROR", "WARN"] = "ERROR"


def _examples(values: pl.Series) -> str:
    return ", ".join(repr(value) for value in values.head(MAX_EXAMPLES).to_list()) or "-"


def check_ids(people: pl.DataFrame) -> CheckOutcome:
    nulls = people["id"].null_count()
    duplicates = people.height - people["id"].drop_nulls().n_unique() - nulls
    return CheckOutcome(
        IDS_CHECK,
        passed=nulls == 0 and duplicates == 0,
        metadata={"null_ids": nulls, "duplicate_ids": duplicates},
    )


def check_emails(people: pl.DataFrame) -> CheckOutcome:
    emails = people["email"]
    invalid = emails.filter(emails.is_null() | ~emails.str.contains(EMAIL_PATTERN))
    metadata: dict[str, Any] = {
        "invalid_emails": invalid.len(),
        "invalid_share": round(invalid.len() / max(people.height, 1), 6),
        "pattern": EMAIL_PATTERN,
    }
    if invalid.len():
        metadata["examples"] = _examples(invalid)
        metadata["reason"] = f"{invalid.len()} of {people.height} e-mails do not match the pattern"
    return CheckOutcome(EMAILS_CHECK, passed=invalid.len() == 0, metadata=metadata)


def check_row_count(committed_rows: int, requested_rows: int) -> CheckOutcome:
    """Rows the Delta commit added (read back from the table) against the request."""
    metadata: dict[str, Any] = {"committed_rows": committed_rows, "requested_rows": requested_rows}
    if committed_rows != requested_rows:
        metadata["reason"] = f"the commit added {committed_rows} rows, {requested_rows} requested"
    return CheckOutcome(ROW_COUNT_CHECK, committed_rows == requested_rows, metadata)


def check_data(people: pl.DataFrame) -> list[CheckOutcome]:
    """The checks that look at the generated rows (before they are written)."""
    return [check_ids(people), check_emails(people)]


def to_json(outcomes: Sequence[CheckOutcome]) -> str:
    return json.dumps([asdict(outcome) for outcome in outcomes], separators=(",", ":"))


def from_json(text: str) -> list[CheckOutcome]:
    items: list[Mapping[str, Any]] = json.loads(text)
    return [CheckOutcome(**item) for item in items]
