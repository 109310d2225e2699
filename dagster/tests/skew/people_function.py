"""The people function (``cloud_function/main.py``), announcing the versions its process runs.

functions-framework serves this file from the venv under test; the line it prints first
lets the skew test check which dagster-pipes answered, not which one it meant to start.
"""

import json
import sys
from importlib.metadata import version

import dagster_pipes
from main import main  # noqa: F401 - the entry point functions-framework serves

VERSIONS_LINE = "skew-test function versions: "

VERSIONS = {"dagster-pipes": version("dagster-pipes"), "file": dagster_pipes.__file__}
print(VERSIONS_LINE + json.dumps(VERSIONS), file=sys.stderr)
sys.stderr.flush()
