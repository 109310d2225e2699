"""How ``just test`` spreads the suite over pytest-xdist workers (``--dist loadgroup``).

Most tests wait on servers, so several workers share the cores well. A test file stays on one
worker (its module fixtures start once). Files that start a whole ``dagster dev`` or devstack
run one after another on one worker: several at once would only compete for the cores and
stretch their start-up past the timeouts a user's machine meets.

Each test also leaves the process environment as it found it: the demo's settings load the
repository's ``.env`` into ``os.environ`` (as ``dagster dev`` does), which would otherwise
reach every later test on that worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

WHOLE_STACK_FILES = frozenset(
    {
        "dagster/tests/integration/test_cloud_run_job_dagster.py",
        "dagster/tests/integration/test_termination.py",
        "devstack/tests/test_ctrl_c_in_a_terminal.py",
        "devstack/tests/test_dagster_instance.py",
        "devstack/tests/test_emulator_standalone.py",
        "devstack/tests/test_gs_lake_stack.py",
        "devstack/tests/test_up.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix()
        group = "whole-stack" if path in WHOLE_STACK_FILES else path
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _environment_left_as_found() -> Iterator[None]:
    before = dict(os.environ)
    yield
    # Put back key by key (no clearing): servers of module fixtures may read it meanwhile.
    for key in os.environ.keys() - before.keys():
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
