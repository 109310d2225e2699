"""Cold start: the people function's ``import main`` in a fresh process, the module load a
new instance does before it serves, against a bare functions-framework function (one
``@functions_framework.http`` handler) measured in the same run.

Each import runs in a new interpreter, loaded as functions-framework loads ``--source`` (its
directory on ``sys.path``, the module named after the file), alternating the two functions,
best of ``RUNS`` each (the least disturbed by other work on the machine). Both files import
functions-framework, so its own import is in both figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bench.report import Row
from devstack.services import FUNCTION_SOURCE

SCENARIO = "cold start"
BARE_FUNCTION = Path(__file__).parent / "functions" / "bare" / "main.py"
# What main.py reads at import (people_lake.settings): a valid bucket name.
FUNCTION_ENV = {"PIPES_BUCKET": "bench-cold-start"}
RUNS = 5
# functions_framework._function_registry.load_function_module, then exec_module; the time
# taken is the last line of stdout (the module may print its own lines before it).
IMPORT_TIMER = """
import importlib.util, os, sys, time
started = time.perf_counter()
path = os.path.realpath(sys.argv[1])
directory, filename = os.path.split(path)
name = os.path.splitext(filename)[0]
spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[directory])
module = importlib.util.module_from_spec(spec)
sys.path.append(directory)
sys.modules[name] = module
spec.loader.exec_module(module)
print(time.perf_counter() - started)
"""


def import_seconds(source: Path, env: Mapping[str, str] | None = None) -> float:
    """Seconds a fresh interpreter takes to load ``source`` as functions-framework does."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_TIMER, str(source)],
        cwd=source.parent,
        env=env,
        stdout=subprocess.PIPE,  # the time; an import error's traceback goes to our stderr
        text=True,
        check=True,
        timeout=120,
    )
    return float(done.stdout.strip().splitlines()[-1])


def best_import_seconds(
    sources: Mapping[str, Path], env: Mapping[str, str], runs: int = RUNS
) -> dict[str, float]:
    """The fastest of ``runs`` fresh-process loads of each source, taken in turns."""
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(runs):
        for name, source in sources.items():
            times[name].append(import_seconds(source, env))
    return {name: min(values) for name, values in times.items()}


def cold_start_rows(function_s: float, bare_s: float) -> list[Row]:
    label = "bare functions-framework function"
    return [
        Row(SCENARIO, "import main, fresh process (people function)", function_s, "s", bare_s,
            label),
        Row(SCENARIO, "  people function / bare function", function_s / bare_s, "x"),
    ]  # fmt: skip


def run() -> list[Row]:
    env = {**os.environ, **FUNCTION_ENV}
    best = best_import_seconds({"function": FUNCTION_SOURCE, "bare": BARE_FUNCTION}, env)
    return cold_start_rows(best["function"], best["bare"])
