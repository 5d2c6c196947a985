"""The interaction log: the durable Parquet record of every interaction and customer merge, under
a local path or any URL fsspec understands (`s3://bucket/prefix`, `gs://...`, `memory://...` in
tests). This module is its published contract: the layout, the pyarrow schemas, and the reader.

Written by the recommender only: its exporter (`recommender/workers/exporter.py`) flushes the
interaction streams here, its bulk history import adds `import-*` files, and its erasure job
rewrites files to drop erased customers (the writing side lives in
`recommender/adapters/parquet_log.py`, `ParquetLog`, a `LogReader` that also writes). Read by
training (`vicino.models.data`), the recommender's KPI sources, the bench and anyone else, with
`LogReader` / `read_interactions` / `read_merges` below.

Layout (Hive-style partitions by the UTC date of each row's `ts`, so readers prune by date):

    <root>/interactions/date=YYYY-MM-DD/<name>.parquet   rows of INTERACTION_SCHEMA
    <root>/merges/date=YYYY-MM-DD/<name>.parquet         rows of MERGE_SCHEMA (CustomerMergedV1)

`<name>` says who wrote the file: `cs007_<first stream id>_<last stream id>` for one flush of the
exporter (shard 7), `import-<content hash>` for a bulk history import. Every file is written
under a hidden temporary name in its partition directory, then renamed over its final name, so
a reader never sees half a file and rewriting a file (erasure, re-import) replaces it whole.
Readers skip hidden files and keep each event id once (its first row in log order).

Columns only ever get added, at the end and nullable (`score`, `reply_to` came with the survey
and support_reply types): a reader asks for INTERACTION_SCHEMA and older files give nulls there.

Timestamps (`ts`, `received_at`) are `timestamp[us, tz=UTC]`: what pandas, DuckDB and Spark read
as instants, and exact enough for the float epoch seconds of InteractionV1 (float64 holds epoch
microseconds to within a fraction of a microsecond). Files are zstd-compressed.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

INTERACTIONS = "interactions"
MERGES = "merges"
KINDS = (INTERACTIONS, MERGES)

TIMESTAMP = pa.timestamp("us", tz="UTC")
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("offer_id", pa.string()),
        pa.field("store_id", pa.string()),
        pa.field("quantity", pa.float64()),
        pa.field("value", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("country", pa.string()),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("received_at", TIMESTAMP, nullable=False),
        # added with the survey and support_reply types; files written before read them as nulls
        pa.field("score", pa.int8()),
        pa.field("reply_to", pa.string()),
    ],
    metadata={"vicino.schema": "vicino.interaction", "vicino.version": "1"},
)
MERGE_SCHEMA = pa.schema(
    [
        pa.field("merged", pa.string(), nullable=False),
        pa.field("into", pa.string(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
    ],
    metadata={"vicino.schema": "vicino.customer_merged", "vicino.version": "1"},
)
SCHEMAS = {INTERACTIONS: INTERACTION_SCHEMA, MERGES: MERGE_SCHEMA}

DAY_US = 86_400 * 1_000_000
_EPOCH = dt.date(1970, 1, 1)


def epoch_us(seconds: float) -> int:
    """Epoch seconds as the integer microseconds of the timestamp columns."""
    return round(seconds * 1_000_000)


def day_numbers(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The days since the epoch (UTC) of a timestamp column: its rows' partitions."""
    return np.floor_divide(np.asarray(pc.cast(ts, pa.int64())), DAY_US)


def partition_date(day: int) -> str:
    """The partition name (`YYYY-MM-DD`) of a day number."""
    return (_EPOCH + dt.timedelta(days=int(day))).isoformat()


def _as_timestamp(t: dt.datetime | float | int) -> pa.Scalar:
    """A bound for a time filter: an aware datetime, or epoch seconds (naive datetimes are UTC)."""
    if isinstance(t, dt.datetime):
        t = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    return pa.scalar(epoch_us(float(t)), type=TIMESTAMP)


class LogReader:
    """One log root, read-only. Cheap to build; holds no open files."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fs, base = fsspec.core.url_to_fs(root)
        self.base = base.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    def path(self, kind: str, date: str, name: str) -> str:
        return f"{self.base}/{kind}/date={date}/{name}.parquet"

    # listing -------------------------------------------------------------------------------------

    def files(self, kind: str, pattern: str = "*.parquet", *, first_date: str | None = None,
              last_date: str | None = None) -> list[str]:
        """Files of `kind` whose name matches `pattern`, in (date, name) order, optionally only in
        the partitions from `first_date` to `last_date` (inclusive, YYYY-MM-DD)."""
        found = []
        for p in self.fs.glob(f"{self.base}/{kind}/date=*/{pattern}"):
            date = p.rsplit("/", 2)[-2].removeprefix("date=")
            if (first_date is None or date >= first_date) and (last_date is None or date <= last_date):
                found.append((date, p.rsplit("/", 1)[-1], p))
        return [p for _, _, p in sorted(found)]

    def _arrow_fs(self):
        # pyarrow's own local filesystem reads faster than fsspec's wrapped in a handler
        return pa.fs.LocalFileSystem() if self._local else self.fs

    def _read_files(self, paths: list[str], schema: pa.Schema, filters=None) -> pa.Table:
        if not paths:
            return schema.empty_table()
        afs = self._arrow_fs()

        def one(p: str) -> pa.Table:
            return pq.read_table(p, filesystem=afs, schema=schema, filters=filters)

        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            tables = list(pool.map(one, paths))  # map keeps file order: "first" has a meaning
        return pa.concat_tables(tables).combine_chunks()

    # reading -------------------------------------------------------------------------------------

    def read_interactions(self, start: dt.datetime | float | None = None,
                          end: dt.datetime | float | None = None, *, types: Collection[str] | None = None) -> pa.Table:
        """Interactions with start <= ts < end (and of `types` when given, filtered while
        reading), each event id once (its first row in log order: partition date, then file
        name, then row), sorted by ts (ties in log order)."""
        lo = _as_timestamp(start) if start is not None else None
        hi = _as_timestamp(end) if end is not None else None
        filters = [f for f in (("ts", ">=", lo) if lo is not None else None,
                               ("ts", "<", hi) if hi is not None else None,
                               ("type", "in", sorted(types)) if types is not None else None) if f is not None]
        paths = self.files(INTERACTIONS,
                           first_date=partition_date(lo.value // DAY_US) if lo is not None else None,
                           last_date=partition_date(hi.value // DAY_US) if hi is not None else None)
        table = self._read_files(paths, INTERACTION_SCHEMA, filters or None)
        if table.num_rows == 0:
            return table
        table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
        firsts = table.group_by("event_id", use_threads=False).aggregate([("_row", "min")]).column("_row_min")
        table = table.take(firsts)
        table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("_row", "ascending")]))
        return table.drop_columns(["_row"])

    def read_customer_ids(self, start: dt.datetime | float, end: dt.datetime | float) -> set[str]:
        """The customers with any interaction with start <= ts < end: the customer column alone,
        file by file, for a whole population's activity without its rows."""
        lo, hi = _as_timestamp(start), _as_timestamp(end)
        out: set[str] = set()
        for path in self.files(INTERACTIONS, first_date=partition_date(lo.value // DAY_US),
                               last_date=partition_date(hi.value // DAY_US)):
            t = pq.read_table(path, filesystem=self._arrow_fs(), schema=INTERACTION_SCHEMA, columns=["customer_id"],
                              filters=[("ts", ">=", lo), ("ts", "<", hi)])
            out.update(pc.unique(t.column("customer_id")).to_pylist())
        return out

    def read_merges(self) -> pa.Table:
        """Every merge once, sorted by ts."""
        table = self._read_files(self.files(MERGES), MERGE_SCHEMA)
        if table.num_rows == 0:
            return table
        unique = table.group_by(["merged", "into", "ts"], use_threads=False).aggregate([])
        unique = unique.select(MERGE_SCHEMA.names).cast(MERGE_SCHEMA)
        return unique.take(pc.sort_indices(unique, sort_keys=[("ts", "ascending"), ("merged", "ascending")]))


def read_interactions(root: str, start: dt.datetime | float | None = None,
                      end: dt.datetime | float | None = None) -> pa.Table:
    return LogReader(root).read_interactions(start, end)


def read_merges(root: str) -> pa.Table:
    return LogReader(root).read_merges()
