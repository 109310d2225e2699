"""The cold-start measurement: a fresh interpreter loads a function file as functions-framework
loads ``--source``, and the time covers what the module does at import."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.cold_start import BARE_FUNCTION, cold_start_rows, import_seconds

SLOW_MAIN = """
import time
import helper  # a sibling module: the function's directory is on sys.path
print("a line of the module's own")
time.sleep(float(helper.SECONDS))
"""


def test_the_time_covers_the_modules_own_import_work(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("SECONDS = 0.3\n")
    (tmp_path / "main.py").write_text(SLOW_MAIN)
    assert 0.3 <= import_seconds(tmp_path / "main.py") < 5


def test_each_load_is_a_fresh_process(tmp_path: Path) -> None:
    marker = tmp_path / "loads"
    (tmp_path / "main.py").write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    import_seconds(tmp_path / "main.py")
    import_seconds(tmp_path / "main.py")
    assert marker.read_text() == "xx"


def test_a_function_that_fails_to_import_fails_the_measurement(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("raise RuntimeError('no settings')\n")
    with pytest.raises(subprocess.CalledProcessError):
        import_seconds(tmp_path / "main.py")


def test_the_bare_function_loads_with_functions_framework() -> None:
    assert 0 < import_seconds(BARE_FUNCTION) < 30


def test_the_rows_give_the_ratio_to_the_bare_function() -> None:
    measured, ratio = cold_start_rows(function_s=2.0, bare_s=0.25)
    assert (measured.value, measured.baseline, measured.ratio) == (2.0, 0.25, 0.125)
    assert (ratio.value, ratio.unit) == (8.0, "x")
