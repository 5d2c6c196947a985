"""The Parquet interaction log on a real filesystem (a tmp_path) and on fsspec's memory://:
layout, round trip, deduplication, time filters, atomic replacement, erasure rewrite."""
from __future__ import annotations

import datetime as dt
import uuid

import fsspec
import pyarrow.parquet as pq
import pytest

from vicino.services.kernel.contracts.interactions import CustomerMergedV1, InteractionV1
from vicino.services.kernel.contracts.interaction_log import (INTERACTION_SCHEMA, INTERACTIONS, MERGES, read_interactions,
                                                              read_merges)
from vicino.services.recommender.adapters.parquet_log import (ParquetLog, apply_erasures, interactions_table,
                                                       merges_table)
from vicino.services.recommender.adapters.redis_keys import erasure_digest

KEY = b"an erasure register key, 32 bytes"

DAY1 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp()


def it(event_id: str, customer_id: str = "c1", ts: float = DAY1 + 3600, received_at: float | None = None,
       **kw) -> InteractionV1:
    return InteractionV1(event_id=event_id, customer_id=customer_id, channel=kw.pop("channel", "web"),
                         type=kw.pop("type", "purchase"), ts=ts, received_at=received_at or ts + 1, **kw)


def write(log: ParquetLog, name: str, items: list[InteractionV1]) -> list[str]:
    return log.write_partitioned(INTERACTIONS, interactions_table(items), name)


def test_round_trip_keeps_every_field_and_microseconds(tmp_path):
    log = ParquetLog(str(tmp_path))
    a = it("e1", item_id="sku-1", offer_id=None, store_id="s9", quantity=2.0, value=19.98, currency="EUR",
           country="IT", ts=DAY1 + 0.123456, received_at=DAY1 + 1.5)
    b = it("e2", customer_id="c2", channel="store", type="offer_redeem", offer_id="o1", ts=DAY1 + 7200)
    write(log, "f", [a, b])
    got = read_interactions(str(tmp_path)).to_pylist()
    assert [r["event_id"] for r in got] == ["e1", "e2"]
    r = got[0]
    assert (r["customer_id"], r["channel"], r["type"], r["item_id"], r["offer_id"], r["store_id"]) == \
        ("c1", "web", "purchase", "sku-1", None, "s9")
    assert (r["quantity"], r["value"], r["currency"], r["country"]) == (2.0, 19.98, "EUR", "IT")
    assert r["ts"].timestamp() == pytest.approx(DAY1 + 0.123456, abs=1e-6)
    assert r["received_at"].tzinfo is not None and r["received_at"].timestamp() == DAY1 + 1.5
    assert got[1]["offer_id"] == "o1" and got[1]["channel"] == "store"
    # the file carries the schema and its version
    (path,) = log.files(INTERACTIONS)
    schema = pq.read_schema(path)
    assert schema.equals(INTERACTION_SCHEMA, check_metadata=False)
    assert schema.metadata[b"vicino.version"] == b"1"


def test_rows_are_partitioned_by_the_utc_date_of_ts(tmp_path):
    log = ParquetLog(str(tmp_path))
    late = it("late", ts=DAY1 + 86_400 - 1)       # 23:59:59 UTC on day 1
    early = it("early", ts=DAY1 + 86_400 + 1)     # 00:00:01 UTC on day 2
    older = it("older", ts=DAY1 - 86_400 * 400)
    paths = write(log, "batch", [late, early, older])
    rel = sorted(p.removeprefix(str(tmp_path) + "/") for p in paths)
    assert rel == ["interactions/date=2025-01-25/batch.parquet", "interactions/date=2026-03-01/batch.parquet",
                   "interactions/date=2026-03-02/batch.parquet"]
    assert pq.read_table(log.path(INTERACTIONS, "2026-03-01", "batch")).column("event_id").to_pylist() == ["late"]


def test_order_within_a_partition_is_the_order_written(tmp_path):
    log = ParquetLog(str(tmp_path))
    items = [it(f"e{i}", ts=DAY1 + 1000 - i) for i in range(5)]  # written newest first
    write(log, "f", items)
    (path,) = log.files(INTERACTIONS)
    assert pq.read_table(path).column("event_id").to_pylist() == [f"e{i}" for i in range(5)]
    # the reader sorts by ts
    assert read_interactions(str(tmp_path)).column("event_id").to_pylist() == [f"e{i}" for i in reversed(range(5))]


def test_read_deduplicates_by_event_id_keeping_the_first_in_log_order(tmp_path):
    log = ParquetLog(str(tmp_path))
    write(log, "a-first", [it("dup", value=1.0), it("x", value=5.0)])
    write(log, "b-second", [it("dup", value=2.0), it("y")])
    write(log, "c-third", [it("dup", value=3.0, ts=DAY1 - 86_400)])  # an earlier partition: first in log order
    got = read_interactions(str(tmp_path))
    assert sorted(got.column("event_id").to_pylist()) == ["dup", "x", "y"]
    row = [r for r in got.to_pylist() if r["event_id"] == "dup"][0]
    assert row["value"] == 3.0


def test_time_filters_are_start_inclusive_end_exclusive(tmp_path):
    log = ParquetLog(str(tmp_path))
    write(log, "f", [it(f"h{h}", ts=DAY1 + h * 3600) for h in range(0, 72, 6)])
    root = str(tmp_path)
    got = read_interactions(root, start=DAY1 + 6 * 3600, end=DAY1 + 30 * 3600).column("event_id").to_pylist()
    assert got == ["h6", "h12", "h18", "h24"]
    naive = dt.datetime(2026, 3, 2, 0, 0)  # naive datetimes are UTC
    assert read_interactions(root, start=naive).column("event_id").to_pylist() == [f"h{h}" for h in range(24, 72, 6)]
    assert read_interactions(root, end=naive).num_rows == 4
    assert read_interactions(root, start=DAY1 + 1e6).num_rows == 0


def test_an_empty_log_reads_as_an_empty_table(tmp_path):
    t = read_interactions(str(tmp_path / "nothing"))
    assert t.num_rows == 0 and t.schema.equals(INTERACTION_SCHEMA, check_metadata=False)
    assert read_merges(str(tmp_path / "nothing")).num_rows == 0


def test_writes_are_atomic_replacements_and_leave_no_temporary_file(tmp_path):
    log = ParquetLog(str(tmp_path))
    write(log, "same", [it("e1"), it("e2")])
    write(log, "same", [it("e3")])
    assert read_interactions(str(tmp_path)).column("event_id").to_pylist() == ["e3"]
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert names == ["same.parquet"]


def test_merges_round_trip_once_each_sorted_by_ts(tmp_path):
    log = ParquetLog(str(tmp_path))
    m1 = CustomerMergedV1(merged="a", into="b", ts=DAY1 + 50)
    m2 = CustomerMergedV1(merged="c", into="b", ts=DAY1 + 10)
    log.write_partitioned(MERGES, merges_table([m1, m2]), "one")
    log.write_partitioned(MERGES, merges_table([m1]), "two")  # the same merge again
    got = read_merges(str(tmp_path)).to_pylist()
    assert [(r["merged"], r["into"], r["ts"].timestamp()) for r in got] == [("c", "b", DAY1 + 10), ("a", "b", DAY1 + 50)]


def test_apply_erasures_rewrites_only_files_with_erased_rows(tmp_path):
    log = ParquetLog(str(tmp_path))
    erased_at = DAY1 + 5000
    write(log, "mixed", [it("g1", "gone", received_at=DAY1 + 100), it("k1", "kept"),
                         it("g2", "gone", received_at=erased_at + 1)])  # accepted after the erasure: stays
    write(log, "only-gone", [it("g3", "gone", ts=DAY1 + 86_400, received_at=DAY1 + 200)])
    untouched = write(log, "clean", [it("k2", "kept", ts=DAY1 - 86_400)])[0]
    log.write_partitioned(MERGES, merges_table([CustomerMergedV1(merged="gone", into="kept", ts=DAY1 + 10),
                                                CustomerMergedV1(merged="x", into="kept", ts=DAY1 + 20),
                                                CustomerMergedV1(merged="y", into="gone", ts=DAY1 + 30)]), "m")
    before = (pq.read_table(untouched), fsspec.filesystem("file").info(untouched)["mtime"])

    report = apply_erasures(str(tmp_path), {erasure_digest("gone", KEY): repr(erased_at)}, key=KEY)
    assert (report.files_scanned, report.files_rewritten, report.files_removed, report.rows_dropped) == (4, 2, 1, 4)
    assert sorted(read_interactions(str(tmp_path)).column("event_id").to_pylist()) == ["g2", "k1", "k2"]
    assert [r["merged"] for r in read_merges(str(tmp_path)).to_pylist()] == ["x"]
    assert not any("only-gone" in p for p in log.files(INTERACTIONS))
    assert pq.read_table(untouched).equals(before[0])
    assert fsspec.filesystem("file").info(untouched)["mtime"] == before[1]
    # nothing left to do the second time
    again = apply_erasures(str(tmp_path), {erasure_digest("gone", KEY): erased_at}, key=KEY)
    assert (again.files_rewritten, again.files_removed, again.rows_dropped) == (0, 0, 0)


def test_memory_filesystem_root():
    root = f"memory://vicino-test-{uuid.uuid4().hex}/history"
    try:
        log = ParquetLog(root)
        write(log, "f", [it("e1"), it("e2", ts=DAY1 + 86_400 * 2)])
        assert read_interactions(root).column("event_id").to_pylist() == ["e1", "e2"]
        assert len(log.files(INTERACTIONS)) == 2
        report = apply_erasures(root, {erasure_digest("c1", KEY): DAY1 + 86_400}, key=KEY)
        assert report.rows_dropped == 1 and report.files_removed == 1
        assert read_interactions(root).column("event_id").to_pylist() == ["e2"]
    finally:
        fs = fsspec.filesystem("memory")
        fs.rm(root.removeprefix("memory:/"), recursive=True)


def test_apply_erasures_honours_entries_of_a_register_written_before_the_key(tmp_path):
    """Registers written before the keyed digest hold bare SHA-256s: still honoured (they cannot
    be converted: the ids behind them are unknown), next to keyed entries."""
    from vicino.services.kernel.contracts.erasures import legacy_erasure_digest

    log = ParquetLog(str(tmp_path))
    write(log, "f", [it("o1", "old-erasure"), it("n1", "new-erasure"), it("k1", "kept")])
    later = DAY1 + 86_400 * 30
    report = apply_erasures(str(tmp_path), {legacy_erasure_digest("old-erasure"): later,
                                            erasure_digest("new-erasure", KEY): later}, key=KEY)
    assert report.rows_dropped == 2
    assert read_interactions(str(tmp_path)).column("event_id").to_pylist() == ["k1"]
    # the keyed digest depends on the key: another key's register names no one here
    assert erasure_digest("new-erasure", b"another key, also 32 bytes long!") != erasure_digest("new-erasure", KEY)
