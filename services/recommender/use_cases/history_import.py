"""Bulk import of interaction history: a history file (read and filtered by the kernel's
`history_file` contract, `read_history`; the formats and drop rules are documented there) goes
straight into the Parquet log, and each customer's most recent interactions into the hot history
in Redis. Rows of erased customers are dropped (`erased`: the customer is in the erasure
register and the row's `ts` is not after the erasure: history from before it).

The hot history gets each customer's `history_hot_per_customer` most recent accepted rows
through the CustomerRepository with `log=False`: not to the interaction stream, so the exporter
never writes them to the log a second time. Rows of a customer since merged into another go to
the survivor's hot history (the log keeps the id they were imported under; merges join them).

Re-importing a file replaces what its previous import wrote: the log files are named after the
SHA-256 of the file's (decompressed) content, `import-<hash>.parquet` in each date partition,
and the hot history ignores event ids it already holds. A corrected file has another hash: its
rows are added beside the old ones, and readers keep each event id once.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import TypeAdapter

from vicino.services.kernel.contracts.history_file import ImportReport, Progress, read_history
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS
from vicino.services.kernel.contracts.interactions import InteractionV1

from ..adapters.parquet_log import ParquetLog
from ..adapters.erasure_register import ErasureRegister
from ..domain.identity import Moved

# --- the use case --------------------------------------------------------------------------------

class HistoryImport:
    """`customers`: the CustomerRepository (its `append(items, log=False)`); `redis`: the client
    holding the erasure register."""

    def __init__(self, customers, redis, log_root: str, *, hot_per_customer: int, clock,
                 batch: int = 2000, concurrency: int = 4) -> None:
        self.customers = customers
        self._r = redis
        self.parquet = ParquetLog(log_root)
        self.hot_per_customer = hot_per_customer
        self.clock = clock
        self.batch = batch
        self.concurrency = concurrency

    async def run(self, path: str | Path, fmt: str = "auto", progress: Progress | None = None) -> ImportReport:
        started = time.perf_counter()
        table, report = await asyncio.to_thread(read_history, path, fmt, received_at=self.clock.now(),
                                                progress=progress)
        table = await self._without_erased(table, report)
        name = f"import-{report.content_sha256[:16]}"
        written, report.files_replaced = await asyncio.to_thread(self._write, table, name, progress)
        report.partitions = len(written)
        report.imported = table.num_rows
        report.customers = len(pc.unique(table.column("customer_id")))
        report.hot_history = await self._load_hot(table, progress)
        report.seconds = time.perf_counter() - started
        return report

    async def _without_erased(self, table: pa.Table, report: ImportReport) -> pa.Table:
        customers = pc.unique(table.column("customer_id")).to_pylist()
        erased_at = await ErasureRegister(self._r, self.customers.erasure_key).erased_among(customers)
        erased = {c: round(at * 1_000_000) for c, at in erased_at.items()}  # µs, as the ts column
        report.dropped["erased"] = 0
        if not erased:
            return table
        ids = table.column("customer_id")
        limit = pc.take(pa.array(list(erased.values()), pa.int64()), pc.index_in(ids, value_set=pa.array(list(erased))))
        drop = pc.fill_null(pc.less_equal(pc.cast(table.column("ts"), pa.int64()), limit), False)
        kept = table.filter(pc.invert(drop))
        report.dropped["erased"] = table.num_rows - kept.num_rows
        return kept

    def _write(self, table: pa.Table, name: str, progress: Progress | None) -> tuple[list[str], int]:
        """Writes the partitions, then removes files of an earlier import of the same content that
        this one no longer has (a customer erased since, say)."""
        before = set(self.parquet.files(INTERACTIONS, f"{name}.parquet"))
        self.parquet.remove(self.parquet.files(INTERACTIONS, f".{name}.parquet.tmp-*"))
        on_file = (lambda done, total: progress("write", done, total)) if progress else None
        written = self.parquet.write_partitioned(INTERACTIONS, table, name, progress=on_file)
        return written, self.parquet.remove(before - set(written))

    async def _load_hot(self, table: pa.Table, progress: Progress | None) -> dict[str, int]:
        """Each customer's most recent `hot_per_customer` interactions, oldest first, through the
        repository; those of a customer merged into another go to the survivor."""
        counts = {"ok": 0, "duplicate": 0, "moved": 0}
        if table.num_rows == 0:
            return counts
        items = await asyncio.to_thread(_most_recent, table, self.hot_per_customer)
        total, done = len(items), 0
        gate = asyncio.Semaphore(self.concurrency)

        async def send(chunk: list[InteractionV1]) -> None:
            nonlocal done
            size = len(chunk)
            async with gate:
                for _ in range(4):  # a merge chain is short; each hop is a retry
                    outcomes = await self.customers.append(chunk, log=False)
                    moved = []
                    for item, outcome in zip(chunk, outcomes):
                        if isinstance(outcome, Moved):
                            counts["moved"] += 1
                            moved.append(item.model_copy(update={"customer_id": outcome.customer_id}))
                        else:
                            counts[outcome] = counts.get(outcome, 0) + 1
                    if not moved:
                        break
                    chunk = moved
            done += size
            if progress:
                progress("hot", done, total)

        await asyncio.gather(*(send(items[i:i + self.batch]) for i in range(0, total, self.batch)))
        return counts


_ITEMS = TypeAdapter(list[InteractionV1])


def _most_recent(table: pa.Table, n: int) -> list[InteractionV1]:
    """Each customer's `n` most recent rows, oldest first, as InteractionV1."""
    by_recency = table.take(pc.sort_indices(table, sort_keys=[("customer_id", "ascending"), ("ts", "descending")]))
    codes = np.asarray(pc.dictionary_encode(by_recency.column("customer_id")).combine_chunks().indices, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    rank = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    recent = by_recency.filter(pa.array(rank < n))
    recent = recent.take(pc.sort_indices(recent, sort_keys=[("customer_id", "ascending"), ("ts", "ascending")]))
    for col in ("ts", "received_at"):
        seconds = pc.divide(pc.cast(pc.cast(recent.column(col), pa.int64()), pa.float64()), 1e6)
        recent = recent.set_column(recent.schema.get_field_index(col), col, seconds)
    return _ITEMS.validate_python(recent.to_pylist())  # one call: pydantic-core loops, not Python
