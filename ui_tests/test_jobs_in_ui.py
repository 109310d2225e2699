"""Materialize the Cloud Run Jobs assets in the Dagster UI: ``people_job`` over its tasks and
one partition of ``daily_people_job``, on the local stack plus the Cloud Run Jobs stand-in."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from collections.abc import Iterator

import deltalake  # noqa: F401 - before polars
import pytest
from playwright.sync_api import Page, expect

from devstack.cloud_run_jobs import running_stand_in
from devstack.dagster_api import Run, dagster_dev
from devstack.stack import local_stack
from gcf_demo.defs.assets import DEFAULT_ROWS_PER_DAY
from ui_tests.conftest import ARTIFACTS, FUNCTION_THREADS, UiStack
from ui_tests.test_materialize_in_ui import metadata_row, show_events, wait_for_success

PIPES_BUCKET = "dagster-pipes-ui-jobs-test"
TASKS = 4  # people_job's default task_count
RUN_SCREENSHOT = ARTIFACTS / "ui-people-job-run.png"
PARTITION_SCREENSHOT = ARTIFACTS / "ui-daily-people-job-partition.png"
RUN_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def jobs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """The local stack, the Cloud Run Jobs stand-in serving ``people-job`` (tasks run
    ``people_lake.task``) and ``dagster dev`` pointed at it."""
    work = tmp_path_factory.mktemp("ui-jobs")
    with local_stack(work, pipes_bucket=PIPES_BUCKET) as stack:
        task_env = {
            "STORAGE_EMULATOR_HOST": stack.emulator_url,
            "PIPES_BUCKET": stack.pipes_bucket,
            "DATA_LAKE_URI": stack.data_lake_uri,
        }
        job = {"command": [sys.executable, "-m", "people_lake.task"], "env": task_env}
        with (
            running_stand_in(work / "jobs", {"people-job": {**job, "max_retries": 1}}) as jobs,
            dagster_dev(
                stack,
                work,
                pool_limit=FUNCTION_THREADS,
                timeout=120,
                extra_env={"CLOUD_RUN_JOBS_ENDPOINT": jobs},
            ) as api,
        ):
            yield UiStack(api, stack.function_url, stack.data_lake_uri, work, stack.emulator_url)


def click_materialize(page: Page, stack: UiStack, asset: str) -> None:
    """Materialize on the asset page, then follow the toast's View link to the run."""
    page.goto(f"{stack.dagster_url}/assets/{asset}")
    materialize = page.get_by_role("button", name=re.compile(r"Materialize$"))
    expect(materialize).to_be_enabled(timeout=60_000)
    materialize.click()
    follow_toast_to_run(page)


def follow_toast_to_run(page: Page) -> None:
    toast = page.get_by_role("region", name=re.compile("Notifications"))
    expect(toast).to_contain_text("Launched run", timeout=30_000)
    view = toast.get_by_role("link", name="View")
    href = view.get_attribute("href")
    assert href and href.startswith("/runs/"), f"the toast links to {href!r}"
    view.click()
    page.wait_for_url(f"**{href}")


def test_people_job_materializes_in_the_ui_with_its_task_logs(
    jobs_stack: UiStack, page: Page
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    click_materialize(page, jobs_stack, "people_job")
    wait_for_success(page, jobs_stack)
    page.reload()  # (without the toast over the log)
    show_events(page, "[pipes] execution")
    expect(page.get_by_text(re.compile(rf"all {TASKS} task\(s\) succeeded"))).to_be_visible()
    # Each task's own log lines, shipped back through its Pipes stream and tagged with it.
    for index in range(TASKS):
        show_events(page, f"[task {index}] people function")
        expect(page.get_by_text(re.compile(rf"^\[task {index}\] people function")).first)\
            .to_be_visible()  # fmt: skip
    show_events(page, "type:ASSET_MATERIALIZATION")
    expect(metadata_row(page, "tasks_succeeded")).to_have_text(
        re.compile(rf"^tasks_succeeded\s*{TASKS}$")
    )
    page.screenshot(path=RUN_SCREENSHOT)
    print(f"\nscreenshot of the finished people_job run: {RUN_SCREENSHOT}")


def materialize_one_partition(page: Page, stack: UiStack, asset: str, day: str) -> None:
    """Materialize… → type one day → Launch."""
    page.goto(f"{stack.dagster_url}/assets/{asset}")
    materialize = page.get_by_role("button", name=re.compile(r"Materialize…$"))
    expect(materialize.first).to_be_enabled(timeout=60_000)
    materialize.first.click()
    dialog = page.get_by_role("dialog")
    selection = dialog.get_by_placeholder("No matching partitions")
    selection.fill(day)
    selection.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    dialog.get_by_role("button", name=re.compile(r"^Launch")).click()


def wait_for_partition_run(stack: UiStack, day: str) -> Run:
    """The run of ``day`` (a run of one partition, or a one-day range), once it has ended."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        for run in stack.api.runs():
            tags = run.tags
            covers = tags.get("dagster/partition") == day or (
                tags.get("dagster/asset_partition_range_start") == day
            )
            if covers and run.ended is not None:
                return run
        time.sleep(0.5)
    raise AssertionError(f"no run of {day} ended within {RUN_TIMEOUT_S:g} s\n{stack.logs()}")


def test_one_partition_of_daily_people_job_materializes_in_the_ui(
    jobs_stack: UiStack, page: Page
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    day = (dt.date.today() - dt.timedelta(days=3)).isoformat()
    materialize_one_partition(page, jobs_stack, "daily_people_job", day)
    run = wait_for_partition_run(jobs_stack, day)
    page.goto(f"{jobs_stack.dagster_url}/runs/{run.run_id}")
    page.screenshot(path=PARTITION_SCREENSHOT)
    assert run.status == "SUCCESS", f"{run.status}\n{jobs_stack.logs()}"
    messages = jobs_stack.api.run_messages(run.run_id)
    assert any("all 1 task(s) succeeded" in m for m in messages), messages
    assert any(m.startswith("[task 0] people function") for m in messages), messages
    people = jobs_stack.lake.read("daily_people_job")
    counts = {d.isoformat(): n for d, n in people.group_by("event_date").len().iter_rows()}
    assert counts == {day: DEFAULT_ROWS_PER_DAY}
