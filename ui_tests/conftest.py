"""Fixtures of the browser test: the whole local stack on free ports, and headless Chromium.

The stack is the one behind ``just dd`` (GCS emulator, the function, ``dagster dev``), on free
ports (:func:`devstack.stack.local_stack` plus ``dagster dev``), with a throwaway DAGSTER_HOME.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from devstack.dagster_api import DagsterApi, dagster_dev
from devstack.lakes import Lake
from devstack.services import REPO_ROOT
from devstack.stack import local_stack

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts"
PIPES_BUCKET = "dagster-pipes-ui-test"
FUNCTION_THREADS = 4  # the function's request threads, and so the pool limit


@dataclass(frozen=True)
class UiStack:
    """Where the browser test's stack listens and logs."""

    api: DagsterApi
    function_url: str
    data_lake_uri: str  # gs:// in the emulator (local_stack's default)
    log_dir: Path
    emulator_url: str

    @property
    def lake(self) -> Lake:
        """The function's default lake, to read its tables."""
        return Lake(self.data_lake_uri, self.emulator_url)

    @property
    def dagster_url(self) -> str:
        return self.api.url

    def logs(self) -> str:
        """Every service's log, for failure messages."""
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """devstack's local stack (emulator + function) plus ``dagster dev`` on a free port."""
    work = tmp_path_factory.mktemp("ui-stack")
    function_env = {"THREADS": str(FUNCTION_THREADS)}
    with (
        local_stack(work, pipes_bucket=PIPES_BUCKET, function_env=function_env) as stack,
        # `just dd`'s instance config (pool, run queue), without the first-run modal over the
        # page and without telemetry from CI.
        dagster_dev(stack, work, pool_limit=FUNCTION_THREADS, timeout=120) as api,
    ):
        yield UiStack(api, stack.function_url, stack.data_lake_uri, work, stack.emulator_url)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1300})
    yield context.new_page()
    context.close()
