"""Business logic of the people function: fake data written to a Delta table."""

import importlib
import os

__version__ = "0.1.0"

# deltalake and polars each bring a jemalloc that reads this variable once, when it loads: they
# are loaded here, before any module of this package uses them (deltalake first, or a crash at
# exit). polars hands freed pages back at once (it frees about 100 MiB of strings per second
# while generating), deltalake within a second (at once cost its writes a third more time).
# A request of 5,000,000 rows peaks about 100 MiB lower (see README, "Sizing rule").
ALLOCATOR_CONF_VAR = "_RJEM_MALLOC_CONF"  # set it to override both
ALLOCATOR_CONF = {
    "deltalake": "dirty_decay_ms:1000,muzzy_decay_ms:0",
    "polars": "dirty_decay_ms:0,muzzy_decay_ms:0",
}


def _load_data_libraries() -> None:
    configured = os.environ.get(ALLOCATOR_CONF_VAR)
    for name, conf in ALLOCATOR_CONF.items():
        os.environ[ALLOCATOR_CONF_VAR] = configured or conf
        module = importlib.import_module(name)
        if name == "polars":
            module.Series([0])  # polars loads its runtime (and allocator) on first use
    if configured is None:
        del os.environ[ALLOCATOR_CONF_VAR]


_load_data_libraries()
