"""Where ``just bench`` keeps Dagster's and the services' output."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import new_log_dir


def test_only_the_latest_runs_keep_their_logs(tmp_path: Path) -> None:
    for name in ["20260101-000000", "20260102-000000", "20260103-000000", "20260104-000000"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.log").write_text("output")

    fresh = new_log_dir(tmp_path, keep=3)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260103-000000", "20260104-000000"]
    assert fresh.parent == tmp_path and not fresh.exists()


def test_the_first_run_makes_its_directory_under_a_missing_root(tmp_path: Path) -> None:
    assert new_log_dir(tmp_path / "logs").parent == tmp_path / "logs"
