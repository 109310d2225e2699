"""What a fresh Cloud Run task process pays before its rows: no HTTP stack, no Faker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gcf_pipes
from people_lake import vocabulary
from people_lake.fake_people import generate_people

# Only the function's HTTP path needs these (flask, werkzeug, functions-framework), and only
# regenerating the vocabulary file needs Faker.
NOT_FOR_A_TASK = ("flask", "werkzeug", "functions_framework", "faker")


def _loaded_by(module: str) -> list[str]:
    probe = (
        f"import sys, json, {module}; "
        f"print(json.dumps(sorted(m for m in {NOT_FOR_A_TASK!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout)


def test_the_task_entry_point_loads_neither_the_http_stack_nor_faker() -> None:
    assert _loaded_by("people_lake.task") == []


def test_the_function_still_finds_its_http_handler() -> None:
    from gcf_pipes import handle_pipes_request
    from gcf_pipes.http import handle_pipes_request as defined

    assert handle_pipes_request is defined is gcf_pipes.handle_pipes_request
    with pytest.raises(AttributeError, match="no_such_name"):
        gcf_pipes.no_such_name  # noqa: B018 - the attribute lookup is the test


def test_the_shipped_vocabulary_is_what_faker_makes() -> None:
    """Fails when the file is stale: run ``python -m people_lake.vocabulary`` after changing
    ``generate`` (or when a Faker upgrade changes its seeded output, to take it on)."""
    generated = vocabulary.generate()
    assert vocabulary.load() == generated
    assert vocabulary.VOCABULARY_FILE.read_text(encoding="utf-8") == vocabulary.render(generated)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        json.dumps({name: ["a"] for name in vocabulary.FIELDS[:-1]}),
        json.dumps({**{name: ["a"] for name in vocabulary.FIELDS}, "streets": []}),
        json.dumps({**{name: ["a"] for name in vocabulary.FIELDS}, "streets": ["a", 1]}),
    ],
)
def test_a_malformed_vocabulary_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "vocabulary.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"vocabulary\.json"):
        vocabulary.load(path)


def test_rows_are_drawn_from_the_shipped_vocabulary() -> None:
    shipped = vocabulary.load()
    people = generate_people(200, seed=3)
    first_last = {
        f"{first} {last}" for first in shipped["first_names"] for last in shipped["last_names"]
    }
    assert set(people["name"]) <= first_last
    domains = set(shipped["email_domains"])
    assert {email.rsplit("@", 1)[1] for email in people["email"]} <= domains
