"""Business logic of the people function: fake data written to a Delta table."""

import os

__version__ = "0.1.0"

# deltalake and polars each bring a jemalloc that reads this variable once, when it loads (so
# the function imports this package before them). Freed pages go back to the system at once
# instead of after ten seconds: generating and writing free hundreds of MiB a second. Measured
# (fresh process, one request of 5,000,000 rows, same machine and load): a quarter-second
# decay peaked 411 MiB in one write and 462 MiB over 366 days (up to 540 MiB on a quieter
# machine, when less had decayed by the peak); no decay 378-382 MiB and 412-413 MiB, for
# the same wall time (see README, "Sizing rule"). Appended, since the last setting wins: a
# loaded polars puts its own defaults into the variable, which child processes inherit.
ALLOCATOR_CONF_VAR = "_RJEM_MALLOC_CONF"
ALLOCATOR_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
os.environ[ALLOCATOR_CONF_VAR] = ",".join(
    filter(None, (os.environ.get(ALLOCATOR_CONF_VAR), ALLOCATOR_CONF))
)
