"""The stand-in runs tasks as an image would: with compiled bytecode, whatever the shell says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dagster_pipes_gcf.cloud_run_job import CloudRunJobsApi
from devstack.cloud_run_jobs import StandInConfig, peak_memory_records, running_stand_in

from .test_cloud_run_jobs import run, task_output, wait

# Each task prints what Python does with bytecode in it, then imports the warmed module.
TASK = """
import json, sys
print(json.dumps({"dont_write": sys.flags.dont_write_bytecode, "prefix": sys.pycache_prefix}))
import warmed_module
"""


def test_tasks_reuse_the_bytecode_compiled_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "warmed_module.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a developer shell's setting
    job = {
        "command": [sys.executable, "-c", TASK],
        "env": {"PYTHONPATH": str(source)},
        "warm_imports": ["warmed_module"],
        "max_retries": 0,
    }
    work = tmp_path / "jobs"
    with running_stand_in(work, {"warm": job}) as address:
        bytecode = work / "bytecode"
        compiled = list(bytecode.rglob("warmed_module.*.pyc"))
        assert compiled, "the warm import wrote no bytecode at start"
        api = CloudRunJobsApi.local(address)
        execution = wait(api, run(api, "warm", task_count=2).name)
        assert execution.succeeded_count == 2
        for task in api.tasks.list_tasks(parent=execution.name):
            seen = json.loads(task_output(task)[0])
            assert seen == {"dont_write": 0, "prefix": str(bytecode)}
    assert [p.stat().st_mtime_ns for p in compiled] == [
        p.stat().st_mtime_ns for p in bytecode.rglob("warmed_module.*.pyc")
    ]  # reused, not compiled again


def one_attempt_record(tmp_path: Path, code: str) -> dict[str, float]:
    """The side-channel record of one task attempt running ``python -c code``."""
    job = {"command": [sys.executable, "-c", code], "max_retries": 0}
    with running_stand_in(tmp_path, {"one": job}) as address:
        api = CloudRunJobsApi.local(address)
        assert wait(api, run(api, "one").name).succeeded_count == 1
    [record] = peak_memory_records(tmp_path / "tasks")
    return record


def test_each_attempt_reports_its_cpu_and_wall_seconds(tmp_path: Path) -> None:
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    record = one_attempt_record(tmp_path, spin)
    assert record["cpu_s"] >= 0.3 and record["wall_s"] >= record["cpu_s"] * 0.5


def test_each_attempt_reports_its_peak_above_the_stand_in_s_own_size(tmp_path: Path) -> None:
    """ru_maxrss survives exec: a task's reading is at least the stand-in's size, which the
    record names so that a reading of only that is told apart."""
    grow = "held = bytearray(400 * 2**20)\nheld[::4096] = b'x' * len(held[::4096])"
    record = one_attempt_record(tmp_path, grow)
    assert 0 < record["starter_peak_bytes"] < 200 * 2**20 < 400 * 2**20 < record["peak_rss_bytes"]


def test_the_config_takes_the_tasks_working_directory_and_bytecode_dir(tmp_path: Path) -> None:
    raw = {
        "jobs": {"j": {"command": ["true"], "warm_imports": ["json"]}},
        "log_dir": str(tmp_path / "tasks"),
        "cwd": str(tmp_path),
        "bytecode_dir": str(tmp_path / "bytecode"),
    }
    config = StandInConfig.from_json(json.dumps(raw))
    assert (config.cwd, config.bytecode_dir) == (tmp_path, tmp_path / "bytecode")
    assert config.jobs["j"].warm_imports == ("json",)
    assert StandInConfig.from_json(json.dumps({**raw, "cwd": None})).cwd is None
