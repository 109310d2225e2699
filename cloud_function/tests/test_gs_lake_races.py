"""Racing writes to a ``gs://`` lake through the real local stack, in a stack of their own:
one commit per invocation when first writes race on a new table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devstack.stack import LocalStack, local_stack

from .test_gs_lake import PIPES_BUCKET, RACERS, data_commits, new_lake, race, request_body, rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory.mktemp("gs-races"), pipes_bucket=PIPES_BUCKET,
                     gs_lake=True) as running:  # fmt: skip
        yield running


def test_racing_first_writes_on_a_new_table_commit_once_per_invocation(
    stack: LocalStack,
) -> None:
    lake = new_lake(stack)
    bodies = [request_body("people", dl_bucket=lake, num_rows=3) for _ in range(RACERS)]

    answers = race(stack, bodies)

    assert [a.status_code for a in answers] == [200] * RACERS, [a.text for a in answers]
    versions = sorted(a.json()["result"]["delta_version"] for a in answers)
    assert versions == list(range(1, RACERS + 1))
    assert not any(a.json()["result"]["repeated"] for a in answers)
    table = f"{lake}/people"
    assert len(data_commits(stack, table)) == RACERS and rows(stack, table) == 3 * RACERS


def test_racing_copies_of_one_invocation_on_a_new_table_commit_once(stack: LocalStack) -> None:
    lake, invocation = new_lake(stack), uuid.uuid4().hex
    bodies = [request_body("people", invocation, dl_bucket=lake, num_rows=4) for _ in range(8)]

    answers = race(stack, bodies)

    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    results = [a.json()["result"] for a in answers]
    assert [r["repeated"] for r in results].count(False) == 1
    assert len({r["delta_version"] for r in results}) == 1
    table = f"{lake}/people"
    assert len(data_commits(stack, table)) == 1 and rows(stack, table) == 4
