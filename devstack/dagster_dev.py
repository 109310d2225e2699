"""Run ``dagster dev`` so that SIGTERM (from honcho or a test) shuts it down cleanly.

``dagster dev`` ignores SIGTERM, and a backgrounded process inherits an ignored SIGINT, so
a plain process runner would leave its webserver, daemon and code servers behind. This
launcher starts ``dagster dev`` in its own process group (a runner's SIGTERM to the
launcher's group must not hit the webserver, daemon and code server mid-shutdown: that turns
a 3 s shutdown into a kill), forwards SIGINT/SIGTERM to it as SIGINT, and kills its whole
group once it exits or when the grace period is over. On Linux the child also dies with the
launcher (PR_SET_PDEATHSIG), so even a SIGKILL of the launcher leaves nothing behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
# devstack.supervise gives each process 10 s after SIGTERM; stop (or give up) before that.
GRACE_SECONDS = 8.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEV_SUPERSEDED = "Function `dev_command` is superseded"
WORKSPACE = REPO_ROOT / "dagster" / "workspace.yaml"  # the code location `gcf_demo`


def prepare_home(home: Path) -> None:
    """Create DAGSTER_HOME with a ``dagster.yaml`` (silences dagster's "no config" warning)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("# Dagster instance of the local stack (devstack); defaults.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    args = parser.parse_args(argv)

    env = dict(os.environ)
    home = Path(env.get("DAGSTER_HOME") or REPO_ROOT / ".data" / "dagster_home").resolve()
    prepare_home(home)
    env["DAGSTER_HOME"] = str(home)
    # `dagster dev` warns that `dg dev` supersedes it; `dg` (dagster-dg-cli) would add ~90
    # packages to run the same webserver and daemon, so the local stack keeps `dagster dev`.
    env["PYTHONWARNINGS"] = ",".join(
        filter(None, [env.get("PYTHONWARNINGS"), f"ignore:{DEV_SUPERSEDED}"])
    )
    command = [
        sys.executable, "-m", "dagster", "dev", "-w", str(args.workspace.resolve()),
        "-h", args.host, "-p", str(args.port),
    ]  # fmt: skip
    child = subprocess.Popen(
        command,
        env=env,
        # `dagster dev` loads `.env` from its working directory and lets it override the
        # environment; run it where there is none so env vars win (settings read `.env`).
        cwd=home,
        preexec_fn=_child_setup,  # noqa: PLW1509
    )

    stop = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        stop.set()

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while child.poll() is None and not stop.wait(0.2):
        pass
    try:
        return child.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"dagster dev did not stop within {GRACE_SECONDS:g}s; killing it", file=sys.stderr)
        return 1
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # nothing of dagster dev outlives the launcher
        child.wait()


def _child_setup() -> None:
    """In the child, before exec: own process group, default SIGINT, die with the launcher."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":
        with suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
