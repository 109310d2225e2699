"""``just emulator``: the GCS emulator from the emulator's wheel alone, not the workspace.

The recipe runs in a terminal with an environment that names neither the workspace's venv nor
its packages; uv builds a throwaway one (from its cache when it can). The emulator then
answers google-cloud-storage at the printed address, with GCS's no-overwrite precondition,
and Ctrl-C stops it without ``just`` reporting an error.
"""

from __future__ import annotations

import os
import pty
import shutil
from contextlib import suppress
from pathlib import Path

import pytest
from google.api_core.exceptions import PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.emulator_standalone import main
from devstack.net import LOOPBACK, free_port
from devstack.services import REPO_ROOT
from devstack.tests.conftest import Devstack, marked_processes
from devstack.tests.test_ctrl_c_in_a_terminal import read_until

JUST = shutil.which("just")
WORKSPACE_VENV = REPO_ROOT / ".venv"
# What would point uv or Python at the workspace's environment.
WORKSPACE_SETTINGS = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")


def without_the_workspace(env: dict[str, str]) -> dict[str, str]:
    """A user's shell (network and uv settings kept) with nothing naming the workspace's venv."""
    path = [p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(WORKSPACE_VENV))]
    kept = {name: value for name, value in env.items() if name not in WORKSPACE_SETTINGS}
    return {**kept, "PATH": os.pathsep.join(path)}


def executables(pids: list[int]) -> list[Path]:
    found = []
    for pid in pids:
        with suppress(OSError):
            found.append(Path(os.readlink(f"/proc/{pid}/exe")))
    return found


@pytest.mark.skipif(JUST is None, reason="just is not installed")
def test_just_emulator_serves_the_bucket_it_prints_without_the_workspace(
    devstack: Devstack,
) -> None:
    env = without_the_workspace(devstack.env)
    url, bucket = env["STORAGE_EMULATOR_HOST"], env["PIPES_BUCKET"]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `just emulator` as a terminal's foreground job
        os.chdir(REPO_ROOT)
        os.execve(str(JUST), [str(JUST), "emulator"], env)
    seen = bytearray()
    try:
        up = read_until(terminal, b"Press Ctrl-C to stop the emulator.", 120, seen)
        output = seen.decode(errors="replace")
        assert up, output
        assert f"serving the bucket '{bucket}'" in output
        assert output.count(f"export STORAGE_EMULATOR_HOST={url}") == 2  # each side's list
        assert output.count(f"export PIPES_BUCKET={bucket}") == 2
        running = executables(marked_processes(devstack.marker))
        assert any(exe.name.startswith("fake-gcs-server") for exe in running), running
        assert not [exe for exe in running if exe.is_relative_to(WORKSPACE_VENV)], running

        client = storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
        )
        blob = client.bucket(bucket).blob("standalone/1.json")
        blob.upload_from_string(b'{"ok": 1}', if_generation_match=0)
        assert blob.download_as_bytes() == b'{"ok": 1}'
        with pytest.raises(PreconditionFailed):
            blob.upload_from_string(b"again", if_generation_match=0)

        os.write(terminal, b"\x03")  # Ctrl-C, as typed
        read_until(terminal, b"\0", 30, seen)  # until the terminal closes
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
    output = seen.decode(errors="replace")
    assert "interrupted" not in output.lower(), output
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert devstack.survivors() == []


def test_a_bucket_name_gcs_would_refuse_is_named_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    assert main(["--url", url, "--bucket", "Not_A_Bucket"], env={}) == 2
    assert "'Not_A_Bucket' is not a GCS bucket name" in capsys.readouterr().err
