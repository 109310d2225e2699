"""Data-quality checks of the written people, reported to Dagster as asset checks.

The checks are declared on the Dagster assets (``gcf_demo.defs.assets``) under the same names.
Each outcome is plain JSON so a commit can record it and a repeated invocation re-report it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
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


ID_HASH_SEED = 20240526
# Bits of an id's hash that are kept: all 64 (fewer only to make collisions common in tests).
ID_HASH_BITS = 64
# Ids whose hashes are listed (a few: hash collisions), from the rows checked.
IdLookup = Callable[[pl.Series], pl.Series]


def _id_hash(ids: pl.Expr) -> pl.Expr:
    return ids.hash(seed=ID_HASH_SEED) // pl.lit(1 << (64 - ID_HASH_BITS), dtype=pl.UInt64)


def id_hashes(ids: pl.Series) -> pl.Series:
    """Hashes of the non-null ids (stable within one process)."""
    return ids.drop_nulls().to_frame("id").select(_id_hash(pl.col("id")))["id"]


def has_id_hash(hashes: pl.Series) -> pl.Expr:
    """Rows whose non-null ``id`` has one of ``hashes`` (to find colliding ids again)."""
    ids = pl.col("id")
    return ids.is_not_null() & _id_hash(ids).is_in(hashes.implode())


def ids_with_hashes(ids: pl.Series, hashes: pl.Series) -> pl.Series:
    """The non-null ``ids`` whose hash is one of ``hashes``."""
    return pl.DataFrame({"id": ids}).filter(has_id_hash(hashes))["id"]


def _sharing_a_hash(ids: pl.Series, sorted_hashes: np.ndarray) -> pl.Series:
    """The non-null ``ids`` whose hash is in ``sorted_hashes``: the ids' hashes sorted, then
    merged in (no set of all the hashes is built; sorted lookups stay in cache)."""
    hashes = np.sort(id_hashes(ids).to_numpy())
    if not sorted_hashes.size or not hashes.size:
        return ids.clear()
    found = np.searchsorted(sorted_hashes, hashes).clip(max=sorted_hashes.size - 1)
    shared = hashes[sorted_hashes[found] == hashes]
    if not shared.size:  # the usual case: none
        return ids.clear()
    return ids_with_hashes(ids, pl.Series(np.unique(shared), dtype=pl.UInt64))


def _shared_hashes(ordered: np.ndarray) -> np.ndarray:
    """The values that occur more than once in ``ordered`` (sorted hashes)."""
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


class DataChecks:
    """The checks that look at the rows, fed batch by batch without keeping them.

    ``ids_unique_and_not_null`` keeps one 64-bit hash per id (8 bytes a row); distinct
    hashes prove distinct ids, and only ids whose hashes collide are compared exactly, looked
    up in the checked rows again (see :meth:`outcomes`). Its scope is the table: the checked
    ids must also not occur in the rest of the table, whose ids are streamed past the sorted
    hashes. ``emails_valid`` keeps counts and the first few examples.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._null_ids = 0
        self._hashes: list[np.ndarray] = []
        self._invalid_emails = 0
        self._examples: list[str] = []

    def add(self, people: pl.DataFrame) -> None:
        self.rows += people.height
        ids = people["id"]
        self._null_ids += ids.null_count()
        self._hashes.append(id_hashes(ids).to_numpy())
        emails = people["email"]
        invalid = emails.filter(emails.is_null() | ~emails.str.contains(EMAIL_PATTERN))
        self._invalid_emails += invalid.len()
        wanted = MAX_EXAMPLES - len(self._examples)
        self._examples += [repr(value) for value in invalid.head(wanted).to_list()]

    def _ids(self, lookup: IdLookup, elsewhere: Iterable[pl.Series]) -> CheckOutcome:
        hashes = np.sort(np.concatenate(self._hashes or [np.empty(0, np.uint64)]))
        shared = _shared_hashes(hashes)
        duplicates = 0
        if shared.size:  # real duplicates, or (rarely) distinct ids with equal hashes
            suspects = lookup(pl.Series(shared, dtype=pl.UInt64))
            duplicates = suspects.len() - suspects.n_unique()
        compared = 0
        suspects_elsewhere: list[pl.Series] = []
        for ids in elsewhere:
            compared += ids.len()
            suspects_elsewhere.append(_sharing_a_hash(ids, hashes))
        in_table = _also_checked(pl.concat(suspects_elsewhere), lookup) if compared else 0
        return CheckOutcome(
            IDS_CHECK,
            passed=self._null_ids == 0 and duplicates == 0 and in_table == 0,
            metadata={
                "null_ids": self._null_ids,
                "duplicate_ids": duplicates,
                "ids_also_elsewhere_in_table": in_table,
                "rows_compared_elsewhere": compared,
            },
        )

    def _emails(self) -> CheckOutcome:
        invalid = self._invalid_emails
        metadata: dict[str, Any] = {
            "invalid_emails": invalid,
            "invalid_share": round(invalid / max(self.rows, 1), 6),
            "pattern": EMAIL_PATTERN,
        }
        if invalid:
            metadata["examples"] = ", ".join(self._examples)
            metadata["reason"] = f"{invalid} of {self.rows} e-mails do not match the pattern"
        return CheckOutcome(EMAILS_CHECK, passed=invalid == 0, metadata=metadata)

    def outcomes(self, lookup: IdLookup, elsewhere: Iterable[pl.Series] = ()) -> list[CheckOutcome]:
        """The outcomes; ``lookup`` finds the checked rows' ids with given hashes again, and
        ``elsewhere`` are the table's other ids (batch by batch), which the checked ids must
        not repeat."""
        return [self._ids(lookup, elsewhere), self._emails()]


def _also_checked(ids: pl.Series, lookup: IdLookup) -> int:
    """How many of ``ids`` (from elsewhere, each sharing a hash with a checked id) are
    exactly a checked id."""
    if ids.is_empty():
        return 0
    checked = lookup(id_hashes(ids).unique())
    return int(ids.is_in(checked.implode()).sum())


def check_row_count(committed_rows: int, requested_rows: int) -> CheckOutcome:
    """Rows the Delta commit added (read back from the table) against the request."""
    metadata: dict[str, Any] = {"committed_rows": committed_rows, "requested_rows": requested_rows}
    if committed_rows != requested_rows:
        metadata["reason"] = f"the commit added {committed_rows} rows, {requested_rows} requested"
    return CheckOutcome(ROW_COUNT_CHECK, committed_rows == requested_rows, metadata)


def check_data(people: pl.DataFrame) -> list[CheckOutcome]:
    """The checks that look at the rows, on one DataFrame."""
    checks = DataChecks()
    checks.add(people)
    return checks.outcomes(lambda hashes: ids_with_hashes(people["id"], hashes))


def to_json(outcomes: Sequence[CheckOutcome]) -> str:
    return json.dumps([asdict(outcome) for outcome in outcomes], separators=(",", ":"))


def from_json(text: str) -> list[CheckOutcome]:
    items: list[Mapping[str, Any]] = json.loads(text)
    return [CheckOutcome(**item) for item in items]
