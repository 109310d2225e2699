"""Version skew through the real local stack, both ways, each side a process of its own venv.

- The newest orchestrator (the workspace's .venv, which runs pytest) against the function at
  the lowest versions its ranges allow.
- The client at the lowest versions its ranges allow against the newest function.

``just test-skew`` resolves the old venvs (uv's lowest-direct, their floors checked against the
declared bounds) and names them in ``SKEW_OLD_ORCHESTRATOR_VENV`` and ``SKEW_OLD_FUNCTION_VENV``.
"""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from devstack.services import REPO_ROOT
from devstack.stack import LocalStack, local_stack

from .orchestrate import CHECKS, ROWS

pytestmark = [pytest.mark.integration, pytest.mark.skew]

HERE = Path(__file__).resolve().parent
ORCHESTRATOR = HERE / "orchestrate.py"
FUNCTION = HERE / "people_function.py"
# people_function.VERSIONS_LINE (importing that module would start the people function)
FUNCTION_VERSIONS = "skew-test function versions: "
NEW_VENV = Path(sys.prefix)


def old_venv(variable: str) -> Path:
    """The venv ``just test-skew`` prepared; skip when run outside it."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is unset: `just test-skew` prepares the old venv and runs this")
    venv = REPO_ROOT / value
    assert (venv / "bin" / "python").is_file(), f"{variable}={value}: no venv there"
    return venv


@pytest.fixture
def old_orchestrator_venv() -> Path:
    return old_venv("SKEW_OLD_ORCHESTRATOR_VENV")


@pytest.fixture
def old_function_venv() -> Path:
    return old_venv("SKEW_OLD_FUNCTION_VENV")


@contextmanager
def serving_function(venv: Path, work_dir: Path) -> Iterator[LocalStack]:
    """The emulator, and the people function served by ``venv``'s functions-framework."""
    with local_stack(work_dir, function_source=FUNCTION, function_bin=venv / "bin") as stack:
        yield stack


def function_versions(stack: LocalStack) -> dict[str, str]:
    """What the function's process printed about the dagster-pipes it imported."""
    lines = [line for line in stack.function_log().splitlines() if FUNCTION_VERSIONS in line]
    assert lines, stack.function_log()[-3000:]
    versions: dict[str, str] = json.loads(lines[0].split(FUNCTION_VERSIONS, 1)[1])
    return versions


def materialize(python: Path, stack: LocalStack, work_dir: Path) -> dict[str, Any]:
    """Run the orchestrator script with ``python``; its JSON summary of the run."""
    lake = Path(stack.directory_lake) / f"lake-{uuid.uuid4().hex[:8]}"
    lake.mkdir()
    summary = work_dir / "summary.json"
    command = [str(python), str(ORCHESTRATOR), "--function-url", stack.function_url]
    command += ["--bucket", stack.pipes_bucket, "--lake", str(lake), "--summary", str(summary)]
    completed = subprocess.run(
        command,
        env={**os.environ, "STORAGE_EMULATOR_HOST": stack.emulator_url},
        cwd=work_dir,  # nothing of the repository on its path but the script's own folder
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


def assert_materialized(summary: dict[str, Any]) -> None:
    """The function's logs, metadata and checks all reached Dagster."""
    logs = summary["logs"]
    assert summary["success"], logs[-20:]
    assert any(f"writing {ROWS} rows to" in line for line in logs), logs
    assert any(f"generated {ROWS} fake people" in line for line in logs), logs
    [metadata] = summary["metadata"]
    assert metadata["dagster/row_count"] == ROWS
    assert metadata["delta_version"] == 1
    assert summary["checks"] == dict.fromkeys(CHECKS, True)


def imported_from(file: str, venv: Path) -> bool:
    return Path(file).is_relative_to(venv)


def test_the_newest_orchestrator_runs_the_function_at_its_lowest_versions(
    old_function_venv: Path, tmp_path: Path
) -> None:
    with serving_function(old_function_venv, tmp_path / "stack") as stack:
        summary = materialize(NEW_VENV / "bin" / "python", stack, tmp_path)
        function = function_versions(stack)

    assert imported_from(function["file"], old_function_venv), function
    assert imported_from(summary["dagster_file"], NEW_VENV), summary["dagster_file"]
    assert summary["versions"]["dagster"] == version("dagster")
    assert Version(function["dagster-pipes"]) < Version(summary["versions"]["dagster-pipes"]), (
        function,
        summary["versions"],
    )
    assert_materialized(summary)


def test_the_client_at_its_lowest_versions_runs_the_newest_function(
    old_orchestrator_venv: Path, tmp_path: Path
) -> None:
    with serving_function(NEW_VENV, tmp_path / "stack") as stack:
        summary = materialize(old_orchestrator_venv / "bin" / "python", stack, tmp_path)
        function = function_versions(stack)

    assert imported_from(function["file"], NEW_VENV), function
    assert imported_from(summary["dagster_file"], old_orchestrator_venv), summary["dagster_file"]
    assert Version(summary["versions"]["dagster"]) < Version(version("dagster"))
    assert Version(summary["versions"]["dagster-pipes"]) < Version(function["dagster-pipes"]), (
        function,
        summary["versions"],
    )
    assert_materialized(summary)
