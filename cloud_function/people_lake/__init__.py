"""Business logic of the people function: fake data written to a Delta table."""

import os

__version__ = "0.1.0"

# polars and deltalake each bring a jemalloc that reads this once, when the library loads (so
# this package is imported first). Freed pages go back to the system at once instead of after
# 10 s: a request of 5,000,000 rows then peaks about 100 MiB lower (under 512 MiB), for about
# a third more CPU time in the write (see README, "Sizing rule"). Set it to override.
ALLOCATOR_CONF_VAR = "_RJEM_MALLOC_CONF"
os.environ.setdefault(ALLOCATOR_CONF_VAR, "dirty_decay_ms:0,muzzy_decay_ms:0")
