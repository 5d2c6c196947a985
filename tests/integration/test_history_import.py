"""Bulk history import against a real Redis (the lead's CustomerRepository) and a real filesystem:
a slice of the real UCI Online Retail file, a hand-written malformed file, Vicino's own format,
gzip and Parquet inputs, idempotent re-import, erasures, the CLI."""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import shutil
from collections import Counter, defaultdict
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.ids import is_valid_client_id
from vicino.services.recommender.adapters.customer_repository import CustomerRepository
from vicino.services.kernel.contracts.history_file import NON_PRODUCT_CODES, HistoryFileError, read_history
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS, read_interactions
from vicino.services.recommender.adapters.parquet_log import ParquetLog
from vicino.services.recommender.adapters.redis_keys import ERASURES, erasure_digest
from vicino.services.kernel.contracts.erasures import register_key
from vicino.services.recommender.use_cases.history_import import HistoryImport
from tests.conftest import FIXTURES, TOKEN_SECRET, make_rec_settings

KEY = register_key(TOKEN_SECRET)  # the erasure register's key, as the services derive it

SLICE = FIXTURES / "online_retail_slice.csv"
MALFORMED = FIXTURES / "history_malformed.csv"
NOW = 1_790_000_000.0
HOT_N = 5


def run_import(redis_url: str, root: str, path, fmt: str = "auto", progress=None):
    settings = make_rec_settings(redis_url, history_dir=root, history_hot_per_customer=HOT_N)

    async def go():
        r = aioredis.Redis.from_url(redis_url)
        try:
            use_case = HistoryImport(CustomerRepository(r, settings), r, root, hot_per_customer=HOT_N,
                                     clock=FixedClock(NOW), batch=300)
            return await use_case.run(path, fmt, progress)
        finally:
            await r.aclose()

    return asyncio.run(go())


def hot_history(redis_url: str, customer: str) -> list[dict]:
    settings = make_rec_settings(redis_url)

    async def go():
        r = aioredis.Redis.from_url(redis_url)
        try:
            return await CustomerRepository(r, settings).hot_history(customer)
        finally:
            await r.aclose()

    return asyncio.run(go())


def independent_count(path) -> tuple[Counter, list[dict]]:
    """The same rules, row by row with the csv module: the reference the import is checked against."""
    reasons: Counter = Counter()
    kept = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            code = row["StockCode"].upper()
            q, price = int(row["Quantity"]), float(row["UnitPrice"])
            if not row["CustomerID"]:
                reasons["no_customer_id"] += 1
            elif code in NON_PRODUCT_CODES or code.startswith("GIFT_0001_"):
                reasons["non_product_code"] += 1
            elif q == 0:
                reasons["zero_quantity"] += 1
            elif q < 0 and not row["InvoiceNo"].startswith("C"):
                reasons["negative_quantity"] += 1
            elif price <= 0:
                reasons["non_positive_price"] += 1
            else:
                kept.append(row)
    return reasons, kept


def test_slice_of_the_real_file(redis_url, tmp_path):
    root = str(tmp_path / "history")
    stages = Counter()
    report = run_import(redis_url, root, SLICE, progress=lambda stage, done, total: stages.update([stage]))
    reasons, kept = independent_count(SLICE)

    assert report.format == "online-retail"
    assert report.rows_read == 2216 and report.malformed == 0 and report.malformed_lines == []
    assert {k: v for k, v in report.dropped.items() if v} == dict(reasons)
    # the slice was chosen to exercise these
    assert reasons["no_customer_id"] > 100 and reasons["non_product_code"] > 5 and reasons["non_positive_price"] >= 1
    assert report.imported == len(kept) == report.rows_read - sum(reasons.values())
    assert report.customers == len({r["CustomerID"] for r in kept})
    assert {"read", "write", "hot"} <= set(stages)

    log = read_interactions(root)
    assert log.num_rows == report.imported
    rows = {r["event_id"]: r for r in log.to_pylist()}
    first = rows["uci-536365-1"]  # the file's first line
    assert (first["customer_id"], first["item_id"], first["quantity"], first["value"], first["currency"],
            first["channel"], first["type"], first["country"]) == \
        ("17850", "85123A", 6.0, 15.3, "GBP", "web", "purchase", "United Kingdom")
    assert first["ts"] == dt.datetime(2010, 12, 1, 8, 26, tzinfo=dt.timezone.utc)  # GMT in December
    assert first["received_at"].timestamp() == NOW
    returns = [r for r in kept if r["InvoiceNo"].startswith("C")]
    assert returns and sum(r["type"] == "return" for r in rows.values()) == len(returns)
    assert all(r["quantity"] > 0 and r["value"] > 0 for r in rows.values())
    # summer rows are BST: an hour behind in UTC
    summer = next(r for r in kept if r["InvoiceDate"].startswith("2011-07-15"))
    local = dt.datetime.fromisoformat(summer["InvoiceDate"]).replace(tzinfo=ZoneInfo("Europe/London"))
    match = [r for r in rows.values() if r["customer_id"] == summer["CustomerID"].removesuffix(".0")
             and r["item_id"] == summer["StockCode"].upper() and r["ts"].month == 7]
    assert match and match[0]["ts"] == local.astimezone(dt.timezone.utc) and match[0]["ts"].hour == local.hour - 1

    # one partition per UTC date; the file names come from the content hash
    dates = {r["ts"].date().isoformat() for r in rows.values()}
    files = ParquetLog(root).files(INTERACTIONS)
    assert report.partitions == len(files) == len(dates)
    assert all(p.endswith(f"/import-{report.content_sha256[:16]}.parquet") for p in files)

    # hot history: each customer's HOT_N most recent, most recent first
    c = "17850"
    theirs = sorted((r for r in rows.values() if r["customer_id"] == c), key=lambda r: r["ts"], reverse=True)
    hot = hot_history(redis_url, c)
    assert len(theirs) > HOT_N and len(hot) == HOT_N
    assert [h["ts"] for h in hot] == [r["ts"].timestamp() for r in theirs[:HOT_N]]
    per_customer = Counter(r["customer_id"] for r in rows.values())
    assert report.hot_history == {"ok": sum(min(HOT_N, n) for n in per_customer.values()), "duplicate": 0, "moved": 0}


def test_reimport_replaces_and_never_duplicates(redis_url, tmp_path):
    root = str(tmp_path / "history")
    first = run_import(redis_url, root, SLICE)
    files = ParquetLog(root).files(INTERACTIONS)
    again = run_import(redis_url, root, SLICE)
    assert ParquetLog(root).files(INTERACTIONS) == files
    assert again.imported == first.imported and again.files_replaced == 0
    assert again.hot_history["ok"] == 0 and again.hot_history["duplicate"] == first.hot_history["ok"]
    raw = sum(pq.read_table(p).num_rows for p in files)
    assert raw == first.imported == read_interactions(root).num_rows

    # the same content gzipped is the same import
    gz = tmp_path / "slice.csv.gz"
    with open(SLICE, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    zipped = run_import(redis_url, root, gz)
    assert zipped.content_sha256 == first.content_sha256 and zipped.imported == first.imported
    assert ParquetLog(root).files(INTERACTIONS) == files


def test_reimport_after_an_erasure_drops_the_customer_and_stale_files(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    first = run_import(redis_url, root, SLICE)
    rows = read_interactions(root).to_pylist()
    customers_on: dict = defaultdict(set)
    for r in rows:
        customers_on[r["ts"].date()].add(r["customer_id"])
    # a customer who was alone to buy on some date: erasing them empties that partition
    gone = next(iter(next(cs for cs in customers_on.values() if len(cs) == 1)))
    emptied = sum(cs == {gone} for cs in customers_on.values())
    theirs = sum(r["customer_id"] == gone for r in rows)
    redis_sync.hset(ERASURES, erasure_digest(gone, KEY), repr(NOW))

    again = run_import(redis_url, root, SLICE)
    assert again.dropped["erased"] == theirs and again.imported == first.imported - theirs
    assert gone not in set(read_interactions(root).column("customer_id").to_pylist())
    assert again.files_replaced == emptied >= 1
    assert again.partitions == first.partitions - emptied == len(ParquetLog(root).files(INTERACTIONS))


def test_malformed_rows_are_skipped_with_their_line_numbers(redis_url, tmp_path):
    root = str(tmp_path / "history")
    report = run_import(redis_url, root, MALFORMED)
    # lines 3 and 8: wrong column count; 4: bad date; 5: bad quantity; 7: bad price; 16: no stock code;
    # line 6 is blank (not a row)
    assert report.malformed_lines == [3, 4, 5, 7, 8, 16] and report.malformed == 6
    assert report.rows_read == 15
    assert {k: v for k, v in report.dropped.items() if v} == {
        "no_customer_id": 1, "non_product_code": 1, "zero_quantity": 1, "negative_quantity": 1, "non_positive_price": 1}
    got = {r["event_id"]: r for r in read_interactions(root).to_pylist()}
    assert sorted(got) == ["uci-900001-1", "uci-900002-3", "uci-900007-1", "uci-C900005-1"]
    assert got["uci-C900005-1"]["type"] == "return" and got["uci-C900005-1"]["quantity"] == 2.0
    assert got["uci-900002-3"]["value"] == 25.5  # "GOOD, QUOTED": 6 × 4.25


def test_malformed_line_numbers_are_capped_but_all_counted(tmp_path):
    path = tmp_path / "many.csv"
    lines = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    lines += [f"1{i:05d},ABC,X,{'bad' if i % 2 else 1},2011-01-01 10:00:00,1.0,1.0,UK" for i in range(500)]
    path.write_text("\n".join(lines) + "\n")
    _, report = read_history(path, received_at=NOW)
    assert report.malformed == 250 and len(report.malformed_lines) == 100
    assert report.malformed_lines[:3] == [3, 5, 7]


def test_vicino_format_csv_and_parquet(redis_url, tmp_path):
    root = str(tmp_path / "history")
    path = tmp_path / "own.csv"
    path.write_text(
        "event_id,customer_id,channel,type,item_id,offer_id,store_id,quantity,value,currency,country,ts,extra\n"
        "e1,c1,store,purchase,sku-1,,s1,2,19.9,EUR,IT,2026-03-01T10:00:00+01:00,x\n"   # line 2
        "e2,c1,web,view,sku-2,,,,,,,1772355600,x\n"                                    # epoch seconds
        "e3,c2,app,offer_open,,o1,,,,,,2026-03-01 09:30:00,x\n"                        # naive: UTC
        "e4,,app,view,sku-1,,,,,,,2026-03-01T09:00:00Z,x\n"                            # no customer
        "e5,c2,pigeon,view,sku-1,,,,,,,2026-03-01T09:00:00Z,x\n"                       # line 6: bad channel
        "e6,c2,web,view,sku-1,,,,,,,2026-02-30T09:00:00Z,x\n"                          # line 7: no such date
        "e1,c1,store,purchase,sku-1,,s1,2,19.9,EUR,IT,2026-03-01T10:00:00+01:00,x\n"   # repeated id
        "e7,c3,email,offer_redeem,,o2,,,,,,2026-03-02,x\n")
    report = run_import(redis_url, root, path)
    assert report.format == "vicino" and report.rows_read == 8
    assert report.malformed_lines == [6, 7]
    assert {k: v for k, v in report.dropped.items() if v} == {"no_customer_id": 1, "duplicate_event_id": 1}
    got = {r["event_id"]: r for r in read_interactions(root).to_pylist()}
    assert sorted(got) == ["e1", "e2", "e3", "e7"]
    utc = dt.timezone.utc
    assert got["e1"]["ts"] == dt.datetime(2026, 3, 1, 9, 0, tzinfo=utc)
    assert got["e2"]["ts"] == dt.datetime.fromtimestamp(1772355600, utc)
    assert got["e3"]["ts"] == dt.datetime(2026, 3, 1, 9, 30, tzinfo=utc)
    assert got["e7"]["ts"] == dt.datetime(2026, 3, 2, tzinfo=utc)
    assert (got["e1"]["quantity"], got["e1"]["value"], got["e1"]["store_id"], got["e3"]["offer_id"]) == (2.0, 19.9, "s1", "o1")

    # the same rows from a Parquet file (our own log's schema, timestamps typed)
    pq_path = tmp_path / "own.parquet"
    pq.write_table(read_interactions(root), pq_path)
    root2 = str(tmp_path / "history2")
    again = run_import(redis_url, root2, pq_path)
    assert again.format == "vicino" and again.imported == 4 and again.malformed == 0
    assert read_interactions(root2).to_pylist() == read_interactions(root).to_pylist()


def test_vicino_format_carries_survey_scores_and_replies(redis_url, tmp_path):
    root = str(tmp_path / "history")
    path = tmp_path / "care.csv"
    path.write_text(
        "event_id,customer_id,channel,type,score,reply_to,ts\n"
        "s1,c1,email,survey,9,,2026-03-01T10:00:00Z\n"
        "s2,c1,app,survey,0,,2026-03-01T11:00:00Z\n"
        "k1,c1,call_center,support_contact,,,2026-03-01T12:00:00Z\n"
        "k2,c1,email,support_reply,,k1,2026-03-01T13:00:00Z\n"
        "s3,c1,email,survey,11,,2026-03-01T10:00:00Z\n"        # line 6: out of 0-10
        "s4,c1,email,survey,,,2026-03-01T10:00:00Z\n"          # line 7: a survey without its score
        "p1,c1,web,purchase,5,,2026-03-01T10:00:00Z\n")        # line 8: a score on a purchase
    report = run_import(redis_url, root, path)
    assert report.imported == 4 and report.malformed_lines == [6, 7, 8]
    got = {r["event_id"]: (r["score"], r["reply_to"]) for r in read_interactions(root).to_pylist()}
    assert got == {"s1": (9, None), "s2": (0, None), "k1": (None, None), "k2": (None, "k1")}
    # and again from a Parquet file of the log's own schema
    pq_path = tmp_path / "care.parquet"
    pq.write_table(read_interactions(root), pq_path)
    root2 = str(tmp_path / "history2")
    assert run_import(redis_url, root2, pq_path).imported == 4
    assert read_interactions(root2).to_pylist() == read_interactions(root).to_pylist()


def test_unusable_files_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(HistoryFileError, match="unrecognised header"):
        read_history(bad, received_at=NOW)
    with pytest.raises(HistoryFileError, match="missing column"):
        read_history(SLICE, "vicino", received_at=NOW)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HistoryFileError):
        read_history(binary, received_at=NOW)


def test_cli_import(redis_url, tmp_path, monkeypatch):
    from vicino.services.cli.history import history_app
    from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

    dry = CliRunner().invoke(history_app, ["import", str(MALFORMED), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would import 4" in dry.output and "lines 3, 4, 5, 7, 8, 16" in dry.output
    assert "non_product_code" in dry.output and "dry run: nothing written" in dry.output

    root = tmp_path / "history"
    for k, v in {"REDIS_URL": redis_url, "ADMIN_TOKEN": ADMIN_TOKEN, "TOKEN_SECRET": TOKEN_SECRET,
                 "HISTORY_DIR": str(root)}.items():
        monkeypatch.setenv(f"VICINO_{k}", v)
    out = CliRunner().invoke(history_app, ["import", str(SLICE), "--format", "online-retail"])
    assert out.exit_code == 0, out.output
    assert "no_customer_id" in out.output and "hot history: ok" in out.output
    assert read_interactions(str(root)).num_rows > 1000

    monkeypatch.delenv("VICINO_ADMIN_TOKEN")
    refused = CliRunner().invoke(history_app, ["import", str(SLICE)])
    assert refused.exit_code == 2 and "VICINO_ADMIN_TOKEN" in refused.output


def test_customer_ids_the_api_refuses_are_not_imported(redis_url, tmp_path):
    """An id the API's pattern refuses could never be read or erased through it: such rows are
    dropped and counted, the others imported."""
    root = str(tmp_path / "history")
    path = tmp_path / "ids.csv"
    path.write_text(
        "event_id,customer_id,channel,type,item_id,ts\n"
        "i1,good-1,web,view,sku-1,2026-03-01T10:00:00Z\n"
        "i2,has space,web,view,sku-1,2026-03-01T10:00:00Z\n"
        "i3,slash/id,web,view,sku-1,2026-03-01T10:00:00Z\n"
        "i4,-starts-with-a-symbol,web,view,sku-1,2026-03-01T10:00:00Z\n"
        f"i5,{'x' * 129},web,view,sku-1,2026-03-01T10:00:00Z\n"
        "i6,caf\u00e9,web,view,sku-1,2026-03-01T10:00:00Z\n"
        "i7,good.2@x:y_z,web,view,sku-1,2026-03-01T10:00:00Z\n", encoding="utf-8")
    report = run_import(redis_url, root, path)
    assert {k: v for k, v in report.dropped.items() if v} == {"invalid_customer_id": 5}
    got = read_interactions(root).to_pylist()
    assert sorted((r["event_id"], r["customer_id"]) for r in got) == [("i1", "good-1"), ("i7", "good.2@x:y_z")]
    assert all(is_valid_client_id(r["customer_id"]) for r in got)


def test_an_erasure_recorded_before_the_keyed_register_still_drops_the_customer(redis_sync, redis_url, tmp_path):
    from vicino.services.kernel.contracts.erasures import legacy_erasure_digest

    root = str(tmp_path / "history")
    path = tmp_path / "legacy.csv"
    path.write_text("event_id,customer_id,channel,type,item_id,ts\n"
                    "l1,legacy-gone,web,view,sku-1,2026-03-01T10:00:00Z\n"
                    "l2,legacy-kept,web,view,sku-1,2026-03-01T10:00:00Z\n")
    redis_sync.hset(ERASURES, legacy_erasure_digest("legacy-gone"), repr(NOW))
    report = run_import(redis_url, root, path)
    assert report.dropped["erased"] == 1
    assert read_interactions(root).column("customer_id").to_pylist() == ["legacy-kept"]
