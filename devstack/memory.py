"""Peak memory of a process, as measured for the bench and the memory tests.

Linux keeps ``ru_maxrss`` across ``exec``: a process started by a large one (a long pytest
run, the bench, the Cloud Run Jobs stand-in) reports at least the size of the process that
started it. ``VmHWM`` in /proc belongs to the running program's own memory only.
"""

from __future__ import annotations

import resource

KIB = 1024


def own_peak_bytes() -> int:
    """This process's own peak resident memory (``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB  # KiB on Linux
