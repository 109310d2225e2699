"""Failures through the real stack say it once and fast: a crash's remote traceback appears
once in the run's event log, an error chain is printed once, a local function that is not
running fails within seconds, and missing Google credentials name ADC and the emulator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_pipes_gcf import (
    CloudFunctionInvoker,
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
)
from devstack.net import free_port
from devstack.stack import LocalStack

from .conftest import PeopleRun, fresh_lake, materialize_people
from .test_early_failures import seconds_from_call_to_failure
from .test_transport import run_event

pytestmark = pytest.mark.integration
# A frame of the function's stack when its Delta log is corrupt (people_lake/job.py).
REMOTE_FRAME = ", in _write_once"


def step_failure(run: PeopleRun) -> dg.DagsterEvent:
    (failure,) = [event for event in run.result.all_events if event.is_step_failure]
    return failure


def occurrences_in_event_log(run: PeopleRun, text: str) -> int:
    """How often ``text`` is stored in the run's event log: messages, errors and metadata."""
    entries = run.instance.all_logs(run.result.run_id)
    return sum(dg.serialize_value(entry).count(text) for entry in entries)


def test_a_crash_shows_its_remote_traceback_once_and_its_error_once(stack: LocalStack) -> None:
    lake = fresh_lake(stack)
    lake.put(
        "cloud_function_pipes_asset/_delta_log/00000000000000000000.json",
        "a Delta log entry that is not JSON\n",
    )

    run = materialize_people(stack, data_lake_uri=lake)

    assert not run.success
    assert occurrences_in_event_log(run, REMOTE_FRAME) == 1
    error = step_failure(run).step_failure_data.error
    assert error is not None and error.cause is None, "the error chain is printed once"
    text = error.to_string()
    assert text.count("Cloud Function returned HTTP 500: DeltaError") == 1, text
    assert "remote traceback: in the run's event" in text


def default_policy_client(stack: LocalStack) -> PipesCloudFunctionClient:
    return PipesCloudFunctionClient(
        message_reader=PipesCloudStorageMessageReader(bucket=stack.pipes_bucket),
        invoker=CloudFunctionInvoker(),
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_local_function_that_is_not_running_fails_within_3_s_with_the_default_policy(
    stack: LocalStack, host: str
) -> None:
    url = f"http://{host}:{free_port()}"  # nothing listens there

    run = run_event(stack, default_policy_client(stack), url, {})

    assert not run.success
    assert seconds_from_call_to_failure(run) < 3.0
    error = step_failure(run).step_failure_data.error
    assert error is not None and error.cause is None, "the error chain is printed once"
    text = error.to_string()
    assert "nothing listens on" in text and "is the local function running?" in text
    assert "after 4 attempt(s)" in text, "still retried, briefly"
    assert text.count("nothing listens on") == 1, text


NO_CREDENTIALS_SCRIPT = """
import json, sys
import dagster as dg
from dagster_pipes_gcf import CloudFunctionError, PipesCloudFunctionClient
from dagster_pipes_gcf import PipesCloudStorageMessageReader

URL = "https://people-abc123-ew.a.run.app"

@dg.asset
def people(context: dg.AssetExecutionContext, client: PipesCloudFunctionClient):
    return client.run(context=context, function_url=URL).get_materialize_result()

reader = PipesCloudStorageMessageReader(bucket="pipes")
result = dg.materialize(
    [people], resources={"client": PipesCloudFunctionClient(reader)}, raise_on_error=False
)
(failure,) = [e for e in result.all_events if e.is_step_failure]
call = PipesCloudFunctionClient(reader).invoker.start(URL)
try:
    for attempt in call.attempts():
        with attempt:
            call.post({})
except CloudFunctionError as error:
    invoker = str(error.description)
json.dump({"reader": failure.step_failure_data.error.to_string(), "invoker": invoker}, sys.stdout)
"""


def without_credentials(home: Path) -> dict[str, str]:
    """This environment with no emulator, no ADC and no reachable metadata server."""
    hidden = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
    env = {name: value for name, value in os.environ.items() if name not in hidden}
    closed = f"127.0.0.1:{free_port()}"
    return {
        **env,
        "HOME": str(home),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),  # no `gcloud auth application-default` file
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
    }


def test_missing_credentials_name_adc_and_the_emulator_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_CREDENTIALS_SCRIPT],
        env=without_credentials(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    for side in ("reader", "invoker"):
        message = messages[side]
        assert "Application Default Credentials" in message, (side, message)
        assert "gcloud auth application-default login" in message, (side, message)
        assert "STORAGE_EMULATOR_HOST" in message, (side, message)
    assert "cannot read Pipes messages from gs://pipes" in messages["reader"]
    assert "no ID token to call the Cloud Function" in messages["invoker"]
