"""The writing side of the interaction log: the recommender's exporter flushes, the bulk history
import and the erasure rewrites. The log's layout, schemas and reader are the kernel's published
contract (`vicino.services.kernel.contracts.interaction_log`); `ParquetLog` is its `LogReader`
plus writing and erasure. Every file is written under a hidden temporary name in its partition
directory, then renamed over its final name, so a reader never sees half a file and rewriting a
file (erasure, re-import) replaces it whole. Files are zstd-compressed.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vicino.services.kernel.contracts.interaction_log import (INTERACTION_SCHEMA, INTERACTIONS, MERGE_SCHEMA, MERGES,
                                                              SCHEMAS, LogReader, day_numbers, epoch_us,
                                                              partition_date)
from vicino.services.kernel.contracts.erasures import erasure_digests
from vicino.services.kernel.contracts.interactions import CustomerMergedV1, InteractionV1

_STRING_FIELDS = ("event_id", "customer_id", "channel", "type", "item_id", "offer_id", "store_id", "currency",
                  "country", "reply_to")


def interactions_table(items: Sequence[InteractionV1]) -> pa.Table:
    cols: dict[str, list] = {f: [getattr(i, f) for i in items] for f in _STRING_FIELDS}
    cols["quantity"] = [i.quantity for i in items]
    cols["value"] = [i.value for i in items]
    cols["ts"] = [epoch_us(i.ts) for i in items]
    cols["received_at"] = [epoch_us(i.received_at) for i in items]
    cols["score"] = [i.score for i in items]
    return pa.Table.from_pydict(cols, schema=INTERACTION_SCHEMA)


def merges_table(items: Sequence[CustomerMergedV1]) -> pa.Table:
    return pa.Table.from_pydict({"merged": [m.merged for m in items], "into": [m.into for m in items],
                                 "ts": [epoch_us(m.ts) for m in items]}, schema=MERGE_SCHEMA)


@dataclass
class ErasureReport:
    files_scanned: int = 0
    files_rewritten: int = 0
    files_removed: int = 0   # every row was erased
    rows_dropped: int = 0


class ParquetLog(LogReader):
    """One log root, read and written. Cheap to build; holds no open files."""

    # writing -------------------------------------------------------------------------------------

    def write_partitioned(self, kind: str, table: pa.Table, name: str,
                          progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Writes `table` as one file `<name>.parquet` per date partition of its rows (their order
        kept within each partition); returns the paths written. `progress(done, total)` follows
        the files."""
        if table.num_rows == 0:
            return []
        days = day_numbers(table.column("ts"))
        order = np.argsort(days, kind="stable")
        days_sorted = days[order]
        cuts = np.flatnonzero(np.diff(days_sorted)) + 1
        paths = []
        for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)]))):
            path = self.path(kind, partition_date(days_sorted[lo]), name)
            self._write_atomic(path, table.take(pa.array(order[lo:hi])))
            paths.append(path)
            if progress:
                progress(len(paths), len(cuts) + 1)
        return paths

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

    # erasure -------------------------------------------------------------------------------------

    def apply_erasures(self, erased: Mapping[str, float | str | bytes], progress=None, *,
                       key: bytes) -> ErasureReport:
        """Rewrites the files that hold rows of erased customers: interactions whose customer's
        digest (keyed with `key`, or a legacy bare SHA-256) is in `erased` and whose `received_at` <= its erased_at, merges that name
        an erased customer with `ts` <= erased_at. Files without such rows are not touched.

        Run it beside a live exporter: the exporter only adds files, and drops erased rows itself.
        Should a rewrite read a file that an exporter's recovery deletes at that moment (a flush
        never committed), the rewrite skips it if the deletion came first; else the file comes
        back and its rows, exported again, are twice in the log until readers deduplicate them."""
        erased_us = {(k.decode() if isinstance(k, bytes) else k): epoch_us(float(v)) for k, v in erased.items()}
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
            drop = self._erased_rows(path, SCHEMAS[kind], id_cols, time_col, erased_us, key)
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
                     erased_us: dict[str, int], key: bytes) -> pa.Array | None:
        """A boolean mask of the file's rows to drop, or None when there are none."""
        t = pq.read_table(path, filesystem=self._arrow_fs(), columns=[*id_cols, time_col], schema=schema)
        times = pc.cast(t.column(time_col), pa.int64())
        drop = None
        for col in id_cols:
            ids = t.column(col)
            hits = {c: max(erased_us[d] for d in found) for c in pc.unique(ids).to_pylist()
                    if (found := [d for d in erasure_digests(c, key) if d in erased_us])}
            if not hits:
                continue
            names = pa.array(list(hits))
            limit = pc.take(pa.array(list(hits.values()), pa.int64()), pc.index_in(ids, value_set=names))
            mask = pc.fill_null(pc.less_equal(times, limit), False)
            drop = mask if drop is None else pc.or_(drop, mask)
        if drop is None or not pc.any(drop).as_py():
            return None
        return drop.combine_chunks() if isinstance(drop, pa.ChunkedArray) else drop


def apply_erasures(root: str, erased: Mapping[str, float | str | bytes], progress=None, *,
                   key: bytes) -> ErasureReport:
    return ParquetLog(root).apply_erasures(erased, progress, key=key)
