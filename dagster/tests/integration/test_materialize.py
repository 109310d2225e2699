"""The whole loop through the real stack: Dagster, HTTP, function, Delta + GCS chunks, Dagster."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from dagster_pipes_gcf import PollingPolicy
from devstack.net import free_port
from devstack.services import REPO_ROOT, running
from devstack.stack import LocalStack
from gcf_demo.defs.assets import DEFAULT_ROWS

from .conftest import fresh_lake, materialize_people, pipes_client, table_dir

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["gs", "directory"])
def test_materializing_writes_the_table_and_brings_logs_and_metadata_back(
    stack: LocalStack, kind: Literal["gs", "directory"]
) -> None:
    lake = fresh_lake(stack, kind)
    run = materialize_people(stack, num_rows=42, seed=7, data_lake_uri=lake)

    assert run.success
    logs = run.logs
    assert any("writing 42 rows to" in line for line in logs), logs
    assert any("generated 42 fake people" in line for line in logs), "Python logging not forwarded"
    assert any("is at version 1" in line for line in logs)  # 0: the empty table created

    (materialization,) = run.materializations()
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == 42
    assert metadata["delta_version"].value == 1
    assert metadata["table_uri"].value == table_dir(stack, lake)
    assert metadata["invocation_id"].value

    people = lake.read("cloud_function_pipes_asset")
    assert people.height == 42
    assert {"id", "name", "address", "email", "phone"} <= set(people.columns)


def test_a_crashing_function_fails_the_step_with_the_remote_error(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    lake.put(
        "cloud_function_pipes_asset/_delta_log/00000000000000000000.json",
        "a Delta log entry that is not JSON\n",
    )

    run = materialize_people(stack, data_lake_uri=lake)

    assert not run.success
    message = run.failure_message()
    assert "Cloud Function returned HTTP 500" in message
    assert "DeltaError" in message and "Json error" in message, message
    assert "remote traceback: in the run's event" in message  # shown once, there
    assert any("writing 25 rows" in line for line in run.logs), "logs before the crash were lost"


def test_a_function_that_never_closes_pipes_is_not_a_success(
    stack: LocalStack, tmp_path: Path
) -> None:
    port = free_port()
    source = REPO_ROOT / "cloud_function" / "tests" / "functions" / "no_pipes.py"
    command = [
        str(Path(sys.executable).parent / "functions-framework"),
        "--source", str(source), "--target", "main", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with running("no-pipes function", command, port, log_path=tmp_path / "no_pipes.log"):
        run = materialize_people(
            stack,
            function_url=f"http://127.0.0.1:{port}",
            client=pipes_client(stack, polling=PollingPolicy(drain_timeout=1.0)),
        )
    assert not run.success
    assert "`closed` message not received" in run.failure_message()


def test_the_code_location_materializes_from_the_cli_with_env_config(
    stack: LocalStack, tmp_path: Path
) -> None:
    lake = fresh_lake(stack)
    env = {
        **os.environ,
        "CLOUD_FUNCTION_URL": stack.function_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": str(lake),
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "gcf_demo.definitions",
         "--select", "cloud_function_pipes_asset"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output
    assert f"writing {DEFAULT_ROWS} rows" in output  # the asset's default config
    assert lake.read("cloud_function_pipes_asset").height == DEFAULT_ROWS
