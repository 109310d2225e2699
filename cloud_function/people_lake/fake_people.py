"""Fake people, generated column-wise.

Calling Faker once per row is slow (a few thousand rows per second), so Faker fills small
pools of values and the rows are drawn from those pools with NumPy. Values that must be
unique (``id``, ``email``) are built from the row number instead of being sampled.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from faker import Faker

POOL_SIZE = 2_000
EVENT_WINDOW = dt.timedelta(days=365)


def _pool(fake: Faker, make: str, size: int) -> pl.Series:
    return pl.Series([getattr(fake, make)() for _ in range(size)], dtype=pl.String)


def generate_people(
    num_rows: int, *, seed: int | None = None, now: dt.datetime | None = None
) -> pl.DataFrame:
    """``num_rows`` fake people: id, name, address, email, phone and a ``created_at`` timestamp.

    The same ``seed`` (and ``now``) gives the same rows.
    """
    if num_rows < 0:
        raise ValueError("num_rows must not be negative")
    fake = Faker()
    fake.seed_instance(seed)
    rng = np.random.default_rng(seed)
    pool_size = max(1, min(POOL_SIZE, num_rows))

    def draw(make: str) -> pl.Series:
        return _pool(fake, make, pool_size).gather(rng.integers(0, pool_size, num_rows))

    first, last = draw("first_name"), draw("last_name")
    domain = draw("free_email_domain")
    row = pl.int_range(0, num_rows, eager=True, dtype=pl.Int64)
    id_bytes = rng.integers(0, 256, size=(num_rows, 16), dtype=np.uint8)
    ids = pl.Series(id_bytes.view("S16").ravel(), dtype=pl.Binary).bin.encode("hex")
    end = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    offsets = rng.integers(0, int(EVENT_WINDOW.total_seconds()), num_rows)

    return pl.DataFrame(
        {
            "id": ids,
            "first_name": first,
            "last_name": last,
            "address": draw("street_address") + ", " + draw("postcode") + " " + draw("city"),
            "phone": draw("phone_number"),
            "_row": row,
            "_domain": domain,
            "_offset": offsets,
        }
    ).select(
        "id",
        (pl.col("first_name") + " " + pl.col("last_name")).alias("name"),
        "address",
        (
            pl.col("first_name").str.to_lowercase()
            + "."
            + pl.col("last_name").str.to_lowercase().str.replace_all(r"[^a-z]", "")
            + "."
            + pl.col("_row").cast(pl.String)
            + "@"
            + pl.col("_domain")
        ).alias("email"),
        "phone",
        (
            pl.lit(end, dtype=pl.Datetime("us", "UTC")) - pl.duration(seconds=pl.col("_offset"))
        ).alias("created_at"),
    )
