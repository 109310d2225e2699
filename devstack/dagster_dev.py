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
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
# devstack.supervise gives each process 10 s after SIGTERM; stop (or give up) before that.
GRACE_SECONDS = 8.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEV_SUPERSEDED = "Function `dev_command` is superseded"
WORKSPACE = REPO_ROOT / "demo" / "workspace.yaml"  # the code location `gcf_demo`


MANAGED = "# Dagster instance of the local stack, written by devstack (dagster_dev.py)."
LEGACY = "# Dagster instance of the local stack (devstack); defaults."
QUIET = "nux:\n  enabled: false\ntelemetry:\n  enabled: false\n"
POOL = "people_function"  # gcf_demo.defs.assets.PEOPLE_FUNCTION_POOL
# Request threads of the local function (its Cloud Run concurrency): with one instance, the
# calls in flight it serves, so the pool's default limit.
LOCAL_THREADS = 8


def default_pool_limit(env: Mapping[str, str]) -> int:
    """``PEOPLE_FUNCTION_POOL_LIMIT``, else the local function's ``THREADS``, else 8."""
    return int(env.get("PEOPLE_FUNCTION_POOL_LIMIT") or env.get("THREADS") or LOCAL_THREADS)


def instance_config(pool_limit: int, *, quiet: bool = False) -> str:
    """``dagster.yaml`` of the local instance.

    Every function-backed asset is in one concurrency pool (``people_function``); with
    ``granularity: run`` the run queue starts a run that uses the pool only while fewer than
    ``pool_limit`` such runs are in progress, so a backfill of one run per day never sends
    the function more calls than it serves at once. The queue is checked every second instead
    of every 5 s (the daemon's default), which a user sees as the wait after "Launched run",
    and queued runs are launched in parallel threads: launching one waits until its process
    has loaded the code location (seconds), which would otherwise hold back every run behind it.
    ``quiet``: no first-run modal, no telemetry (tests, benchmarks).
    """
    lines = [
        MANAGED,
        "# devstack rewrites this file while the line above is here; delete it to keep your edits.",
        "concurrency:",
        "  pools:",
        f"    default_limit: {pool_limit}",
        "    granularity: run",
        "run_queue:",
        "  dequeue_interval_seconds: 1",
        "  dequeue_use_threads: true",
        "  dequeue_num_workers: 4",
    ]
    return "\n".join(lines) + "\n" + (QUIET if quiet else "")


def prepare_home(home: Path, pool_limit: int = LOCAL_THREADS, *, quiet: bool = False) -> None:
    """Create DAGSTER_HOME with devstack's ``dagster.yaml`` (a user's own file is kept)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    current = config.read_text() if config.exists() else MANAGED
    if not current.startswith((MANAGED, LEGACY)):
        return
    quiet = quiet or QUIET in current  # a test's or benchmark's home stays quiet
    config.write_text(instance_config(pool_limit, quiet=quiet))


def register_pool(home: Path, pool: str = POOL) -> None:
    """Give ``pool`` its limit now: Dagster applies ``default_limit`` to a pool only once it has
    seen it, and until then the run queue starts that pool's runs without any limit."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.initialize_concurrency_limit_to_default(pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    parser.add_argument(
        "--pool-limit",
        type=int,
        default=default_pool_limit(os.environ),
        help="calls in flight to the function (default: PEOPLE_FUNCTION_POOL_LIMIT|THREADS|8)",
    )
    args = parser.parse_args(argv)

    env = dict(os.environ)
    home = Path(env.get("DAGSTER_HOME") or REPO_ROOT / ".data" / "dagster_home").resolve()
    prepare_home(home, args.pool_limit)
    register_pool(home)
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
