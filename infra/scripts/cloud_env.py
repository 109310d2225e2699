"""Write the orchestrator's ``.env`` from ``terraform output -json`` (``just cloud-env``).

``just dd`` then runs Dagster locally against the deployed function and real buckets:
``gcf_demo.settings`` reads every variable written here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

REPO_ROOT = Path(__file__).resolve().parents[2]

# Orchestrator setting -> Terraform output (infra/outputs.tf) that provides it.
ENV_FROM_OUTPUTS: dict[str, str] = {
    "CLOUD_FUNCTION_URL": "function_url",
    "PIPES_BUCKET": "pipes_bucket_name",
    "DATA_LAKE_URI": "data_lake_uri",
    "GOOGLE_IMPERSONATE_SERVICE_ACCOUNT": "orchestrator_service_account_email",
    "CLOUD_FUNCTION_PROJECT": "project_id",
}

# Orchestrator settings Terraform cannot know: kept from an existing .env as the user set them.
USER_SETTINGS = frozenset(
    {
        # Only for a custom domain in front of the function; run.app URLs need none.
        "CLOUD_FUNCTION_AUDIENCE",
    }
)

# Local-stack settings dropped from .env: a leftover emulator host would send the real
# buckets' traffic to the emulator.
LOCAL_ONLY = frozenset({"STORAGE_EMULATOR_HOST"})

HEADER = """\
# Written by `just cloud-env` from `terraform output -json` (infra/): Dagster runs locally
# (`just dd`) against the deployed function. Back to the local stack: cp .env.example .env
"""


class CloudEnvError(Exception):
    """The Terraform outputs cannot configure the orchestrator."""


def _output_value(outputs: Mapping[str, Any], name: str) -> object:
    output = outputs.get(name)
    return output.get("value") if isinstance(output, Mapping) else None


def env_from_outputs(outputs: Mapping[str, Any]) -> dict[str, str]:
    """Map ``terraform output -json`` to orchestrator settings; raise if any is missing."""
    if not outputs:
        raise CloudEnvError("Terraform has no outputs: run `just deploy` first")
    env: dict[str, str] = {}
    missing = []
    for name, output in ENV_FROM_OUTPUTS.items():
        value = _output_value(outputs, output)
        if not isinstance(value, str) or not value.strip():
            missing.append(output)
        else:
            env[name] = value.strip()
    if missing:
        raise CloudEnvError(f"Terraform outputs missing or empty: {', '.join(missing)}")
    if not env["CLOUD_FUNCTION_URL"].startswith("https://"):
        raise CloudEnvError(f"function_url is not an https URL: {env['CLOUD_FUNCTION_URL']}")
    return env


def kept_settings(env_file: Path) -> dict[str, str]:
    """Settings of an existing .env that Terraform does not own (e.g. DAGSTER_PORT)."""
    if not env_file.is_file():
        return {}
    return {
        key: value
        for key, value in dotenv_values(env_file).items()
        if value is not None and key not in ENV_FROM_OUTPUTS and key not in LOCAL_ONLY
    }


def dotenv_value(value: str) -> str:
    """``value`` as python-dotenv reads it back: plain when safe, else double-quoted."""
    if re.fullmatch(r"[\w./:@,+-]*", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render(env: Mapping[str, str]) -> str:
    return HEADER + "".join(f"{key}={dotenv_value(value)}\n" for key, value in env.items())


def write_env(outputs: Mapping[str, Any], env_file: Path) -> dict[str, str]:
    """Write ``env_file`` from Terraform outputs, keeping settings Terraform does not own."""
    env = {**env_from_outputs(outputs), **kept_settings(env_file)}
    env_file.write_text(render(env))
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write .env from `terraform output -json`.")
    parser.add_argument(
        "outputs", nargs="?", default="-", help="terraform output -json file (default: stdin)"
    )
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / ".env")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.outputs == "-" else Path(args.outputs).read_text()
    try:
        outputs = json.loads(text or "{}")
        if not isinstance(outputs, dict):
            raise CloudEnvError("expected the JSON object printed by `terraform output -json`")
        env = write_env(outputs, args.env_file)
    except (CloudEnvError, json.JSONDecodeError) as exc:
        print(f"cloud-env: error: {exc}", file=sys.stderr)
        return 1
    print(f"cloud-env: wrote {args.env_file}")
    for key, value in env.items():
        print(f"  {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
