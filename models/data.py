"""Data: the interaction history as training sees it, and the weighted user × item matrix.

`load_history` reads a Parquet log root (`read_interactions` + `read_merges`, merges applied)
or a history file (UCI Online Retail or Vicino columns, through the kernel's `history_file` reader,
the importer's own, so training and import agree on every row). Everything after that works on `Events`: the same
rows as numpy columns with integer codes, cheap to slice by time.

`interaction_matrix` turns events into LightFM's input: one weight per (customer, item), the
sum over their interactions of type weight × channel weight × exponential time decay (half-life
relative to the end of the training window). Returns carry a negative weight and subtract from
the purchases they undo; pairs whose net weight is not positive are left out.

`CustomerPolicy` is what the deployment says about whom training may use: the erasure register
(an erased customer's rows up to their erasure never reach training, whatever the source) and
personalisation consent (who may have a learned row at all; the others train only the shared
feature embeddings, as cold customers, and get no row in the artifact).
"""
from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import scipy.sparse as sp

from vicino.services.kernel.contracts.erasures import erased_at_in
from vicino.services.kernel.contracts.interactions import CHANNELS, TYPES
from vicino.services.kernel.contracts.history_file import HistoryFileError, read_history
from vicino.services.kernel.contracts.interaction_log import read_interactions, read_merges

DAY_S = 86_400.0
# Purchase-like types: what the evaluation counts as "bought" and the repeat signal sums over.
PURCHASE_TYPES = ("purchase", "click_and_collect")

DEFAULT_TYPE_WEIGHTS = {
    "purchase": 1.0, "click_and_collect": 1.0, "reservation": 0.5, "offer_redeem": 0.5, "add_to_cart": 0.25,
    "view": 0.05, "offer_open": 0.0, "support_contact": 0.0, "return": -1.0,
    "survey": 0.0, "support_reply": 0.0,
}
DEFAULT_CHANNEL_WEIGHTS = {c: 1.0 for c in CHANNELS}


class DataError(Exception):
    """The history cannot be used for training (unreadable, empty, unknown layout)."""


@dataclass(frozen=True)
class CustomerPolicy:
    """`erased`: the erasure register as read at `erasures_as_of` (keyed digest of a customer id ->
    erased at, epoch s; `key` is the register's HMAC key); `personalised(ids)`: those of `ids` with personalisation consent (None:
    everyone, for a history file outside any deployment)."""
    erased: Mapping[str, float] = field(default_factory=dict)
    erasures_as_of: float = 0.0
    personalised: Callable[[list[str]], Collection[str]] | None = None
    key: bytes = b""


def without_erased(table: pa.Table, erased: Mapping[str, float], key: bytes = b"") -> tuple[pa.Table, int]:
    """The rows of customers in `erased` that happened or arrived up to their erasure dropped
    (`ts` or `received_at` <= erased_at: a history file's rows all "arrive" now); and how many."""
    if not erased or table.num_rows == 0:
        return table, 0
    enc = pc.dictionary_encode(table.column("customer_id").combine_chunks())
    limits = [erased_at_in(erased, c, key) if c is not None else None
              for c in enc.dictionary.to_pylist()]
    if all(x is None for x in limits):
        return table, 0
    per_id = pa.array([round(float(x) * 1_000_000) if x is not None else None for x in limits], pa.int64())
    limit = pc.take(per_id, enc.indices)
    us = lambda name: pc.cast(table.column(name), pa.int64())  # noqa: E731
    drop = pc.fill_null(pc.or_(pc.less_equal(us("ts"), limit), pc.less_equal(us("received_at"), limit)), False)
    kept = table.filter(pc.invert(drop))
    return kept, table.num_rows - kept.num_rows


# ------------------------------------------------------------------------------------------------
# Loading

@dataclass
class History:
    """The accepted interactions (INTERACTION_SCHEMA, customer ids resolved to merge survivors)
    and what is known about items beyond them (descriptions from a UCI file)."""
    table: pa.Table
    source: str
    format: str                                   # parquet-log | online-retail | vicino
    merges_applied: int = 0                       # customer ids renamed to their survivor
    descriptions: dict[str, str] = field(default_factory=dict)
    erased_rows: int = 0                          # rows of erased customers dropped


def survivors(merges: list[tuple[str, str]]) -> dict[str, str]:
    """Union-find over (merged, into) links: every id of a group maps to the group's smallest id,
    as services/recommender/domain/identity.py `survivor` decides, whatever the links' order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in merges:
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
            parent.setdefault(lo, lo)
    return {x: find(x) for x in list(parent) if find(x) != x}


def apply_merges(table: pa.Table, merges: list[tuple[str, str]]) -> tuple[pa.Table, int]:
    """The table with every merged customer id replaced by its survivor; and how many rows changed."""
    mapping = survivors(merges)
    if not mapping or table.num_rows == 0:
        return table, 0
    ids = table.column("customer_id").combine_chunks()
    enc = pc.dictionary_encode(ids)
    values = enc.dictionary.to_pylist()
    mapped = pa.array([mapping.get(v, v) for v in values], pa.string())
    new = pc.take(mapped, enc.indices)
    changed = int(pc.sum(pc.not_equal(new, ids)).as_py() or 0)
    return table.set_column(table.schema.get_field_index("customer_id"), "customer_id", new), changed


def _uci_descriptions(path: Path) -> dict[str, str]:
    """StockCode (upper-cased, as the importer keys items) → its most frequent description."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["StockCode", "Description"])
        t = t.cast(pa.schema([("StockCode", pa.string()), ("Description", pa.string())]))
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            t = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(
                include_columns=["StockCode", "Description"],
                column_types={"StockCode": pa.string(), "Description": pa.string()}))
    t = t.filter(pc.is_valid(t["Description"]))
    t = pa.table({"code": pc.utf8_upper(pc.utf8_trim_whitespace(t["StockCode"])),
                  "desc": pc.utf8_trim_whitespace(t["Description"])})
    counts = t.group_by(["code", "desc"], use_threads=False).aggregate([("desc", "count")])
    counts = counts.sort_by([("code", "ascending"), ("desc_count", "descending"), ("desc", "ascending")])
    out: dict[str, str] = {}
    for code, desc in zip(counts["code"].to_pylist(), counts["desc"].to_pylist()):
        if desc:
            out.setdefault(code, desc)
    return out


def load_history(data: str | Path, erased: Mapping[str, float] | None = None, key: bytes = b"") -> History:
    """A Parquet log root (a directory holding `interactions/`, or a URL), or one history file;
    without the rows of the customers in `erased` (see `without_erased`), before merges apply."""
    s = str(data)
    p = Path(s)
    if "://" in s or p.is_dir():
        if p.is_dir() and not (p / "interactions").is_dir():
            raise DataError(f"{s} is a directory without interactions/: not a Parquet log root")
        table, dropped = without_erased(read_interactions(s), erased or {}, key)
        merges = read_merges(s)
        table, changed = apply_merges(table, list(zip(merges["merged"].to_pylist(), merges["into"].to_pylist())))
        return History(table, s, "parquet-log", changed, erased_rows=dropped)
    if not p.exists():
        raise DataError(f"{s} does not exist")
    try:
        table, report = read_history(p, "auto", received_at=time.time())
    except HistoryFileError as e:
        raise DataError(str(e)) from None
    kept, dropped = without_erased(table, erased or {}, key)
    descriptions = _uci_descriptions(p) if report.format == "online-retail" else {}
    if dropped:  # an item only erased customers bought is not known to exist either
        only_theirs = set(pc.unique(table["item_id"]).to_pylist()) - set(pc.unique(kept["item_id"]).to_pylist())
        descriptions = {k: v for k, v in descriptions.items() if k not in only_theirs}
    return History(kept, s, report.format, 0, descriptions, erased_rows=dropped)


# ------------------------------------------------------------------------------------------------
# Events: the rows as numpy columns

@dataclass(frozen=True)
class Events:
    """Interactions as parallel arrays. `user`/`item`/`country` are codes into the id lists
    (item −1: the row is about no item); `type`/`channel` are codes into TYPES/CHANNELS."""
    user: np.ndarray          # int32
    item: np.ndarray          # int32, −1 for none
    type: np.ndarray          # int8 into TYPES
    channel: np.ndarray       # int8 into CHANNELS
    ts: np.ndarray            # float64 epoch seconds
    quantity: np.ndarray      # float64, NaN unknown
    value: np.ndarray         # float64, NaN unknown
    country: np.ndarray       # int32, −1 unknown
    user_ids: list[str]
    item_ids: list[str]
    countries: list[str]

    def __len__(self) -> int:
        return len(self.ts)

    def select(self, mask: np.ndarray) -> "Events":
        return Events(self.user[mask], self.item[mask], self.type[mask], self.channel[mask], self.ts[mask],
                      self.quantity[mask], self.value[mask], self.country[mask], self.user_ids, self.item_ids,
                      self.countries)

    def before(self, t: float) -> "Events":
        return self.select(self.ts < t)

    def between(self, lo: float, hi: float) -> "Events":
        return self.select((self.ts >= lo) & (self.ts < hi))

    def is_type(self, *names: str) -> np.ndarray:
        return np.isin(self.type, [TYPES.index(n) for n in names])


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(col.combine_chunks())
    idx = np.asarray(pc.fill_null(enc.indices, -1), dtype=np.int32)
    return idx, enc.dictionary.to_pylist()


def _fixed_codes(col: pa.ChunkedArray, names: tuple[str, ...]) -> np.ndarray:
    idx = pc.index_in(col, value_set=pa.array(names))
    out = np.asarray(pc.fill_null(idx, -1), dtype=np.int8)
    if (out < 0).any():
        bad = sorted(set(col.filter(pc.is_null(idx)).to_pylist()), key=str)[:5]
        raise DataError(f"unknown value(s) {bad} (expected one of {', '.join(names)})")
    return out


def events_of(table: pa.Table) -> Events:
    if table.num_rows == 0:
        raise DataError("the history holds no interaction")
    user, user_ids = _codes(table.column("customer_id"))
    item, item_ids = _codes(table.column("item_id"))
    country, countries = _codes(table.column("country"))
    ts = np.asarray(pc.cast(table.column("ts"), pa.int64()), dtype=np.int64) / 1e6
    num = lambda name: np.asarray(pc.fill_null(table.column(name), np.nan), dtype=np.float64)  # noqa: E731
    return Events(user, item, _fixed_codes(table.column("type"), TYPES), _fixed_codes(table.column("channel"), CHANNELS),
                  ts, num("quantity"), num("value"), country, user_ids, item_ids, countries)


# ------------------------------------------------------------------------------------------------
# Weights and the interaction matrix

def row_weights(events: Events, type_weights: dict[str, float], channel_weights: dict[str, float],
                end: float, half_life_days: float) -> np.ndarray:
    """Per row: type weight × channel weight × 2^(−age/half_life), age in days before `end`
    (rows after `end` count as age 0). Types or channels missing from the tables weigh 0 / 1."""
    tw = np.array([float(type_weights.get(t, 0.0)) for t in TYPES])
    cw = np.array([float(channel_weights.get(c, 1.0)) for c in CHANNELS])
    age = np.maximum(end - events.ts, 0.0) / DAY_S
    decay = np.exp2(-age / half_life_days) if half_life_days > 0 else np.ones_like(age)
    return tw[events.type] * cw[events.channel] * decay


@dataclass(frozen=True)
class Interactions:
    """LightFM's input for one training window: rows are `users`, columns `items` (codes into
    Events.user_ids / item_ids), `weights` the net decayed weight of each positive pair."""
    users: np.ndarray          # global user codes, row order
    items: np.ndarray          # global item codes, column order
    weights: sp.coo_matrix     # float32, strictly positive entries only

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape


def interaction_matrix(events: Events, *, type_weights: dict[str, float], channel_weights: dict[str, float],
                       end: float, half_life_days: float, aggregate: str = "sum") -> Interactions:
    """Sums each (customer, item)'s weighted interactions and keeps the pairs with a positive
    net weight; `aggregate="log1p"` then compresses heavy repeat buyers' weights (log(1 + w)).
    Rows and columns are every customer and item with an item interaction in `events`, even
    when none of their pairs stays positive: the candidates do not depend on the weights."""
    if aggregate not in ("sum", "log1p"):
        raise ValueError(f"aggregate must be sum or log1p, not {aggregate!r}")
    on_item = events.item >= 0
    w = row_weights(events, type_weights, channel_weights, end, half_life_days)[on_item]
    u, i = events.user[on_item].astype(np.int64), events.item[on_item].astype(np.int64)
    users, rows = np.unique(u, return_inverse=True)
    items, cols = np.unique(i, return_inverse=True)
    key = rows.astype(np.int64) * len(items) + cols
    uniq, inv = np.unique(key, return_inverse=True)
    net = np.bincount(inv, weights=w, minlength=len(uniq))
    keep = net > 1e-9
    uniq, net = uniq[keep], net[keep]
    if aggregate == "log1p":
        net = np.log1p(net)
    m = sp.coo_matrix((net.astype(np.float32), ((uniq // len(items)).astype(np.int32),
                                                (uniq % len(items)).astype(np.int32))),
                      shape=(len(users), len(items)))
    return Interactions(users.astype(np.int32), items.astype(np.int32), m)
