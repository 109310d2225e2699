"""A real ``dagster dev`` (webserver + daemon) on the local stack, driven over GraphQL as the UI.

Used by the backfill benchmark, the browser tests and the tests of the instance configuration
and of termination: runs and backfills are launched with the mutations the UI sends
(``launchPipelineExecution``, ``launchPartitionBackfill``) and followed through the runs' own
timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack.dagster_dev import LOCAL_THREADS, prepare_home
from devstack.net import LOOPBACK, free_port
from devstack.services import dagster_command, running
from devstack.stack import LocalStack

LOCATION = "gcf_demo"
ASSET_JOB = "__ASSET_JOB"
BACKFILL_TAG = "dagster/backfill"
DONE = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_LOGS = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
    ... on Error { message }
  }
}"""
LAUNCH_BACKFILL = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
RUNS = """
query Runs($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
    ... on Error { message }
  }
}"""


class GraphQLError(RuntimeError):
    """The webserver answered with an error instead of the expected result."""


@dataclass(frozen=True)
class Run:
    """One run as the webserver reports it (times are epoch seconds)."""

    run_id: str
    status: str
    created: float
    started: float | None
    ended: float | None
    tags: Mapping[str, str]

    @property
    def launch_to_end_s(self) -> float:
        """Launch (the run's creation) to its end: what a user waits after clicking."""
        assert self.ended is not None, f"run {self.run_id} has not ended"
        return self.ended - self.created


@dataclass(frozen=True)
class DagsterApi:
    """The webserver of a running ``dagster dev``."""

    url: str
    log_path: Path
    home: Path

    def query(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(str(body["errors"]))
        return dict(body["data"])

    def launch_run(
        self,
        asset: str,
        *,
        run_config: Mapping[str, Any] | None = None,
        partition: str | None = None,
    ) -> str:
        """Materialize ``asset`` (and its checks) as the UI's Materialize button does."""
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "pipelineName": ASSET_JOB,
                "assetSelection": [{"path": [asset]}],
            },
            "mode": "default",
            "executionMetadata": {"tags": tags},
            "runConfigData": dict(run_config or {}),
        }
        result = self.query(LAUNCH_RUN, executionParams=params)["launchPipelineExecution"]
        if result["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launching {asset}: {result}")
        return str(result["run"]["runId"])

    def launch_backfill(
        self,
        asset: str,
        partitions: Sequence[str],
        run_config: Mapping[str, Any] | None = None,
    ) -> str:
        """Backfill ``partitions`` of ``asset`` as the UI's backfill dialog does."""
        params: dict[str, Any] = {
            "assetSelection": [{"path": [asset]}],
            "partitionNames": list(partitions),
            "fromFailure": False,
            "tags": [],
        }
        if run_config:
            params["runConfigData"] = dict(run_config)
        result = self.query(LAUNCH_BACKFILL, backfillParams=params)["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(f"backfilling {asset}: {result}")
        return str(result["backfillId"])

    def run_messages(self, run_id: str) -> list[str]:
        """The run's event-log messages, in order (as the run page shows them)."""
        result = self.query(RUN_LOGS, runId=run_id)["logsForRun"]
        if result["__typename"] != "EventConnection":
            raise GraphQLError(f"logsForRun({run_id}): {result.get('message', result)}")
        return [event.get("message") or "" for event in result["events"]]

    def runs(self, **filter_: Any) -> list[Run]:
        result = self.query(RUNS, filter=filter_)["runsOrError"]
        if result["__typename"] != "Runs":
            raise GraphQLError(str(result))
        return [
            Run(
                run["runId"],
                run["status"],
                run["creationTime"],
                run["startTime"],
                run["endTime"],
                {tag["key"]: tag["value"] for tag in run["tags"]},
            )
            for run in result["results"]
        ]

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        return self.runs(tags=[{"key": BACKFILL_TAG, "value": backfill_id}])

    def wait_for_run(self, run_id: str, timeout: float = 180.0) -> Run:
        """Poll until the run has ended (whatever its outcome)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (run,) = self.runs(runIds=[run_id])
            if run.status in DONE and run.ended is not None:
                return run
            time.sleep(0.1)
        raise TimeoutError(f"run {run_id} did not end within {timeout:g} s (see {self.log_path})")

    def wait_for_backfill_runs(
        self,
        backfill_id: str,
        expected_runs: int,
        timeout: float,
        progress: Any = None,
    ) -> list[Run]:
        """Poll until ``expected_runs`` runs of the backfill have ended; ``progress(done)``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.backfill_runs(backfill_id)
            ended = [run for run in runs if run.status in DONE and run.ended is not None]
            if progress is not None:
                progress(ended)
            if len(ended) >= expected_runs:
                return runs
            time.sleep(0.25)
        raise TimeoutError(
            f"backfill {backfill_id}: fewer than {expected_runs} runs ended within {timeout:g} s "
            f"(see {self.log_path})"
        )


@contextmanager
def dagster_dev(
    stack: LocalStack,
    work_dir: Path,
    *,
    pool_limit: int = LOCAL_THREADS,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
    workspace: Path | None = None,
) -> Iterator[DagsterApi]:
    """``dagster dev`` (devstack's launcher) on a free port, with a throwaway DAGSTER_HOME
    configured as ``just dd`` configures its own, against ``stack``; its output goes to
    ``log_path`` (default ``work_dir/dagster.log``). ``workspace``: default the demo's; any
    other serves its code location under the same name (``LOCATION``)."""
    home = work_dir / "dagster_home"
    prepare_home(home, pool_limit, quiet=True)
    port = free_port()
    env = {
        "STORAGE_EMULATOR_HOST": stack.emulator_url,
        "CLOUD_FUNCTION_URL": stack.function_url,
        "PIPES_BUCKET": stack.pipes_bucket,
        "DATA_LAKE_URI": stack.data_lake_uri,
        "DAGSTER_HOME": str(home),
        "PEOPLE_FUNCTION_POOL_LIMIT": str(pool_limit),
        **(extra_env or {}),
    }
    log_path = log_path or work_dir / "dagster.log"
    with running(
        "dagster", dagster_command(port, workspace), port, env=env, log_path=log_path,
        timeout=timeout,
    ):  # fmt: skip
        api = DagsterApi(f"http://{LOOPBACK}:{port}", log_path, home)
        wait_for_code_location(api, timeout)
        yield api


LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_for_code_location(api: DagsterApi, timeout: float) -> None:
    """The webserver listens before the code location has loaded; wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = api.query(LOCATION_STATUS)["workspaceOrError"].get("locationEntries", [])
        for entry in entries:
            if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"]
                if loaded["__typename"] == "PythonError":
                    raise GraphQLError(f"code location {LOCATION} failed: {loaded['message']}")
                return
        time.sleep(0.5)
    raise TimeoutError(f"code location {LOCATION} did not load within {timeout:g} s")
