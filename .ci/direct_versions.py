"""Print the installed version of every direct dependency the given pyproject.toml files declare.

With ``--lowest`` (after a lowest-direct install) it also fails unless each declared lower bound
is the version installed: a bound that uv had to raise is a range nobody tested.
"""

import argparse
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.version import Version


def direct_requirements(manifests: list[str]) -> list[Requirement]:
    requirements = []
    for manifest in manifests:
        with open(manifest, "rb") as file:
            declared = tomllib.load(file)["project"]["dependencies"]
        requirements += [Requirement(line) for line in declared]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds, default=None)


def untested_bounds(requirements: list[Requirement]) -> list[str]:
    problems = []
    for requirement in requirements:
        bound = lower_bound(requirement)
        if bound is None:
            problems.append(f"{requirement}: no lower bound")
        elif (installed := Version(version(requirement.name))) != bound:
            problems.append(f"{requirement}: lowest-direct installed {installed}: declare that")
    return problems


def installed(name: str) -> str:
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return f"{name} (not installed)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--lowest", action="store_true")
    args = parser.parse_args()
    requirements = direct_requirements(args.manifests)
    print(" ".join(sorted({installed(r.name) for r in requirements})))
    problems = untested_bounds(requirements) if args.lowest else []
    for problem in problems:
        print(f"untested lower bound: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
