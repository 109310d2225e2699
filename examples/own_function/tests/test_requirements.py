"""The example's requirements.txt is all the function needs: installed into a clean venv (with
the gcf-pipes wheel built where the file says), ``main`` imports."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

EXAMPLE = Path(__file__).resolve().parents[1]
GCF_PIPES = EXAMPLE.parents[1] / "cloud_function" / "gcf_pipes"


def test_the_requirements_install_into_a_clean_venv_and_main_imports(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to install the example's requirements (just test installs it)")
    source = tmp_path / "function"
    source.mkdir()
    for name in ("main.py", "requirements.txt"):
        shutil.copy(EXAMPLE / name, source / name)
    build = [uv, "build", "--wheel", "--quiet", "-o", str(source / "wheels"), str(GCF_PIPES)]
    subprocess.run(build, check=True)
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [uv, "pip", "install", "--quiet", "--python", python, "-r", "requirements.txt"]
    subprocess.run(install, cwd=source, check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIPES_BUCKET"] = "pipes"
    imported = subprocess.run(
        [python, "-c", "import main"],
        check=False,
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
