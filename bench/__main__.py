"""``python -m bench [scenario ...]``: run the benchmark scenarios and print one table.

Each scenario module exposes ``run() -> list[Row]``; add new modules to ``SCENARIOS``.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.report import Row, render

SCENARIOS: dict[str, str] = {
    "transport": "bench.transport",
    "data_generation": "bench.data_generation",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    rows: list[Row] = []
    for name in args.scenarios or list(SCENARIOS):
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(SCENARIOS[name])
        rows.extend(module.run())
    print(render(rows))
    missed = [row for row in rows if row.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) missed", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
