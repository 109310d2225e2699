"""Pipes transport benchmarks on the local stack (emulator + a streaming bench function).

Scenarios (issue targets in brackets), each measured for our reader and for the stock
blob-store reader at default settings, with a bare ``requests.post`` as the baseline where
one applies:

1. Pipes overhead per materialization: ``client.run`` wall time minus the function's own
   handler time [median <= 0.3 s].
2. Streaming latency, ``pipes.log.info`` in the function to the reader handing it to Dagster
   [p50 <= 0.5 s, p95 <= 1 s].
3. 10,000 log messages from one invocation: all delivered, in order [0 lost, <= 2 s beyond
   the function's own time].
4. 8 concurrent materializations against one function instance [all succeed, each sees only
   its own messages].
"""

import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import dagster as dg
import requests
from dagster import PipesMessageHandler, PipesMessageReader
from dagster_gcp.pipes import PipesGCSMessageReader
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    encode_param,
)
from google.cloud import storage

from bench import console
from bench.report import Row
from dagster_pipes_gcf import (
    PipesCloudFunctionClient,
    PipesCloudStorageMessageReader,
    PipesSharedLocationReader,
)
from dagster_pipes_gcf.message_reader import PipesAttemptMessageReader
from devstack.stack import local_stack

Reader = TypeVar("Reader", bound=PipesMessageReader)
STREAMER = Path(__file__).parent / "functions" / "streamer.py"
BUCKET = "bench-pipes"
# Every key Dagster's context data has, as Dagster sends it.
BARE_CONTEXT: dict[str, Any] = {
    "asset_keys": ["bench"],
    "code_version_by_asset_key": None,
    "provenance_by_asset_key": None,
    "partition_key": None,
    "partition_key_range": None,
    "partition_time_window": None,
    "run_id": "bare",
    "job_name": None,
    "retry_number": 0,
    "extras": {},
}


@dataclass
class Tap:
    """Wraps Dagster's message handler to timestamp every message the reader delivers."""

    handler: PipesMessageHandler
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def handle_message(self, message: Any) -> None:
        self.received.append((time.time(), message))
        self.handler.handle_message(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)


def tapped(reader: Reader, taps: list[Tap]) -> Reader:
    """``reader`` with every session's messages recorded in a new :class:`Tap`."""
    inner = reader.read_messages

    @contextmanager
    def read_messages(handler: PipesMessageHandler) -> Iterator[Any]:
        tap = Tap(handler)
        taps.append(tap)
        with inner(tap) as params:  # type: ignore[arg-type]
            yield params

    reader.read_messages = read_messages  # type: ignore[method-assign]
    return reader


@dataclass
class Outcome:
    success: bool
    wall_s: float
    handler_s: float
    logs: list[tuple[float, str]]  # (received at, message) of the streamed log lines

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.handler_s


def materialize(
    client: PipesCloudFunctionClient, url: str, event: dict[str, Any], taps: list[Tap]
) -> Outcome:
    record: dict[str, float] = {"wall": 0.0, "handler": 0.0}

    @dg.asset(name="bench_stream")
    def bench_stream(
        context: dg.AssetExecutionContext, pipes_function_client: PipesCloudFunctionClient
    ) -> dg.MaterializeResult[None]:
        started = time.perf_counter()
        invocation = pipes_function_client.run(context=context, function_url=url, event=event)
        record["wall"] = time.perf_counter() - started
        record["handler"] = float(invocation.metadata["function_handler_s"].value)  # type: ignore[arg-type]
        return invocation.get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    try:
        result = dg.materialize(
            [bench_stream],
            resources={"pipes_function_client": client},
            instance=instance,
            raise_on_error=False,
        )
    finally:
        instance.dispose()
    prefix = f"{event['tag']} "
    logs = [(at, line) for at, line in log_lines(taps) if line.startswith(prefix)]
    return Outcome(result.success, record["wall"], record["handler"], logs)


def log_lines(taps: list[Tap]) -> list[tuple[float, str]]:
    """Every streamed log line with its receive time (floods arrive as multi-line entries)."""
    return [
        (at, line)
        for tap in list(taps)
        for at, message in list(tap.received)
        if message.get("method") == "log"
        for line in str(message["params"]["message"]).split("\n")
    ]


def _tag_of(tap: Tap) -> str | None:
    for _, message in tap.received:
        if message.get("method") == "log":
            return str(message["params"]["message"]).split(" ", 1)[0]
    return None


def bare_post(url: str) -> float:
    """Baseline: POST a Pipes body directly (nobody reads the messages); wall minus handler."""
    body = {
        "tag": "bare",
        "count": 3,
        "interval_s": 0,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": BARE_CONTEXT}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
            {"bucket": BUCKET, "key_prefix": f"bare/{uuid.uuid4().hex}"}
        ),
    }
    started = time.perf_counter()
    response = requests.post(url, json=body, timeout=60)
    wall = time.perf_counter() - started
    response.raise_for_status()
    return wall - float(response.json()["duration_s"])


@contextmanager
def bench_stack() -> Iterator[str]:
    """GCS emulator + the streamer function (8 threads); yields the function URL."""
    with (
        console.work_dir("transport") as work,
        local_stack(work, pipes_bucket=BUCKET, function_source=STREAMER) as stack,
        # The Dagster side (this process) reads the same emulator.
        mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": stack.emulator_url}),
    ):
        yield stack.function_url


Impl = tuple[str, Callable[[], PipesAttemptMessageReader]]


def implementations() -> list[Impl]:
    stock = PipesGCSMessageReader  # dagster-gcp's own reader at its defaults (10 s polls)
    return [
        ("ours", lambda: PipesCloudStorageMessageReader(bucket=BUCKET)),
        ("stock", lambda: PipesSharedLocationReader(stock(bucket=BUCKET, client=storage.Client()))),
    ]


def _client(reader: PipesAttemptMessageReader) -> PipesCloudFunctionClient:
    return PipesCloudFunctionClient(message_reader=reader)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def overhead(url: str) -> list[Row]:
    baseline = statistics.median(bare_post(url) for _ in range(10))
    rows = []
    for name, make in implementations():
        taps: list[Tap] = []
        client = _client(tapped(make(), taps))  # one resource instance, as in a code location
        runs = [
            materialize(client, url, {"tag": f"o{i}", "count": 3, "interval_s": 0}, taps)
            for i in range(10 if name == "ours" else 3)
        ]
        lost = sum(3 - len(run.logs) for run in runs)
        rows.append(
            Row(
                "1 overhead/materialization",
                f"median s ({name})",
                statistics.median(r.overhead_s for r in runs),
                "s",
                baseline,
                "bare POST",
                target=0.3 if name == "ours" else None,
            )
        )
        rows.append(
            Row(
                "1 overhead/materialization",
                f"log lines lost ({name})",
                lost,
                "",
                target=0 if name == "ours" else None,
            )
        )
    return rows


def latency(url: str) -> list[Row]:
    results: dict[str, list[float]] = {}
    for name, make in implementations():
        taps: list[Tap] = []
        run = materialize(
            _client(tapped(make(), taps)), url, {"tag": "lat", "count": 40, "interval_s": 0.1}, taps
        )
        results[name] = [at - float(message.rsplit(" ", 1)[1]) for at, message in run.logs]
    ours, stock = results["ours"], results["stock"] or [float("nan")]
    return [
        Row(
            "2 streaming latency",
            "p50 s (ours)",
            _percentile(ours, 0.5),
            "s",
            _percentile(stock, 0.5),
            "stock",
            target=0.5,
        ),
        Row(
            "2 streaming latency",
            "p95 s (ours)",
            _percentile(ours, 0.95),
            "s",
            _percentile(stock, 0.95),
            "stock",
            target=1.0,
        ),
        Row(
            "2 streaming latency", "delivered while running (stock)", len(results["stock"]), "of 40"
        ),
    ]


def flood(url: str) -> list[Row]:
    rows = []
    for name, make in implementations():
        taps: list[Tap] = []
        run = materialize(
            _client(tapped(make(), taps)), url, {"tag": "f", "count": 10_000, "interval_s": 0}, taps
        )
        indexes = [int(message.split(" ")[1]) for _, message in run.logs]
        in_order = indexes == sorted(indexes)
        target = name == "ours"
        rows += [
            Row(
                "3 10k messages",
                f"lost ({name})",
                10_000 - len(set(indexes)),
                "",
                target=0 if target else None,
            ),
            Row(
                "3 10k messages",
                f"in order ({name})",
                float(in_order),
                "",
                target=1 if target else None,
                better="higher",
            ),
            Row(
                "3 10k messages",
                f"s beyond function ({name})",
                run.overhead_s,
                "s",
                target=2.0 if target else None,
            ),
            Row("3 10k messages", f"step succeeded ({name})", float(run.success), ""),
        ]
    return rows


def concurrency(url: str) -> list[Row]:
    rows = []
    for name, make in implementations():
        taps: list[Tap] = []
        client = _client(tapped(make(), taps))
        outcomes: dict[str, Outcome] = {}

        def one(
            tag: str,
            client: PipesCloudFunctionClient = client,
            taps: list[Tap] = taps,
            outcomes: dict[str, Outcome] = outcomes,
        ) -> None:
            outcomes[tag] = materialize(
                client, url, {"tag": tag, "count": 200, "interval_s": 0.005}, taps
            )

        threads = [threading.Thread(target=one, args=(f"c{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        foreign = sum(
            1
            for tap in taps
            for _, line in log_lines([tap])
            if not line.startswith(f"{_tag_of(tap)} ")
        )
        lost = sum(200 - len(o.logs) for o in outcomes.values())
        target = name == "ours"
        rows += [
            Row(
                "4 8 concurrent runs",
                f"succeeded ({name})",
                sum(o.success for o in outcomes.values()),
                "of 8",
                target=8 if target else None,
                better="higher",
            ),
            Row(
                "4 8 concurrent runs",
                f"foreign messages ({name})",
                foreign,
                "",
                target=0 if target else None,
            ),
            Row(
                "4 8 concurrent runs",
                f"lost messages ({name})",
                lost,
                "",
                target=0 if target else None,
            ),
        ]
    return rows


def run() -> list[Row]:
    with bench_stack() as url:
        rows: list[Row] = []
        for scenario in (overhead, latency, flood, concurrency):
            rows += scenario(url)
        return rows
