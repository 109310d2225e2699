"""delta-rs colours its error chains for a terminal; what leaves the function's lake work
(the 500 body, the Pipes messages, the logs) is plain text."""

import pytest

from people_lake.delta_table import lake_work, open_table, without_colour
from people_lake.storage import TableRef

# A gs:// table whose credentials file is missing: delta-rs fails at once, with its error
# chain of "↳" lines wrapped in ANSI colour codes.
UNREADABLE = TableRef(
    "gs://lake-bucket/lake/people", {"google_service_account_path": "/nonexistent/key.json"}
)


def test_a_delta_rs_error_leaves_the_lake_work_without_colour_codes() -> None:
    with pytest.raises(OSError) as raised, lake_work():
        open_table(UNREADABLE)
    text = str(raised.value)
    assert "\x1b" not in text
    assert "Generic GCS error" in text and "Unable to open service account file" in text


def test_an_error_without_colour_codes_is_left_as_it_is() -> None:
    with pytest.raises(NotADirectoryError) as raised, lake_work():
        raise NotADirectoryError("/lake/people exists and is not a directory (not a table)")
    assert str(raised.value) == "/lake/people exists and is not a directory (not a table)"


def test_without_colour_removes_only_the_escape_sequences() -> None:
    coloured = "Generic GCS error\n  \x1b[31m↳\x1b[0m GCP credential error\x1b[1;33m!\x1b[m"
    assert without_colour(coloured) == "Generic GCS error\n  ↳ GCP credential error!"
