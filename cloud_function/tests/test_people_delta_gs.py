"""A repeat's lookup on a ``gs://`` table, through delta-rs's own GCS store and the emulator.

The table is written locally and its objects uploaded to fake-gcs-server (which serves the
reads delta-rs makes, not its uploads): what is proven here is that commit files are read by
version number from ``gs://`` with the storage options the function builds.
"""

from collections.abc import Iterator
from pathlib import Path

import deltalake
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.net import free_port
from devstack.services import emulator_command, running
from gcf_pipes import RequestError
from people_lake.delta_table import previous_write, write_people_table
from people_lake.fake_people import generate_people
from people_lake.storage import TableRef, storage_options_for

BUCKET = "lake-bucket"
TABLE_URI = f"gs://{BUCKET}/lake/people"


@pytest.fixture
def gcs_bucket(tmp_path: Path) -> Iterator[tuple[storage.Bucket, str]]:
    """An empty bucket in a fresh emulator, and the emulator's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running("emulator", emulator_command(port, url, tmp_path / "emulator"), port):
        client = storage.Client(
            project="local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": url},
        )
        yield client.create_bucket(BUCKET), url


def upload_table(local: Path, bucket: storage.Bucket) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            bucket.blob(f"lake/people/{path.relative_to(local)}").upload_from_filename(path)


@pytest.mark.integration  # a real emulator process
def test_a_repeat_finds_its_commit_in_a_gs_table(
    tmp_path: Path, gcs_bucket: tuple[storage.Bucket, str]
) -> None:
    bucket, url = gcs_bucket
    local = TableRef(str(tmp_path / "people"))
    for i, rows in enumerate((3, 4, 5)):
        write_people_table(generate_people(rows, seed=i), local, invocation_id=f"inv-{i}")
    deltalake.DeltaTable(local.uri).create_checkpoint()  # at version 3
    upload_table(Path(local.uri), bucket)
    remote = TableRef(TABLE_URI, storage_options_for(TABLE_URI, url))

    found = [previous_write(remote, f"inv-{i}") for i in range(3)]

    assert [(w.version, w.rows_written, w.repeated) for w in found if w] == [
        (1, 3, True), (2, 4, True), (3, 5, True),
    ]  # fmt: skip
    assert [w.commit_metadata["marker"] for w in found if w] == ["inv-0", "inv-1", "inv-2"]
    assert previous_write(remote, "never") is None

    for version in (0, 1):  # the log cleaned up before the checkpoint
        bucket.blob(f"lake/people/_delta_log/{version:020d}.json").delete()
    with pytest.raises(RequestError, match="expired") as refused:
        previous_write(remote, "inv-0")
    assert refused.value.status == 409
