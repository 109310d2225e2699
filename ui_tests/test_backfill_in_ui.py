"""Backfill a week of ``daily_people`` from the Dagster UI: one run, every day materialized."""

from __future__ import annotations

import datetime as dt
import re
import time

import deltalake  # noqa: F401 - before polars
from playwright.sync_api import Page, expect

from gcf_demo.defs.assets import DEFAULT_ROWS_PER_DAY
from ui_tests.conftest import ARTIFACTS, UiStack

ASSET = "daily_people"
DAYS = 7
BACKFILL_SCREENSHOT = ARTIFACTS / "ui-backfill.png"
# The backfill daemon picks a backfill up within 30 s; the run itself takes seconds.
MATERIALIZED_TIMEOUT_S = 180.0


def week() -> list[str]:
    """Seven days well inside the dialog's default "last 90 days" view."""
    first = dt.date.today() - dt.timedelta(days=13)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(DAYS)]


def launch_backfill(page: Page, stack: UiStack, days: list[str]) -> str:
    """Materialize… → type the range → Launch backfill; return the backfill id (toast)."""
    page.goto(f"{stack.dagster_url}/assets/{ASSET}")
    materialize = page.get_by_role("button", name=re.compile(r"Materialize…$"))
    expect(materialize.first).to_be_enabled(timeout=60_000)
    materialize.first.click()
    dialog = page.get_by_role("dialog")
    selection = dialog.get_by_placeholder("No matching partitions")
    selection.fill(f"[{days[0]}...{days[-1]}]")
    selection.press("Enter")
    expect(dialog.get_by_text(f"{DAYS} partitions", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_role("region", name=re.compile("Notifications"))
    expect(toast).to_contain_text("Created backfill", timeout=30_000)
    href = toast.get_by_role("link", name="View").get_attribute("href")
    assert href and href.startswith("/runs/b/"), f"the toast links to {href!r}"
    return href.rsplit("/", 1)[1]


def wait_until_materialized(page: Page, stack: UiStack, count: int) -> None:
    """The asset's Partitions tab, reloaded until it counts ``count`` materialized days."""
    deadline = time.monotonic() + MATERIALIZED_TIMEOUT_S
    materialized = page.get_by_text(f"Materialized ({count})", exact=True)
    while True:
        page.goto(f"{stack.dagster_url}/assets/{ASSET}?view=partitions")
        try:
            expect(materialized).to_be_visible(timeout=10_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                page.screenshot(path=BACKFILL_SCREENSHOT)
                raise AssertionError(
                    f"{ASSET}: not {count} days materialized after {MATERIALIZED_TIMEOUT_S:g} s "
                    f"(see {BACKFILL_SCREENSHOT})\n{stack.logs()}"
                ) from None


def test_a_week_backfilled_from_the_ui_is_one_run_and_every_day(
    ui_stack: UiStack, page: Page
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    days = week()
    backfill_id = launch_backfill(page, ui_stack, days)
    wait_until_materialized(page, ui_stack, DAYS)
    page.screenshot(path=BACKFILL_SCREENSHOT)
    print(f"\nscreenshot of the backfilled partitions: {BACKFILL_SCREENSHOT}")

    api = ui_stack.api
    (run,) = api.backfill_runs(backfill_id)  # the whole week in one run
    assert run.status == "SUCCESS"
    assert run.tags["dagster/asset_partition_range_start"] == days[0]
    assert run.tags["dagster/asset_partition_range_end"] == days[-1]
    people = ui_stack.lake.read(ASSET)
    counts = {day.isoformat(): n for day, n in people.group_by("event_date").len().iter_rows()}
    assert counts == dict.fromkeys(days, DEFAULT_ROWS_PER_DAY)
