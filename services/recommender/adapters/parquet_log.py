"""The durable interaction log that training reads: Parquet files under a local path or any URL
fsspec understands (`s3://bucket/prefix`, `gs://...`, `memory://...` in tests).

Layout (Hive-style partitions by the UTC date of each row's `ts`, so readers prune by date):

    <root>/interactions/date=YYYY-MM-DD/<name>.parquet   rows of INTERACTION_SCHEMA
    <root>/merges/date=YYYY-MM-DD/<name>.parquet         rows of MERGE_SCHEMA (CustomerMergedV1)

`<name>` says who wrote the file: `cs007_<first stream id>_<last stream id>` for one flush of the
exporter (shard 7), `import-<content hash>` for a bulk history import. Every file is written
under a hidden temporary name in its partition directory, then renamed over its final name, so
a reader never sees half a file and rewriting a file (erasure, re-import) replaces it whole.

Timestamps (`ts`, `received_at`) are `timestamp[us, tz=UTC]`: what pandas, DuckDB and Spark read
as instants, and exact enough for the float epoch seconds of InteractionV1 (float64 holds epoch
microseconds to within a fraction of a microsecond). Files are zstd-compressed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vicino.services.kernel.contracts.interactions import CustomerMergedV1, InteractionV1

INTERACTIONS = "interactions"
MERGES = "merges"
KINDS = (INTERACTIONS, MERGES)

_TS = pa.timestamp("us", tz="UTC")
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
        pa.field("ts", _TS, nullable=False),
        pa.field("received_at", _TS, nullable=False),
    ],
    metadata={"vicino.schema": "vicino.interaction", "vicino.version": "1"},
)
MERGE_SCHEMA = pa.schema(
    [
        pa.field("merged", pa.string(), nullable=False),
        pa.field("into", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
    ],
    metadata={"vicino.schema": "vicino.customer_merged", "vicino.version": "1"},
)
SCHEMAS = {INTERACTIONS: INTERACTION_SCHEMA, MERGES: MERGE_SCHEMA}

_DAY_US = 86_400 * 1_000_000
_EPOCH = dt.date(1970, 1, 1)
_STRING_FIELDS = ("event_id", "customer_id", "channel", "type", "item_id", "offer_id", "store_id", "currency",
                  "country")


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def interactions_table(items: Sequence[InteractionV1]) -> pa.Table:
    cols: dict[str, list] = {f: [getattr(i, f) for i in items] for f in _STRING_FIELDS}
    cols["quantity"] = [i.quantity for i in items]
    cols["value"] = [i.value for i in items]
    cols["ts"] = [_us(i.ts) for i in items]
    cols["received_at"] = [_us(i.received_at) for i in items]
    return pa.Table.from_pydict(cols, schema=INTERACTION_SCHEMA)


def merges_table(items: Sequence[CustomerMergedV1]) -> pa.Table:
    return pa.Table.from_pydict({"merged": [m.merged for m in items], "into": [m.into for m in items],
                                 "ts": [_us(m.ts) for m in items]}, schema=MERGE_SCHEMA)


def _day_numbers(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.floor_divide(np.asarray(pc.cast(ts, pa.int64())), _DAY_US)


def _date_of_day(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=int(day))).isoformat()


def _as_timestamp(t: dt.datetime | float | int) -> pa.Scalar:
    """A bound for a time filter: an aware datetime, or epoch seconds (naive datetimes are UTC)."""
    if isinstance(t, dt.datetime):
        t = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    return pa.scalar(_us(float(t)), type=_TS)


@dataclass
class ErasureReport:
    files_scanned: int = 0
    files_rewritten: int = 0
    files_removed: int = 0   # every row was erased
    rows_dropped: int = 0


class ParquetLog:
    """One log root. Cheap to build; holds no open files."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fs, base = fsspec.core.url_to_fs(root)
        self.base = base.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    # writing -------------------------------------------------------------------------------------

    def write_partitioned(self, kind: str, table: pa.Table, name: str,
                          progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Writes `table` as one file `<name>.parquet` per date partition of its rows (their order
        kept within each partition); returns the paths written. `progress(done, total)` follows
        the files."""
        if table.num_rows == 0:
            return []
        days = _day_numbers(table.column("ts"))
        order = np.argsort(days, kind="stable")
        days_sorted = days[order]
        cuts = np.flatnonzero(np.diff(days_sorted)) + 1
        paths = []
        for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)]))):
            path = self.path(kind, _date_of_day(days_sorted[lo]), name)
            self._write_atomic(path, table.take(pa.array(order[lo:hi])))
            paths.append(path)
            if progress:
                progress(len(paths), len(cuts) + 1)
        return paths

    def path(self, kind: str, date: str, name: str) -> str:
        return f"{self.base}/{kind}/date={date}/{name}.parquet"

    def _write_atomic(self, path: str, table: pa.Table) -> None:
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"  # hidden: readers skip it, cleanup finds it
        try:
            if self._local:
                # fsync before the rename and the directory after it: a commit recorded in Redis
                # must never point at a file that a power cut leaves empty
                os.makedirs(parent, exist_ok=True)
                with open(tmp, "wb") as f:
                    pq.write_table(table, f, compression="zstd")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            else:
                # object stores publish an object whole when its upload completes
                self.fs.makedirs(parent, exist_ok=True)
                with self.fs.open(tmp, "wb") as f:
                    pq.write_table(table, f, compression="zstd")
                self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def remove(self, paths: Iterable[str]) -> int:
        n = 0
        for p in paths:
            if self.fs.exists(p):
                self.fs.rm(p)
                n += 1
        return n

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
                          end: dt.datetime | float | None = None) -> pa.Table:
        """Interactions with start <= ts < end, each event id once (its first row in log order:
        partition date, then file name, then row), sorted by ts (ties in log order)."""
        lo = _as_timestamp(start) if start is not None else None
        hi = _as_timestamp(end) if end is not None else None
        filters = [f for f in (("ts", ">=", lo) if lo is not None else None,
                               ("ts", "<", hi) if hi is not None else None) if f is not None]
        paths = self.files(INTERACTIONS,
                           first_date=_date_of_day(lo.value // _DAY_US) if lo is not None else None,
                           last_date=_date_of_day(hi.value // _DAY_US) if hi is not None else None)
        table = self._read_files(paths, INTERACTION_SCHEMA, filters or None)
        if table.num_rows == 0:
            return table
        table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
        firsts = table.group_by("event_id", use_threads=False).aggregate([("_row", "min")]).column("_row_min")
        table = table.take(firsts)
        table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("_row", "ascending")]))
        return table.drop_columns(["_row"])

    def read_merges(self) -> pa.Table:
        """Every merge once, sorted by ts."""
        table = self._read_files(self.files(MERGES), MERGE_SCHEMA)
        if table.num_rows == 0:
            return table
        unique = table.group_by(["merged", "into", "ts"], use_threads=False).aggregate([])
        unique = unique.select(MERGE_SCHEMA.names).cast(MERGE_SCHEMA)
        return unique.take(pc.sort_indices(unique, sort_keys=[("ts", "ascending"), ("merged", "ascending")]))

    # erasure -------------------------------------------------------------------------------------

    def apply_erasures(self, erased: Mapping[str, float | str | bytes], progress=None) -> ErasureReport:
        """Rewrites the files that hold rows of erased customers: interactions whose customer's
        SHA-256 digest is in `erased` and whose `received_at` <= its erased_at, merges that name
        an erased customer with `ts` <= erased_at. Files without such rows are not touched.

        Run it beside a live exporter: the exporter only adds files, and drops erased rows itself.
        Should a rewrite read a file that an exporter's recovery deletes at that moment (a flush
        never committed), the rewrite skips it if the deletion came first; else the file comes
        back and its rows, exported again, are twice in the log until readers deduplicate them."""
        erased_us = {(k.decode() if isinstance(k, bytes) else k): _us(float(v)) for k, v in erased.items()}
        report = ErasureReport()
        if not erased_us:
            return report
        work = [(kind, id_cols, time_col, path)
                for kind, id_cols, time_col in ((INTERACTIONS, ("customer_id",), "received_at"),
                                                (MERGES, ("merged", "into"), "ts"))
                for path in self.files(kind)]
        for n, (kind, id_cols, time_col, path) in enumerate(work):
            if progress:
                progress("files", n, len(work))
            report.files_scanned += 1
            drop = self._erased_rows(path, SCHEMAS[kind], id_cols, time_col, erased_us)
            if drop is None:
                continue
            table = self._read_files([path], SCHEMAS[kind])
            kept = table.filter(pc.invert(drop))
            report.rows_dropped += table.num_rows - kept.num_rows
            if not self.fs.exists(path):
                continue  # removed meanwhile (an interrupted export cleaned up): nothing to rewrite
            if kept.num_rows:
                self._write_atomic(path, kept)
                report.files_rewritten += 1
            else:
                self.fs.rm(path)
                report.files_removed += 1
        if progress:
            progress("files", len(work), len(work))
        return report

    def _erased_rows(self, path: str, schema: pa.Schema, id_cols: tuple[str, ...], time_col: str,
                     erased_us: dict[str, int]) -> pa.Array | None:
        """A boolean mask of the file's rows to drop, or None when there are none."""
        t = pq.read_table(path, filesystem=self._arrow_fs(), columns=[*id_cols, time_col], schema=schema)
        times = pc.cast(t.column(time_col), pa.int64())
        drop = None
        for col in id_cols:
            ids = t.column(col)
            hits = {c: erased_us[d] for c in pc.unique(ids).to_pylist()
                    if (d := hashlib.sha256(c.encode()).hexdigest()) in erased_us}
            if not hits:
                continue
            names = pa.array(list(hits))
            limit = pc.take(pa.array(list(hits.values()), pa.int64()), pc.index_in(ids, value_set=names))
            mask = pc.fill_null(pc.less_equal(times, limit), False)
            drop = mask if drop is None else pc.or_(drop, mask)
        if drop is None or not pc.any(drop).as_py():
            return None
        return drop.combine_chunks() if isinstance(drop, pa.ChunkedArray) else drop


def read_interactions(root: str, start: dt.datetime | float | None = None,
                      end: dt.datetime | float | None = None) -> pa.Table:
    return ParquetLog(root).read_interactions(start, end)


def read_merges(root: str) -> pa.Table:
    return ParquetLog(root).read_merges()


def apply_erasures(root: str, erased: Mapping[str, float | str | bytes], progress=None) -> ErasureReport:
    return ParquetLog(root).apply_erasures(erased, progress)
