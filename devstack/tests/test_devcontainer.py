"""The dev container delivers what it promises: valid JSON, every tool, the stack's ports."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from dotenv import dotenv_values

from devstack.net import url_port
from devstack.services import REPO_ROOT

DEVCONTAINER = REPO_ROOT / ".devcontainer"

# Tool -> how the Dockerfile (or a devcontainer feature) installs it.
INSTALLS = {
    "python": r"^FROM\s+\S*python:\S*?(?P<version>3\.\d+)",
    "uv": r"pip install[^\n]*\buv\b",
    "just": r"pip install[^\n]*\brust-just\b",
    "terraform": r"apt\.releases\.hashicorp\.com[\s\S]*apt-get install[\s\S]*\bterraform\b",
    "gcloud": r"packages\.cloud\.google\.com/apt[\s\S]*apt-get install[\s\S]*\bgoogle-cloud-cli\b",
}
FEATURES = {
    "python": "ghcr.io/devcontainers/features/python",
    "terraform": "ghcr.io/devcontainers/features/terraform",
    "gcloud": "ghcr.io/dhoeric/features/google-cloud-cli",
}
VERSION_COMMANDS = {
    "python": "python --version",
    "uv": "uv --version",
    "just": "just --version",
    "terraform": "terraform version",
    "gcloud": "gcloud --version",
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    text = (DEVCONTAINER / "devcontainer.json").read_text()
    parsed: dict[str, Any] = json.loads(text)  # strict JSON: no comments, no trailing commas
    return parsed


@pytest.fixture(scope="module")
def dockerfile(config: dict[str, Any]) -> str:
    return (DEVCONTAINER / config["build"]["dockerfile"]).read_text()


@pytest.mark.parametrize("tool", sorted(INSTALLS))
def test_every_promised_tool_is_installed_and_checked_at_build(
    tool: str, config: dict[str, Any], dockerfile: str
) -> None:
    features = config.get("features", {})
    by_feature = any(name.startswith(FEATURES.get(tool, "-")) for name in features)
    assert by_feature or re.search(INSTALLS[tool], dockerfile, re.MULTILINE), tool
    # The build fails if the tool does not run.
    assert re.search(rf"^RUN .*{re.escape(VERSION_COMMANDS[tool])}", _joined(dockerfile), re.M)


def test_the_python_version_satisfies_the_workspace(dockerfile: str) -> None:
    match = re.search(INSTALLS["python"], dockerfile, re.MULTILINE)
    assert match, "the base image names no Python version"
    minor = int(match["version"].split(".")[1])
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    bounds = re.fullmatch(r">=3\.(\d+),\s*<3\.(\d+)", requires["requires-python"])
    assert bounds, requires["requires-python"]
    assert int(bounds[1]) <= minor < int(bounds[2])


def test_the_stack_ports_are_forwarded(config: dict[str, Any]) -> None:
    defaults = dotenv_values(REPO_ROOT / ".env.example")
    ports = {
        int(defaults["DAGSTER_PORT"] or 0),
        url_port(defaults["CLOUD_FUNCTION_URL"] or "", 0),
        url_port(defaults["STORAGE_EMULATOR_HOST"] or "", 0),
    }
    assert 3000 in ports
    assert ports <= set(config["forwardPorts"])
    assert config["portsAttributes"]["3000"]["label"] == "Dagster UI"


def test_the_container_is_ready_for_just_dd(config: dict[str, Any]) -> None:
    assert config["postCreateCommand"] == "just sync"
    assert re.search(r"^sync:", (REPO_ROOT / "justfile").read_text(), re.MULTILINE)
    assert (DEVCONTAINER / config["build"]["context"] / "pyproject.toml").resolve().is_file()


def _joined(dockerfile: str) -> str:
    """The Dockerfile with line continuations joined (one instruction per line)."""
    return re.sub(r"\\\n\s*", " ", dockerfile)
