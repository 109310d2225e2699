"""Business logic of the people function: fake data written to a Delta table."""

import os

__version__ = "0.1.0"

# deltalake and polars each bring a jemalloc that reads this variable once, when it loads (so
# the function imports this package before them). Freed pages go back to the system within a
# quarter of a second instead of ten: generating and writing free hundreds of MiB a second,
# and a request of 5,000,000 rows peaks about 80 MiB lower for about the same CPU time (see
# README, "Sizing rule"). Appended, since the last setting wins: a loaded polars puts its own
# defaults into the variable, which child processes inherit.
ALLOCATOR_CONF_VAR = "_RJEM_MALLOC_CONF"
ALLOCATOR_CONF = "dirty_decay_ms:250,muzzy_decay_ms:0"
os.environ[ALLOCATOR_CONF_VAR] = ",".join(
    filter(None, (os.environ.get(ALLOCATOR_CONF_VAR), ALLOCATOR_CONF))
)
