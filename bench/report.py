"""Rows of the benchmark table and how they are printed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One measurement, its baseline from the same run, and its target.

    ``better`` says which direction is good: "lower" (times) or "higher" (throughput).
    """

    scenario: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: float | None = None
    better: str = "lower"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or self.value == 0:
            return None
        return self.baseline / self.value if self.better == "lower" else self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def _target(row: Row) -> str:
    if row.target is None:
        return "-"
    return ("<= " if row.better == "lower" else ">= ") + _fmt(row.target, row.unit)


def _versus(row: Row) -> str:
    """How the value compares with the baseline, in words that carry the direction."""
    if row.ratio is None:
        return "-"
    if row.ratio >= 1:
        return f"{row.ratio:,.1f}x better"
    return f"{1 / row.ratio:,.1f}x worse"


def render(rows: Sequence[Row]) -> str:
    header = ("scenario", "metric", "value", "baseline", "vs baseline", "target", "ok")
    body = [
        (
            row.scenario,
            row.metric,
            _fmt(row.value, row.unit),
            f"{_fmt(row.baseline, row.unit)} {row.baseline_label}".strip(),
            _versus(row),
            _target(row),
            {True: "yes", False: "NO", None: "-"}[row.met],
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [
        " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
