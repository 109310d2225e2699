"""The function folder is deployable as-is (requirements.txt matches uv.lock), and each
distribution declares ranges that its users can combine with their own pins."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORT = [
    "export", "--package", "gcf-people-function", "--no-dev", "--no-emit-project",
    "--no-editable", "--no-hashes", "--frozen", "--quiet",
]  # fmt: skip


def test_requirements_txt_is_in_sync_with_uv_lock() -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to check requirements.txt (just test installs it)")
    exported = subprocess.run(
        [uv, *EXPORT], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    committed = (REPO_ROOT / "cloud_function" / "requirements.txt").read_text()

    def pins(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]

    # `just requirements` names gcf-pipes by its folder in the uploaded source (cloud_function/).
    in_source_root = exported.replace("./cloud_function/gcf_pipes\n", "./gcf_pipes\n")
    assert pins(committed) == pins(in_source_root), "run `just requirements` and commit the result"


def test_the_function_source_folder_has_what_the_buildpack_needs() -> None:
    folder = REPO_ROOT / "cloud_function"
    assert (folder / "main.py").is_file() and (folder / "requirements.txt").is_file()
    assert "def main(" in (folder / "main.py").read_text()
    pins = (folder / "requirements.txt").read_text()
    for package in (
        "functions-framework",
        "dagster-pipes",
        "deltalake",
        "polars",
        "google-cloud-storage",
    ):
        assert f"{package}==" in pins
    assert "-e " not in pins and "file://" not in pins
    # The Pipes plumbing, built by pip from its folder in the upload.
    assert "\n./gcf_pipes\n" in pins and (folder / "gcf_pipes" / "pyproject.toml").is_file()


DISTRIBUTIONS = {
    "dagster-pipes-gcf": "dagster",
    "gcf-pipes": "cloud_function/gcf_pipes",
    "gcf-people-function": "cloud_function",
}
# gcf-pipes is the plumbing a team installs into its own function: none of the demo's lake.
LAKE_ONLY = {"deltalake", "polars", "faker", "arro3-core", "numpy"}
DEMO_ONLY = {"dagster-webserver", "python-dotenv"}


def declared(folder: str) -> list[Requirement]:
    manifest = tomllib.loads((REPO_ROOT / folder / "pyproject.toml").read_text())
    return [Requirement(line) for line in manifest["project"]["dependencies"]]


@pytest.mark.parametrize("folder", DISTRIBUTIONS.values())
def test_every_dependency_is_a_range_with_a_lower_bound(folder: str) -> None:
    for requirement in declared(folder):
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "==" not in operators, f"{folder}: {requirement}"


def test_the_integration_depends_on_nothing_demo_only() -> None:
    assert DEMO_ONLY.isdisjoint(r.name for r in declared(DISTRIBUTIONS["dagster-pipes-gcf"]))


def test_the_function_side_plumbing_depends_on_nothing_lake_only() -> None:
    assert LAKE_ONLY.isdisjoint(r.name for r in declared(DISTRIBUTIONS["gcf-pipes"]))


def test_the_deployed_function_does_not_install_faker() -> None:
    """Faker only makes people_lake/vocabulary.json; the function reads the file."""
    assert "faker" not in {r.name for r in declared(DISTRIBUTIONS["gcf-people-function"])}
    lines = (REPO_ROOT / "cloud_function" / "requirements.txt").read_text().splitlines()
    pinned = [line.split("#")[0].strip() for line in lines]
    names = {Requirement(line).name.lower() for line in pinned if line and line[0].isalpha()}
    assert "faker" not in names and "polars" in names  # (the parse found the pins)
