"""Where ``just bench`` keeps Dagster's and the services' output."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bench import console
from bench.__main__ import new_log_dir
from bench.transport import bench_stack


def test_only_the_latest_runs_keep_their_logs(tmp_path: Path) -> None:
    for name in ["20260101-000000", "20260102-000000", "20260103-000000", "20260104-000000"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.log").write_text("output")

    fresh = new_log_dir(tmp_path, keep=3)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260103-000000", "20260104-000000"]
    assert fresh.parent == tmp_path and not fresh.exists()


def test_the_first_run_makes_its_directory_under_a_missing_root(tmp_path: Path) -> None:
    assert new_log_dir(tmp_path / "logs").parent == tmp_path / "logs"


def test_the_services_logs_outlive_their_temporary_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setattr(console, "_log_dir", logs)
    with pytest.raises(RuntimeError, match="scenario failed"):
        with console.work_dir("backfill") as work:
            (work / "function.log").write_text("function output")
            (work / "emulator-data").mkdir()
            (work / "emulator-data" / "adapter.log").write_text("adapter output")
            (work / "emulator-data" / "objects" / "b").mkdir(parents=True)
            (work / "emulator-data" / "objects" / "b" / "x.log").write_text("an object")
            (work / "lake" / "t").mkdir(parents=True)
            (work / "lake" / "t" / "y.log").write_text("lake data")
            raise RuntimeError("scenario failed")
    assert not work.exists()
    kept = {path.name: path.read_text() for path in logs.iterdir()}
    assert kept == {
        "backfill-function.log": "function output",
        "backfill-emulator-data-adapter.log": "adapter output",
    }


def test_a_work_directory_needs_the_runs_log_directory() -> None:
    with pytest.raises(RuntimeError, match="output_to_log"):
        with console.work_dir("transport"):
            pass


@pytest.mark.integration
def test_the_transport_stacks_function_and_emulator_logs_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_log_dir", tmp_path)
    with bench_stack() as url:
        assert requests.get(url, timeout=10).status_code < 500
    names = {path.name for path in tmp_path.iterdir()}
    assert {"transport-function.log", "transport-emulator.log"} <= names
    assert (tmp_path / "transport-function.log").stat().st_size > 0
