"""The root conftest puts ``os.environ`` back after each test (the demo's settings load
``.env`` into it). The two tests run in file order on one worker: the second sees what the
first left."""

from __future__ import annotations

import os

ADDED = "PIPES_GCF_LEAK_CHECK"
PATH_BEFORE = os.environ["PATH"]


def test_a_test_adds_and_changes_variables() -> None:
    os.environ[ADDED] = "set by an earlier test"
    os.environ["PATH"] = f"/nonexistent:{PATH_BEFORE}"


def test_the_next_test_finds_the_environment_as_before() -> None:
    assert ADDED not in os.environ
    assert os.environ["PATH"] == PATH_BEFORE
