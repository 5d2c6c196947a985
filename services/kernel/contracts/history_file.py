"""History files: the interaction history a retailer hands over in bulk, as CSV (optionally
gzipped) or Parquet, and how it maps to rows of the interaction log (INTERACTION_SCHEMA of
`interaction_log`). This module is the published contract for such files and their reader,
`read_history`: parsing and filtering are vectorised (pyarrow); the UCI Online Retail file
(541,909 rows) reads in seconds.

Written by whoever exports a retailer's history (or the UCI Online Retail dataset as published).
Read by the recommender's bulk import (`recommender/use_cases/history_import.py`, which adds the
accepted rows to the log and the hot history) and by training (`vicino.models.data`), through
this one reader, so that import and training agree on every row; the `vicino history` CLI and
the bench read it too.

Two formats, told apart by the header (or forced with `fmt`):

**vicino**: the InteractionV1 field names. Required: `event_id`, `customer_id`, `channel`,
`type`, `ts`; optional: `item_id`, `offer_id`, `store_id`, `quantity`, `value`, `currency`,
`country`, `received_at`, `score` (a survey's integer 0-10), `reply_to` (the contact a
support_reply answers); other columns are ignored. `ts`/`received_at` are ISO 8601 (a time
without offset is UTC) or epoch seconds; `received_at` defaults to the time of the import. A
row with an empty `customer_id` is dropped (`no_customer_id`), and so is one whose id the API's
id pattern refuses (`invalid_customer_id`, `kernel.ids.CLIENT_ID_PATTERN`: such a customer could
never be read or erased through the API; refused rather than rewritten, since a rewriting could
make two customers one), a repeated `event_id` keeps its first row (`duplicate_event_id`); an
unknown channel or type, a missing event id or ts, or a score that is not an integer 0-10 on a
survey (or any score on another type), is malformed.

**online-retail**: the UCI Online Retail layout (Chen 2015, doi 10.24432/C5BW33), header
`InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country`:

| InteractionV1 | from |
|---|---|
| event_id | `uci-<InvoiceNo>-<n>`, n = the row's ordinal within its invoice in file order: stable across re-imports, and the same in a slice that keeps whole invoices |
| customer_id | CustomerID without its trailing `.0` (`17850.0` → `17850`) |
| channel | `web`: the source is a non-store online retailer |
| type | `return` if InvoiceNo starts with `C` (a cancellation), else `purchase` |
| item_id | StockCode, upper-cased (`85123a` and `85123A` are one product) |
| quantity | \\|Quantity\\| (a cancellation's negative quantity made positive) |
| value | \\|Quantity\\| × UnitPrice |
| currency | `GBP` |
| country | Country |
| ts | InvoiceDate (`YYYY-MM-DD HH:MM[:SS]` or UCI's `M/D/YYYY H:MM`), read as UK local time (Europe/London: GMT in winter, BST in summer) and converted to UTC; a time repeated or skipped by a clock change takes the earlier instant |
| received_at | the time of the import |
| offer_id, store_id | empty |

Rows dropped, with the first reason that applies, in this order: `no_customer_id` (no
CustomerID), `invalid_customer_id` (as above), `non_product_code` (StockCode is one of NON_PRODUCT_CODES: postage POST/DOT/C2,
manual adjustment M, discount D, samples S, bad-debt adjustment B, BANK CHARGES, AMAZONFEE,
CRUK commission, PADS (cushion pads sold at 0.001); or a gift voucher `gift_0001_*`; the
`DCGS*` codes are products sold through the retailer's dotcom shop and are kept),
`zero_quantity`, `negative_quantity` (below zero on an invoice that is not a cancellation: a
stock adjustment, not a return), `non_positive_price` (UnitPrice <= 0). The bulk import then
also drops rows of erased customers (`erased`), which needs the erasure register: not here.

Malformed rows (wrong column count, an unparseable date or number, a missing required value)
are skipped, counted, and the first MALFORMED_LINES_CAP of their line numbers reported (physical
lines of the CSV, header = 1, assuming no quoted value spans lines; for Parquet, the 1-based
row number). The import goes on.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from vicino.services.kernel.contracts.interaction_log import INTERACTION_SCHEMA, TIMESTAMP
from vicino.services.kernel.contracts.interactions import CHANNELS, TYPES
from vicino.services.kernel.ids import CLIENT_ID_PATTERN

FORMATS = ("auto", "vicino", "online-retail")
NON_PRODUCT_CODES = frozenset({"POST", "DOT", "C2", "M", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"})
NON_PRODUCT_PREFIXES = ("GIFT_0001_",)
UCI_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
VICINO_REQUIRED = ("event_id", "customer_id", "channel", "type", "ts")
MALFORMED_LINES_CAP = 100
DROP_REASONS = {
    "no_customer_id": "no customer id",
    "invalid_customer_id": "a customer id the API refuses (CLIENT_ID_PATTERN: 1-128 letters, digits, . _ : @ -, "
                           "not starting with a symbol): it could never be read or erased through the API",
    "non_product_code": "not a product: postage, carriage, fees, manual adjustments, samples, vouchers",
    "zero_quantity": "quantity 0",
    "negative_quantity": "quantity below 0 outside a cancellation (a stock adjustment)",
    "non_positive_price": "unit price 0 or below (free items, bad-debt adjustments)",
    "duplicate_event_id": "an event id seen earlier in the file",
    "erased": "the customer was erased after this happened",
}
UK_TZ = "Europe/London"

_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
_UCI_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
_TS = TIMESTAMP
_READ_CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (stage: read | write | hot, done, total)


class HistoryFileError(Exception):
    """The file cannot be imported at all (not CSV or Parquet, unknown or incomplete header)."""


@dataclass
class ImportReport:
    source: str
    format: str
    content_sha256: str
    rows_read: int = 0        # data rows in the file, malformed ones included
    imported: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)  # the first MALFORMED_LINES_CAP
    customers: int = 0
    partitions: int = 0
    files_replaced: int = 0   # stale files of an earlier import of the same content, removed
    hot_history: dict[str, int] = field(default_factory=dict)  # ok / duplicate / moved
    seconds: float = 0.0
    dry_run: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# --- reading the file ------------------------------------------------------------------------------

def _load(path: Path, progress: Progress | None) -> tuple[bytes, bool]:
    """The file's content, gunzipped if it is gzip (by magic, not by name); whether it is Parquet."""
    size = path.stat().st_size
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if magic[:2] == b"\x1f\x8b" else raw
        chunks = []
        while chunk := stream.read(_READ_CHUNK):
            chunks.append(chunk)
            if progress:
                progress("read", raw.tell(), size)
    data = b"".join(chunks)
    return data, data[:4] == b"PAR1"


def _blank_lines(data: bytes) -> list[int]:
    """Physical line numbers of empty lines, which the CSV reader skips without counting."""
    out = []
    for sep in (b"\n\n", b"\n\r\n"):  # LF and CRLF files
        line, pos = 1, 0
        while (hit := data.find(sep, pos)) != -1:
            line += data.count(b"\n", pos, hit + 1)
            pos = hit + 1
            out.append(line)
    return sorted(out)


def _shift(n: int, skipped: list[int]) -> int:
    """The number `n` would have if the sorted `skipped` numbers were counted too."""
    at = n
    while True:
        moved = n + bisect_right(skipped, at)
        if moved == at:
            return at
        at = moved


class _Source:
    """The file as a table of strings, with what is needed to name its lines."""

    def __init__(self, table: pa.Table, invalid_rows: list[int], blank_lines: list[int], csv_file: bool) -> None:
        self.table = table
        self.invalid_rows = invalid_rows  # parser row numbers (header = 1, blank lines not counted)
        self.blank_lines = blank_lines
        self.csv_file = csv_file

    def line_of_row(self, i: int) -> int:
        if not self.csv_file:
            return i + 1
        return _shift(_shift(i + 2, self.invalid_rows), self.blank_lines)

    def line_of_invalid(self, row_number: int) -> int:
        return _shift(row_number, self.blank_lines)


def _read_source(data: bytes, parquet: bool) -> _Source:
    if parquet:
        try:
            table = pq.read_table(pa.BufferReader(data))
            # strings, like a CSV's columns: one mapping path for both (typed timestamps cast to ISO)
            table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise HistoryFileError(f"cannot read the Parquet file: {e}") from None
        return _Source(table, [], [], False)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    first = data[:data.find(b"\n")] if b"\n" in data else data
    try:
        header = next(csv.reader([first.decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, StopIteration):
        raise HistoryFileError("not a CSV file with a UTF-8 header line, nor a Parquet file") from None
    invalid: list[int] = []

    def on_invalid(row) -> str:
        invalid.append(row.number)
        return "skip"

    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            # one thread: the parser then knows the number of each row it skips
            read_options=pcsv.ReadOptions(use_threads=False, block_size=16 << 20),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                strings_can_be_null=True, null_values=[""]))
    except pa.ArrowInvalid as e:
        raise HistoryFileError(f"cannot parse the CSV: {e}") from None
    return _Source(table, sorted(invalid), _blank_lines(data), True)


def detect_format(columns: list[str]) -> str:
    cols = set(columns)
    if cols.issuperset(UCI_COLUMNS):
        return "online-retail"
    if cols.issuperset(VICINO_REQUIRED):
        return "vicino"
    raise HistoryFileError(f"unrecognised header {columns[:12]}: expected the Vicino columns "
                           f"({', '.join(VICINO_REQUIRED)}, ...) or the UCI Online Retail ones ({', '.join(UCI_COLUMNS)})")


# --- vectorised mapping --------------------------------------------------------------------------

def _np(mask) -> np.ndarray:
    """A boolean array (nulls count as False) as numpy."""
    return np.asarray(pc.fill_null(mask, False), dtype=bool)


def _trimmed(col) -> pa.ChunkedArray:
    """Whitespace trimmed; empty becomes null."""
    t = pc.utf8_trim_whitespace(col)
    return pc.if_else(pc.equal(t, ""), pa.scalar(None, pa.string()), t)


def _numbers(col, pattern: str, to: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Parsed numbers (null where empty or invalid) and the mask of the invalid ones."""
    ok = pc.match_substring_regex(col, pattern)
    bad = _np(pc.and_(pc.is_valid(col), pc.invert(pc.fill_null(ok, False))))
    clean = pc.utf8_trim_whitespace(pc.if_else(pc.fill_null(ok, False), col, pa.scalar(None, pa.string())))
    return pc.cast(clean, to), bad


def _instants(col) -> tuple[pa.ChunkedArray, np.ndarray]:
    """ISO 8601 (no offset: UTC) or epoch seconds → timestamp[us, UTC]; nulls where invalid,
    and the mask of the invalid ones."""
    col = _trimmed(col)
    epoch, _ = _numbers(col, _FLOAT_RE, pa.float64())
    epoch = pc.if_else(pc.less(pc.abs(epoch), 1e11), epoch, pa.scalar(None, pa.float64()))  # beyond year 5000: junk
    epoch_us = pc.cast(pc.round(pc.multiply(epoch, 1e6)), pa.int64())
    iso = pc.if_else(pc.fill_null(pc.match_substring_regex(col, _ISO_RE), False), col, pa.scalar(None, pa.string()))
    iso = pc.if_else(pc.fill_null(pc.match_substring_regex(iso, r"^\d{4}-\d{2}-\d{2}$"), False),
                     pc.binary_join_element_wise(iso, "T00:00:00", ""), iso)
    iso = pc.if_else(pc.fill_null(pc.match_substring_regex(iso, r"(Z|[+-]\d{2}(:?\d{2})?)$"), False),
                     iso, pc.binary_join_element_wise(iso, "Z", ""))
    try:
        iso_us = pc.cast(pc.cast(iso, _TS), pa.int64())
    except pa.ArrowInvalid:  # an impossible date somewhere (Feb 30): find it row by row
        iso_us = pa.array([_iso_us(v) for v in iso.to_pylist()], pa.int64())
    out = pc.coalesce(epoch_us, iso_us)
    bad = _np(pc.and_(pc.is_valid(col), pc.is_null(out)))
    return pc.cast(out, _TS), bad


def _iso_us(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return round(dt.datetime.fromisoformat(v).timestamp() * 1_000_000)
    except ValueError:
        return None


class _Mapped:
    """A source mapped to INTERACTION_SCHEMA columns, with the mask of malformed rows and, in
    order, the masks of the rows to drop."""

    def __init__(self, columns: dict, malformed: np.ndarray, reasons: list[tuple[str, np.ndarray]]) -> None:
        self.columns = columns
        self.malformed = malformed
        self.reasons = reasons


def _invoice_ordinals(invoices) -> pa.Array:
    """Each row's 1-based position among the rows of its invoice, in file order."""
    codes = np.asarray(pc.fill_null(pc.dictionary_encode(invoices).combine_chunks().indices, -1), dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    s = codes[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(s)]))
    ordinal = np.empty(len(codes), dtype=np.int64)
    ordinal[order] = np.arange(len(s)) - group_start + 1
    return pa.array(ordinal)


def _map_online_retail(t: pa.Table, received_at: float) -> _Mapped:
    n = t.num_rows
    invoice = _trimmed(t["InvoiceNo"])
    code = pc.utf8_upper(_trimmed(t["StockCode"]))
    qty, bad_qty = _numbers(t["Quantity"], _INT_RE, pa.int64())
    price, bad_price = _numbers(t["UnitPrice"], _FLOAT_RE, pa.float64())
    local = None
    raw_date = pc.replace_substring_regex(_trimmed(t["InvoiceDate"]), r"\.\d+$", "")  # from Parquet: fractions
    for fmt in _UCI_DATE_FORMATS:
        parsed = pc.strptime(raw_date, format=fmt, unit="us", error_is_null=True)
        local = parsed if local is None else pc.coalesce(local, parsed)
    ts = pc.cast(pc.assume_timezone(local, UK_TZ, ambiguous="earliest", nonexistent="earliest"), _TS)
    customer = pc.replace_substring_regex(_trimmed(t["CustomerID"]), r"\.0+$", "")
    malformed = (_np(pc.is_null(invoice)) | _np(pc.is_null(code)) | bad_qty | _np(pc.is_null(qty)) | bad_price
                 | _np(pc.is_null(price)) | _np(pc.is_null(ts)))
    is_return = _np(pc.starts_with(invoice, "C"))
    q = np.asarray(pc.fill_null(qty, 0), dtype=np.float64)
    p = np.asarray(pc.fill_null(price, 0.0), dtype=np.float64)
    non_product = _np(pc.is_in(code, value_set=pa.array(sorted(NON_PRODUCT_CODES))))
    for prefix in NON_PRODUCT_PREFIXES:
        non_product |= _np(pc.starts_with(code, prefix))
    reasons = [("no_customer_id", _np(pc.is_null(customer))),
               ("invalid_customer_id", _refused_ids(customer)),
               ("non_product_code", non_product),
               ("zero_quantity", q == 0),
               ("negative_quantity", (q < 0) & ~is_return),
               ("non_positive_price", p <= 0)]
    quantity = np.abs(q)
    columns = {
        "event_id": pc.binary_join_element_wise("uci-", invoice, "-", pc.cast(_invoice_ordinals(invoice), pa.string()),
                                                ""),
        "customer_id": customer,
        "channel": pa.repeat(pa.scalar("web"), n),
        "type": pa.array(np.where(is_return, "return", "purchase"), pa.string()),
        "item_id": code,
        "offer_id": pa.nulls(n, pa.string()),
        "store_id": pa.nulls(n, pa.string()),
        "quantity": pa.array(quantity),
        "value": pa.array(np.round(quantity * p, 6)),  # 6 × 2.55 is 15.3, not 15.299999999999999
        "currency": pa.repeat(pa.scalar("GBP"), n),
        "country": _trimmed(t["Country"]),
        "ts": ts,
        "received_at": pa.array(np.full(n, round(received_at * 1_000_000), dtype=np.int64), _TS),
        "score": pa.nulls(n, pa.int8()),
        "reply_to": pa.nulls(n, pa.string()),
    }
    return _Mapped(columns, malformed, reasons)


def _map_vicino(t: pa.Table, received_at: float) -> _Mapped:
    n = t.num_rows
    present = set(t.column_names)
    none = pa.nulls(n, pa.string())

    def text(name: str):
        return _trimmed(t[name]) if name in present else none

    event_id, customer, channel, kind = text("event_id"), text("customer_id"), text("channel"), text("type")
    quantity, bad_q = _numbers(text("quantity"), _FLOAT_RE, pa.float64())
    value, bad_v = _numbers(text("value"), _FLOAT_RE, pa.float64())
    ts, bad_ts = _instants(text("ts"))
    got_at, bad_at = _instants(text("received_at"))
    got_at = pc.fill_null(got_at, pa.scalar(round(received_at * 1_000_000), _TS))
    # a survey's score, as the API takes it: an integer 0-10, on surveys only
    parsed, bad_s = _numbers(text("score"), _INT_RE, pa.int64())
    is_survey = _np(pc.equal(kind, "survey"))
    s = np.asarray(pc.fill_null(parsed, -1), dtype=np.int64)
    in_range = _np(pc.is_valid(parsed)) & (s >= 0) & (s <= 10)
    bad_s |= (is_survey & ~in_range) | (~is_survey & _np(pc.is_valid(parsed)))
    score = pa.array(np.where(in_range, s, 0), type=pa.int8(), mask=~in_range)
    malformed = (_np(pc.is_null(event_id)) | ~_np(pc.is_in(channel, value_set=pa.array(CHANNELS)))
                 | ~_np(pc.is_in(kind, value_set=pa.array(TYPES)))
                 | _np(pc.is_null(ts)) | bad_ts | bad_at | bad_q | bad_v | bad_s)
    no_customer = _np(pc.is_null(customer))
    refused = _refused_ids(customer) & ~no_customer
    # a repeated event id keeps its first usable row
    usable = ~malformed & ~no_customer & ~refused
    rows = np.flatnonzero(usable)
    firsts = pa.table({"e": pc.take(event_id, pa.array(rows)), "i": pa.array(rows)}).group_by("e", use_threads=False) \
        .aggregate([("i", "min")]).column("i_min")
    repeated = usable.copy()
    repeated[np.asarray(firsts, dtype=np.int64)] = False
    columns = {"event_id": event_id, "customer_id": customer, "channel": channel, "type": kind,
               "item_id": text("item_id"), "offer_id": text("offer_id"), "store_id": text("store_id"),
               "quantity": quantity, "value": value, "currency": text("currency"), "country": text("country"),
               "ts": ts, "received_at": got_at, "score": score, "reply_to": text("reply_to")}
    return _Mapped(columns, malformed, [("no_customer_id", no_customer), ("invalid_customer_id", refused),
                                        ("duplicate_event_id", repeated)])


def _refused_ids(customer) -> np.ndarray:
    """Customer ids the API's id pattern refuses (a null is `no_customer_id`'s, not this). Refused,
    not rewritten: any rewriting could make two customers one."""
    ok = pc.fill_null(pc.match_substring_regex(customer, CLIENT_ID_PATTERN), True)
    return ~_np(ok)


def read_history(path: str | Path, fmt: str = "auto", *, received_at: float,
                 progress: Progress | None = None) -> tuple[pa.Table, ImportReport]:
    """Reads and filters a history file: the accepted rows (INTERACTION_SCHEMA, sorted by ts)
    and the report so far (erasures are not checked here: that needs Redis)."""
    if fmt not in FORMATS:
        raise HistoryFileError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    path = Path(path)
    started = time.perf_counter()
    data, parquet = _load(path, progress)
    digest = hashlib.sha256(data).hexdigest()
    source = _read_source(data, parquet)
    del data
    t = source.table
    found = detect_format(t.column_names) if fmt == "auto" else fmt
    needed = UCI_COLUMNS if found == "online-retail" else VICINO_REQUIRED
    missing = [c for c in needed if c not in t.column_names]
    if missing:
        raise HistoryFileError(f"format {found}: missing column(s) {', '.join(missing)}")
    mapped = (_map_online_retail if found == "online-retail" else _map_vicino)(t, received_at)

    report = ImportReport(source=str(path), format=found, content_sha256=digest)
    report.rows_read = t.num_rows + len(source.invalid_rows)
    report.malformed = int(mapped.malformed.sum()) + len(source.invalid_rows)
    lines = [source.line_of_invalid(r) for r in source.invalid_rows[:MALFORMED_LINES_CAP]]
    lines += [source.line_of_row(int(i)) for i in np.flatnonzero(mapped.malformed)[:MALFORMED_LINES_CAP]]
    report.malformed_lines = sorted(lines)[:MALFORMED_LINES_CAP]
    keep = ~mapped.malformed
    for reason, mask in mapped.reasons:
        hit = keep & mask
        report.dropped[reason] = int(hit.sum())
        keep &= ~hit
    rows = pa.array(np.flatnonzero(keep))
    accepted = pa.table({name: pc.take(mapped.columns[name], rows) for name in INTERACTION_SCHEMA.names})
    accepted = accepted.cast(INTERACTION_SCHEMA)
    accepted = accepted.take(pc.sort_indices(accepted, sort_keys=[("ts", "ascending")]))
    report.imported = accepted.num_rows
    report.customers = len(pc.unique(accepted.column("customer_id")))
    report.seconds = time.perf_counter() - started
    return accepted, report
