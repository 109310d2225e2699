"""The fake-data vocabulary: names, streets, localities and e-mail domains the rows are drawn
from, shipped as a generated file (``vocabulary.json`` next to this module).

Faker made them once, from a fixed seed; a process reads the file instead of importing Faker
and calling it a few thousand times (about 0.5 CPU-seconds in every fresh process: each Cloud
Run task, each function instance). The rows therefore no longer depend on the installed
Faker, and the deployed function does not install it. ``python -m people_lake.vocabulary``
writes the file again from Faker (after a change to :func:`generate`; Faker comes with the
workspace's test tools); a test checks that the file is what :func:`generate` makes.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")
VOCABULARY_SEED = 20240526
VOCABULARY_SIZE = 500
FIELDS = ("first_names", "last_names", "streets", "localities", "email_domains")


def generate(size: int = VOCABULARY_SIZE) -> dict[str, list[str]]:
    """The vocabulary from Faker (``en_US``, fixed seed): what the file holds."""
    from faker import Faker  # only to regenerate the file (and in its test)

    fake = Faker("en_US")
    fake.seed_instance(VOCABULARY_SEED)
    first = [fake.first_name() for _ in range(size)]
    last = [fake.last_name() for _ in range(size)]
    localities = [
        f"{fake.city()}, {fake.state_abbr(include_territories=False)} {fake.zipcode()}"
        for _ in range(size)
    ]
    # Mostly webmail, some company domains (repeats keep Faker's weighting).
    domains = [fake.free_email_domain() for _ in range(size // 8)]
    domains += [fake.domain_name() for _ in range(size // 25)]
    streets = [fake.street_name() for _ in range(size)]
    return {
        "first_names": first,
        "last_names": last,
        "streets": streets,
        "localities": localities,
        "email_domains": domains,
    }


def load(path: Path = VOCABULARY_FILE) -> dict[str, list[str]]:
    """The shipped vocabulary; a file missing a field or holding anything but lists of
    strings is refused (it would make other rows silently)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or set(raw) != set(FIELDS):
        raise ValueError(f"{path}: expected exactly the fields {FIELDS}")
    for name in FIELDS:
        values = raw[name]
        if not values or not all(isinstance(value, str) and value for value in values):
            raise ValueError(f"{path}: {name} must be a non-empty list of non-empty strings")
    return raw


def render(vocabulary: dict[str, list[str]]) -> str:
    """The file's text: one field per line (readable diffs), stable across runs."""
    lines = [f"  {json.dumps(name)}: {json.dumps(vocabulary[name])}" for name in FIELDS]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    VOCABULARY_FILE.write_text(render(generate()), encoding="utf-8")
    print(f"wrote {VOCABULARY_FILE}")


if __name__ == "__main__":
    main()
