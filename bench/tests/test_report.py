"""The benchmark table: ratios against the baseline and whether each target is met."""

from __future__ import annotations

from bench.report import Row, render


def test_times_compare_lower_is_better() -> None:
    row = Row("s", "median", 0.5, "s", baseline=10.0, baseline_label="stock", target=1.0)
    assert row.ratio == 20.0
    assert row.met is True
    assert Row("s", "median", 2.0, "s", target=1.0).met is False


def test_throughput_compares_higher_is_better() -> None:
    row = Row("s", "rows/s", 400.0, "x", baseline=4.0, target=100.0, better="higher")
    assert row.ratio == 100.0
    assert row.met is True
    assert Row("s", "rows/s", 50.0, "x", target=100.0, better="higher").met is False


def test_the_table_shows_missed_targets_and_rows_without_baseline() -> None:
    table = render(
        [
            Row("fast", "p50", 0.2, "s", baseline=8.0, baseline_label="stock", target=0.5),
            Row("slow", "p95", 1.5, "s", target=1.0),
            Row("info", "count", 1234.0, ""),
        ]
    ).splitlines()
    assert table[0].split(" | ")[4].strip() == "vs baseline"
    fast, slow, info = (line.split(" | ") for line in table[2:])
    assert [cell.strip() for cell in fast[2:]] == [
        "0.2 s",
        "8 s stock",
        "40.0x better",
        "<= 0.5 s",
        "yes",
    ]
    assert [cell.strip() for cell in slow[2:]] == ["1.5 s", "-", "-", "<= 1 s", "NO"]
    assert [cell.strip() for cell in info[2:]] == ["1,234", "-", "-", "-", "-"]


def test_the_comparison_says_which_way_for_times_and_throughput() -> None:
    slower = Row("o", "median", 0.016, "s", baseline=0.004, baseline_label="bare POST")
    fewer = Row("g", "rows/s", 2.0, "", baseline=8.0, better="higher")
    table = render([slower, fewer]).splitlines()
    assert [line.split(" | ")[4].strip() for line in table[2:]] == ["4.0x worse", "4.0x worse"]
    faster = Row("b", "s per day", 0.1, "s", baseline=5.0)
    assert render([faster]).splitlines()[2].split(" | ")[4].strip() == "50.0x better"
