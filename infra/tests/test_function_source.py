"""The source Terraform uploads builds: its requirements.txt installs into a clean venv and
``main`` imports there, gcf_pipes included (a distribution of its own, cloud_function/gcf_pipes/).
"""

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from infra.tests import contracts as c

pytestmark = pytest.mark.timeout(600)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """archive_file's exclude glob (doublestar: ``**`` crosses folders, ``*`` does not)."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def _excluded(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """A file is left out when it or one of its folders matches an exclude."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def zip_function_source(destination: Path) -> Path:
    """The zip infra/function.tf's archive_file makes: source_dir minus its excludes."""
    tf = c.Terraform.load()
    (archive,) = tf.data["archive_file"].values()
    source_dir = Path(str(archive["source_dir"]).replace("${path.module}", str(c.INFRA_DIR)))
    excludes = [_glob_regex(p) for p in c.resolve_local(tf, archive["excludes"])]
    with zipfile.ZipFile(destination, "w") as zipped:
        for path in sorted(source_dir.resolve().rglob("*")):
            relative = path.relative_to(source_dir.resolve()).as_posix()
            if path.is_file() and not _excluded(relative, excludes):
                zipped.write(path, relative)
    return destination


def test_the_excludes_are_read_as_archive_file_reads_them() -> None:
    patterns = [_glob_regex(p) for p in ("tests/**", "**/__pycache__/**", "pyproject.toml")]
    assert _excluded("tests/test_x.py", patterns)
    assert _excluded("gcf_pipes/src/gcf_pipes/__pycache__/x.pyc", patterns)
    assert _excluded("pyproject.toml", patterns)
    # gcf-pipes is built from its own manifest in the upload: only the root one is left out.
    assert not _excluded("gcf_pipes/pyproject.toml", patterns)
    assert not _excluded("people_lake/tests_helper.py", patterns)


def test_the_uploaded_source_installs_and_main_imports(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to install the function's requirements (just test installs it)")
    source = tmp_path / "source"
    with zipfile.ZipFile(zip_function_source(tmp_path / "function-source.zip")) as zipped:
        names = zipped.namelist()
        zipped.extractall(source)
    assert "main.py" in names and "requirements.txt" in names
    assert "pyproject.toml" not in names and not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # Like the buildpack: pip's requirements file, from the source root.
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", python, "-r", "requirements.txt"],
        cwd=source,
        check=True,
    )
    probe = "import gcf_pipes, main; print(gcf_pipes.__file__)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    imported = subprocess.run(
        [python, "-c", probe], check=False, cwd=source, env=env, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    # Installed from the uploaded folder, not found as a namespace package in the source root.
    assert "site-packages" in imported.stdout, imported.stdout
