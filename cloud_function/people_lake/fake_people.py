"""Fake people at scale, generated column-wise.

Calling Faker once per row makes a few thousand rows per second. Here Faker filled small
vocabularies once, shipped as a file (first and last names, streets, localities, e-mail
domains; :mod:`people_lake.vocabulary`), and every row is drawn from them with NumPy
indices; the strings are assembled by polars in one pass per column. Values that must be
unique are not sampled: ``id`` is a random UUID4 and ``email`` carries the row number.

The same ``seed`` (and ``day``/``now``) gives the same rows in any process, whatever Faker
is installed: the vocabularies are the shipped file and the rows come from a NumPy
generator seeded with ``seed`` and the day, so each daily partition of a seeded backfill
gets different people, and a day's rows are the same whether it is written alone or as part
of a range.
:func:`people_batches` makes them piece by piece, so memory does not grow with ``num_rows``.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from people_lake.vocabulary import load as load_vocabulary

COLUMNS = ("id", "name", "address", "email", "phone", "created_at")
EVENT_WINDOW = dt.timedelta(days=365)
CHUNK_ROWS = 125_000  # rows drawn at once (the rows a seed gives depend on it)
ASSEMBLY_ROWS = 16_384  # rows assembled and handed on at once: bounds polars' working memory
_NOT_EMAIL_SAFE = re.compile(r"[^a-z]")


@dataclass(frozen=True)
class Vocabulary:
    """Faker-made values the rows are drawn from (lower-cased copies for e-mail addresses)."""

    first_names: pl.Series
    last_names: pl.Series
    email_first: pl.Series
    email_last: pl.Series
    streets: pl.Series
    localities: pl.Series
    email_domains: pl.Series


def _email_safe(values: list[str]) -> list[str]:
    return [_NOT_EMAIL_SAFE.sub("", value.lower()) or "x" for value in values]


@functools.cache
def vocabulary() -> Vocabulary:
    """The shipped vocabularies (:mod:`people_lake.vocabulary`), read once per process."""
    values = load_vocabulary()
    first, last = values["first_names"], values["last_names"]
    return Vocabulary(
        first_names=pl.Series(first, dtype=pl.String),
        last_names=pl.Series(last, dtype=pl.String),
        email_first=pl.Series(_email_safe(first), dtype=pl.String),
        email_last=pl.Series(_email_safe(last), dtype=pl.String),
        streets=pl.Series(values["streets"], dtype=pl.String),
        localities=pl.Series(values["localities"], dtype=pl.String),
        email_domains=pl.Series(values["email_domains"], dtype=pl.String),
    )


@functools.cache
def _pools() -> dict[str, pl.Series]:
    """Fixed pools for ids and phone numbers: 4-hex-digit words and phone-number pieces."""
    words = pl.Series([f"{i:04x}" for i in range(1 << 16)], dtype=pl.String)
    return {
        "hex": words,
        "hex_version": words.slice(0x4000, 0x1000),  # 4xxx: UUID version 4
        "hex_variant": words.slice(0x8000, 0x4000),  # 8xxx-bxxx: RFC 4122 variant
        # North American numbers: area and exchange codes never start with 0 or 1.
        "area": pl.Series([f"({i}) " for i in range(201, 990)], dtype=pl.String),
        "exchange": pl.Series([f"{i}-" for i in range(200, 1000)], dtype=pl.String),
        "line": pl.Series([f"{i:04d}" for i in range(10_000)], dtype=pl.String),
    }


_UUID_PARTS = ("hex", "hex", "hex", "hex_version", "hex_variant", "hex", "hex", "hex")


def _uuid4_expr() -> pl.Expr:
    """Canonical UUID4 text from the eight gathered 16-bit words ``u0`` .. ``u7``."""
    dash = pl.lit("-")
    return pl.concat_str(
        "u0", "u1", dash, "u2", dash, "u3", dash, "u4", dash, "u5", "u6", "u7"
    )  # fmt: skip


def _timestamps(
    rng: np.random.Generator, n: int, day: dt.date | None, now: dt.datetime | None
) -> pl.Series:
    """Seconds-resolution UTC timestamps: within ``day``, else within a year before ``now``."""
    if day is not None:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        span = dt.timedelta(days=1)
    else:
        end = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        start, span = end - EVENT_WINDOW, EVENT_WINDOW
    start_us = int(start.timestamp()) * 1_000_000
    seconds = rng.integers(0, int(span.total_seconds()), n, dtype=np.int64)
    return pl.Series("created_at", seconds * 1_000_000 + start_us).cast(pl.Datetime("us", "UTC"))


def _rng(seed: int | None, day: dt.date | None) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, day.toordinal() if day else 0])


@dataclass(frozen=True)
class _Draws:
    """The random picks of one chunk, drawn up front (indices into the vocabularies and
    pools, house numbers, timestamps and the e-mails to break), in a fixed order: the rows
    depend on the seed and the chunking only, not on how the strings are assembled."""

    picks: dict[str, np.ndarray]
    created_at: pl.Series
    broken_emails: np.ndarray | None

    def piece(self, offset: int, n: int) -> tuple[dict[str, np.ndarray], pl.Series]:
        picks = {name: at[offset : offset + n] for name, at in self.picks.items()}
        return picks, self.created_at.slice(offset, n)


def _draw(
    rng: np.random.Generator,
    n: int,
    day: dt.date | None,
    now: dt.datetime | None,
    broken_emails: int,
) -> _Draws:
    vocab, pools = vocabulary(), _pools()

    def pick(pool: pl.Series) -> np.ndarray:
        return rng.integers(0, pool.len(), n, dtype=np.uint32)

    picks = {"first": pick(vocab.first_names), "last": pick(vocab.last_names)}
    picks |= {f"u{i}": pick(pools[pool]) for i, pool in enumerate(_UUID_PARTS)}
    picks["domain"] = pick(vocab.email_domains)
    picks["number"] = rng.integers(1, 10_000, n, dtype=np.int16)
    picks["street"] = pick(vocab.streets)
    picks["locality"] = pick(vocab.localities)
    for name in ("area", "exchange", "line"):
        picks[name] = pick(pools[name])
    created_at = _timestamps(rng, n, day, now)
    broken = None
    if broken_emails:
        broken = np.zeros(n, dtype=bool)
        broken[rng.choice(n, broken_emails, replace=False)] = True
    return _Draws(picks, created_at, broken)


def _parts(picks: dict[str, np.ndarray]) -> pl.DataFrame:
    """The pieces rows are assembled from: the picked vocabulary and pool entries."""
    vocab, pools = vocabulary(), _pools()
    sources = {f"u{i}": pools[pool] for i, pool in enumerate(_UUID_PARTS)}
    sources |= {
        "first": vocab.first_names,
        "last": vocab.last_names,
        "domain": vocab.email_domains,
        "street": vocab.streets,
        "locality": vocab.localities,
    }
    sources |= {name: pools[name] for name in ("area", "exchange", "line")}
    columns = [source.gather(picks[name]).alias(name) for name, source in sources.items()]
    columns += [
        vocab.email_first.gather(picks["first"]).alias("email_first"),
        vocab.email_last.gather(picks["last"]).alias("email_last"),
        pl.Series("number", picks["number"]),
    ]
    return pl.DataFrame(columns)


def _assemble(draws: _Draws, first_row: int, offset: int, n: int) -> pl.DataFrame:
    """Rows ``offset`` .. ``offset + n - 1`` of a chunk whose first row is ``first_row``."""
    picks, created_at = draws.piece(offset, n)
    email = _email_expr(first_row + offset)
    if draws.broken_emails is not None:
        broken = pl.Series(draws.broken_emails[offset : offset + n])
        email = pl.when(broken).then(email.str.replace("@", "", literal=True)).otherwise(email)
    return _parts(picks).select(
        _uuid4_expr().alias("id"),
        pl.concat_str("first", "last", separator=" ").alias("name"),
        pl.concat_str(
            pl.col("number").cast(pl.String), pl.lit(" "), "street", pl.lit(", "), "locality"
        ).alias("address"),
        email.alias("email"),
        pl.concat_str("area", "exchange", "line").alias("phone"),
        pl.lit(created_at),
    )


def _people_chunk(
    rng: np.random.Generator,
    first_row: int,
    n: int,
    day: dt.date | None,
    now: dt.datetime | None,
    *,
    broken_emails: int = 0,
) -> Iterator[pl.DataFrame]:
    """Rows ``first_row`` .. ``first_row + n - 1``: drawn at once, then assembled and yielded
    :data:`ASSEMBLY_ROWS` at a time (a whole chunk's strings at once held about 60 MiB more
    in a request)."""
    draws = _draw(rng, n, day, now, broken_emails)
    for offset in range(0, n, ASSEMBLY_ROWS):
        yield _assemble(draws, first_row, offset, min(ASSEMBLY_ROWS, n - offset))


def people_batches(
    num_rows: int,
    *,
    seed: int | None = None,
    day: dt.date | None = None,
    now: dt.datetime | None = None,
    invalid_email_rate: float = 0.0,
) -> Iterator[pl.DataFrame]:
    """``num_rows`` fake people in pieces of at most :data:`ASSEMBLY_ROWS` rows, made lazily
    (the picks of :data:`CHUNK_ROWS` rows are drawn at once, and no piece spans two chunks).

    Only one piece is in memory at a time; the rows are those of :func:`generate_people`.
    The malformed e-mails are spread so that their total is ``round(rate * num_rows)``.
    """
    if num_rows < 0:
        raise ValueError("num_rows must not be negative")
    if not 0.0 <= invalid_email_rate <= 1.0:
        raise ValueError("invalid_email_rate must be between 0 and 1")
    rng = _rng(seed, day)
    for start in range(0, num_rows, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, num_rows)
        broken = round(invalid_email_rate * end) - round(invalid_email_rate * start)
        yield from _people_chunk(rng, start, end - start, day, now, broken_emails=broken)


def generate_people(
    num_rows: int,
    *,
    seed: int | None = None,
    day: dt.date | None = None,
    now: dt.datetime | None = None,
    invalid_email_rate: float = 0.0,
) -> pl.DataFrame:
    """``num_rows`` fake people with the columns in :data:`COLUMNS`, in one DataFrame.

    Args:
        seed: makes the rows reproducible (together with ``day``, or ``now`` without a day).
        day: ``created_at`` falls on this (UTC) day; without it, in the year before ``now``.
        invalid_email_rate: share of rows whose e-mail is deliberately malformed (to see
            the data-quality checks fail); 0 in normal use.
    """
    chunks = list(
        people_batches(num_rows, seed=seed, day=day, now=now, invalid_email_rate=invalid_email_rate)
    )
    if not chunks:
        return _assemble(_draw(_rng(seed, day), 0, day, now, 0), 0, 0, 0)
    return pl.concat(chunks, rechunk=False)


def _email_expr(first_row: int) -> pl.Expr:
    """``first.last<row>@domain``: unique within the batch thanks to the row number."""
    row = pl.int_range(first_row + 1, first_row + 1 + pl.len(), dtype=pl.Int64).cast(pl.String)
    return pl.concat_str("email_first", pl.lit("."), "email_last", row, pl.lit("@"), "domain")
