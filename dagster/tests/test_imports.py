"""The repo-root folder named ``dagster`` must never shadow the dagster library."""

import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_imports_resolve_to_the_installed_packages_from_the_repo_root() -> None:
    code = (
        "import dagster, dagster_pipes_gcf, gcf_demo.definitions, main;"
        "print(dagster.__file__); print(dagster.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    location, version = done.stdout.split()
    assert "site-packages" in location and not location.startswith(str(REPO_ROOT / "dagster") + "/")
    assert version == installed_version("dagster")
    assert not (REPO_ROOT / "dagster" / "__init__.py").exists()
