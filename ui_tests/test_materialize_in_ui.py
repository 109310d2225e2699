"""Materialize the demo asset the way a reader of the blog post does: in the Dagster UI."""

from __future__ import annotations

import re

import deltalake  # noqa: F401 - before polars
import polars as pl
from playwright.sync_api import Locator, Page, expect

from gcf_demo.defs.assets import DEFAULT_ROWS
from ui_tests.conftest import ARTIFACTS, UiStack

ASSET = "cloud_function_pipes_asset"
RUN_TIMEOUT_MS = 120_000
RUN_SCREENSHOT = ARTIFACTS / "ui-run.png"
ASSET_SCREENSHOT = ARTIFACTS / "ui-asset.png"
ROWS = DEFAULT_ROWS  # the asset's default num_rows; the session's lake starts empty
# Scroll the element's nearest scrollable ancestor so that the element is at its top.
SCROLL_TO_TOP = """(element) => {
  let box = element.parentElement;
  while (box && !(box.scrollHeight > box.clientHeight
                  && /auto|scroll/.test(getComputedStyle(box).overflowY))) {
    box = box.parentElement;
  }
  if (box) box.scrollTop += element.getBoundingClientRect().top - box.getBoundingClientRect().top;
}"""


def launch_run(page: Page, stack: UiStack) -> str:
    """Click Materialize on the asset page, follow the toast's View link; return the run path."""
    page.goto(f"{stack.dagster_url}/assets/{ASSET}")
    materialize = page.get_by_role("button", name=re.compile(r"Materialize$"))
    try:
        expect(materialize).to_be_enabled(timeout=60_000)
    except AssertionError as error:  # usually: the code location failed to load
        page.screenshot(path=RUN_SCREENSHOT)
        raise AssertionError(f"no Materialize button for {ASSET}\n{stack.logs()}") from error
    materialize.click()
    toast = page.get_by_role("region", name=re.compile("Notifications"))
    expect(toast).to_contain_text("Launched run", timeout=30_000)
    view = toast.get_by_role("link", name="View")
    href = view.get_attribute("href")
    assert href and href.startswith("/runs/"), f"the toast links to {href!r}"
    view.click()
    page.wait_for_url(f"**{href}")
    return href


def wait_for_success(page: Page, stack: UiStack) -> None:
    """Wait until the run header shows its outcome; anything but Success fails with the logs."""
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(outcome).to_be_visible(timeout=RUN_TIMEOUT_MS)
    status = outcome.inner_text()
    if status != "Success":
        page.screenshot(path=RUN_SCREENSHOT)
        raise AssertionError(f"the run ended with {status} (see {RUN_SCREENSHOT})\n{stack.logs()}")


def show_events(page: Page, query: str) -> None:
    """Type ``query`` into the run log's Filter box (the log list is virtualized)."""
    page.get_by_role("textbox", name="Filter…").fill(query)


def js_regex(text: str) -> str:
    """``re.escape`` for a pattern Playwright hands to JavaScript (``/`` must be escaped)."""
    return re.escape(text).replace("/", r"\/")


def metadata_row(page: Page, key: str) -> Locator:
    return page.get_by_role("row", name=re.compile(rf"^{js_regex(key)} "))


def scroll_log_to(page: Page, text: str) -> None:
    """Scroll the run's event log so the row with ``text`` is at its top."""
    expect(page.get_by_text(text)).to_be_visible()
    page.get_by_text(text).evaluate(SCROLL_TO_TOP)


def run_messages(stack: UiStack, run_id: str) -> list[str]:
    """The run's event log messages, in order (the webserver's GraphQL API)."""
    return stack.api.run_messages(run_id)


def test_materialize_in_the_ui(ui_stack: UiStack, page: Page) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    run_path = launch_run(page, ui_stack)
    wait_for_success(page, ui_stack)
    table = f"{ui_stack.data_lake_uri}/{ASSET}"

    # What the reader sees: the run's event log, full height, from the function call on.
    page.reload()  # (without the "Launched run" toast over the log)
    page.get_by_role("button", name="expand_arrows").last.click()
    scroll_log_to(page, "[pipes] invoking Cloud Function")
    page.screenshot(path=RUN_SCREENSHOT)
    print(f"\nscreenshot of the finished run: {RUN_SCREENSHOT}")

    # The function's own log lines, shipped back through Pipes, in the run's event log.
    show_events(page, "people function")
    expect(
        page.get_by_text(re.compile(rf"people function \S+: writing {ROWS} rows to {table}$"))
    ).to_be_visible()
    show_events(page, "streamed to Delta")
    first_batch = re.compile(r"^batch 1: \d+ of \d+ rows streamed to Delta$")
    expect(page.get_by_text(first_batch)).to_be_visible()
    # Streaming: at the default row count the function's batch lines reach the run before
    # the client sees the function's answer (the event log's order).
    messages = run_messages(ui_stack, run_path.rsplit("/", 1)[1])
    answered = next(i for i, m in enumerate(messages) if "Cloud Function answered HTTP 200" in m)
    assert any(m.startswith("batch 1: ") for m in messages[:answered]), messages
    show_events(page, f"Delta table {table}")
    delta_line = page.get_by_text(re.compile(rf"^Delta table {table} is at version \d+$"))
    expect(delta_line).to_be_visible()
    version = delta_line.inner_text().rsplit(" ", 1)[1]

    # The materialization event carries the metadata the function reported.
    show_events(page, "type:ASSET_MATERIALIZATION")
    expect(page.get_by_text(f"Materialized value {ASSET}.")).to_be_visible()
    expected = {
        "table_uri": js_regex(table),
        "dagster/row_count": str(ROWS),
        "delta_version": version,
        "function_url": js_regex(ui_stack.function_url),
    }
    for key, value in expected.items():
        expect(metadata_row(page, key)).to_have_text(re.compile(rf"^{js_regex(key)}\s*{value}$"))
    expect(metadata_row(page, "invocation_id")).to_have_text(
        re.compile(r"^invocation_id\s*[0-9a-f-]{36}$")
    )

    # The asset page shows the latest materialization and its metadata.
    page.goto(f"{ui_stack.dagster_url}/assets/{ASSET}")
    expect(page.get_by_text("Latest materialization").locator("..")).to_contain_text("ago")
    expect(page.get_by_text("Row count").locator("..")).to_contain_text(f"{ROWS:,}")
    expect(metadata_row(page, "table_uri")).to_contain_text(table)
    expect(metadata_row(page, "delta_version")).to_contain_text(version)
    page.screenshot(path=ASSET_SCREENSHOT)
    print(f"screenshot of the asset page: {ASSET_SCREENSHOT} (run {run_path})")

    # And the table itself: the rows the UI reported are in the Delta table (gs:// lake).
    assert ui_stack.lake.read(ASSET).height == ROWS
    options = ui_stack.lake.storage_options
    assert pl.read_delta(table, version=int(version), storage_options=options).height == ROWS
