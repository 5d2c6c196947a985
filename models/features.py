"""Features: what LightFM knows about a customer or an item besides its id, so that customers
and items never seen in training are scored from their features (hybrid model, cold start).

Names are stable strings, the same in the artifact's manifest and in serving:

    customers   country:<country>            most frequent country of their interactions
                channel:<channel>:<share %>  share of their interactions on that channel, in
                                             quarters: channel:web:75-100, channel:store:0-25
                freq:<band>                  purchase days in the window: freq:0-1 ... freq:50-inf
                recency:<band>               days since the last purchase: recency:0-7 ... recency:365-inf
    items       cat:<CATEGORY>               the catalogue's category, else the product noun of
                                             the description (the demo catalogue's rules)
                price:<band>                 median unit price: price:0-1, price:2-5, price:20-inf
                brand:<brand>                when the catalogue gives one
                rank30:<band>                rank by distinct buyers over the window's last 30
                                             days (rank30:0-20 = the 20 best sellers); unsold: none
                age:<band>                   days since the item's first sale: age:0-30 ... age:365-inf

A band "lo-hi" holds lo <= x < hi; "lo-inf" everything from lo (serving parses price bands
with that pattern). A customer never seen is scored from what serving knows of them (their
country; `freq:0-1` is what a customer without purchases had in training). Feature matrices
follow LightFM's layout: the identity features first (one per customer or item, when
enabled), then these; each row sums to 1, the identity weighing 1 − `feature_share`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vicino.services.kernel.contracts.interactions import CHANNELS
from vicino.services.kernel.contracts.item_categories import category_of

from .data import DAY_S, PURCHASE_TYPES, Events

PRICE_EDGES = (0, 1, 2, 5, 10, 20)
RANK_EDGES = (0, 20, 100, 300, 1000)
AGE_EDGES_DAYS = (0, 30, 90, 180, 365)
FREQ_EDGES = (0, 1, 2, 5, 10, 20, 50)
RECENCY_EDGES_DAYS = (0, 7, 30, 90, 180, 365)
SHARE_LABELS = ("0-25", "25-50", "50-75", "75-100")


def band(x: float, edges: tuple[float, ...]) -> str:
    """The band of `x`: "lo-hi" (lo <= x < hi), "lo-inf" past the last edge; below the first
    edge counts as the first band."""
    n = max(int(np.searchsorted(edges, x, side="right")) - 1, 0)
    hi = f"{edges[n + 1]:g}" if n + 1 < len(edges) else "inf"
    return f"{edges[n]:g}-{hi}"


def share_label(share: float) -> str:
    return SHARE_LABELS[min(int(share * 4), 3)]


def describe_bands() -> dict:
    """The band edges, for the manifest: serving builds the same names for new items."""
    return {"price": list(PRICE_EDGES), "freq": list(FREQ_EDGES), "recency_days": list(RECENCY_EDGES_DAYS),
            "channel_share": list(SHARE_LABELS), "rank30": list(RANK_EDGES), "age_days": list(AGE_EDGES_DAYS)}


# ------------------------------------------------------------------------------------------------
# Customers

def user_features(events: Events, users: np.ndarray, end: float) -> list[list[str]]:
    """The feature names of each customer in `users` (global codes), from their interactions
    in `events` (the training window), recency counted back from `end`."""
    pos = {int(u): n for n, u in enumerate(users)}
    mask = np.isin(events.user, users)
    u = np.array([pos[int(x)] for x in events.user[mask]], dtype=np.int64) if mask.any() else np.zeros(0, np.int64)
    n = len(users)
    channel = events.channel[mask].astype(np.int64)
    by_channel = np.zeros((n, len(CHANNELS)))
    np.add.at(by_channel, (u, channel), 1.0)
    # country: the most frequent (ties: the first in the list of countries, i.e. arbitrary but fixed)
    country = events.country[mask]
    has_c = country >= 0
    by_country = sp.coo_matrix((np.ones(int(has_c.sum())), (u[has_c], country[has_c])),
                               shape=(n, max(len(events.countries), 1))).tocsr()
    # frequency (distinct purchase days) and recency (days since the last purchase)
    bought_rows = events.is_type(*PURCHASE_TYPES)[mask]
    days = np.floor(events.ts[mask][bought_rows] / DAY_S).astype(np.int64)
    pairs = np.unique(np.stack([u[bought_rows], days]), axis=1) if bought_rows.any() else np.zeros((2, 0), np.int64)
    freq = np.bincount(pairs[0], minlength=n)
    last = np.full(n, -np.inf)
    np.maximum.at(last, u[bought_rows], events.ts[mask][bought_rows])
    out = []
    for r in range(n):
        feats = []
        row = by_country.getrow(r)
        if row.nnz:
            feats.append(f"country:{events.countries[int(row.indices[np.argmax(row.data)])]}")
        total = by_channel[r].sum()
        for c, count in enumerate(by_channel[r]):
            if count > 0:
                feats.append(f"channel:{CHANNELS[c]}:{share_label(count / total)}")
        feats.append(f"freq:{band(freq[r], FREQ_EDGES)}")
        if np.isfinite(last[r]):
            feats.append(f"recency:{band(max(end - last[r], 0.0) / DAY_S, RECENCY_EDGES_DAYS)}")
        out.append(feats)
    return out


# ------------------------------------------------------------------------------------------------
# Items

@dataclass(frozen=True)
class ItemInfo:
    category: str | None = None
    price: float | None = None
    brand: str | None = None


def read_catalog(path: str | Path) -> dict[str, ItemInfo]:
    """Item metadata from an offer catalogue (the JSON the demo loads: {"offers": [...]} or a
    list of offers, each with item_ids, category, price and optionally brand): every item of an
    offer gets the offer's category, price and brand. The first offer naming an item wins."""
    doc = json.loads(Path(path).read_text())
    offers = doc["offers"] if isinstance(doc, dict) else doc
    out: dict[str, ItemInfo] = {}
    for o in offers:
        for item in o.get("item_ids") or []:
            out.setdefault(str(item), ItemInfo(o.get("category"), o.get("price"), o.get("brand")))
    return out


def item_info(events: Events, descriptions: dict[str, str], catalog: dict[str, ItemInfo] | None = None
              ) -> dict[str, ItemInfo]:
    """Per item id: category (catalogue, else the description's product noun), price (the
    catalogue's, else the median unit price of its purchases), brand (catalogue only)."""
    catalog = catalog or {}
    prices = _median_unit_prices(events)
    ids = set(events.item_ids) | set(descriptions) | set(catalog)
    out = {}
    for item in ids:
        c = catalog.get(item, ItemInfo())
        category = c.category or (category_of(descriptions[item]) if item in descriptions else None)
        price = c.price if c.price is not None else prices.get(item)
        out[item] = ItemInfo(category, price, c.brand)
    return out


def _median_unit_prices(events: Events) -> dict[str, float]:
    ok = events.is_type(*PURCHASE_TYPES) & (events.item >= 0) & (events.quantity > 0) & (events.value > 0)
    item, unit = events.item[ok], events.value[ok] / events.quantity[ok]
    order = np.lexsort((unit, item))
    item, unit = item[order], unit[order]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]]) if len(item) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(item)]
    return {events.item_ids[item[s]]: round(float(np.median(unit[s:e])), 6) for s, e in zip(starts, ends)}


def item_activity_features(events: Events, items: np.ndarray, end: float, days: float = 30.0) -> list[list[str]]:
    """Per item (global codes): its rank by distinct buyers over the `days` before `end`
    (`rank30:0-20` ... `rank30:1000-inf`, none when unsold then) and the days since its first
    sale (`age:0-30` ... `age:365-inf`): what the season and the launches are doing."""
    m = events.is_type(*PURCHASE_TYPES) & (events.item >= 0)
    recent = m & (events.ts >= end - days * DAY_S)
    pairs = np.unique(np.stack([events.item[recent].astype(np.int64), events.user[recent].astype(np.int64)]),
                      axis=1) if recent.any() else np.zeros((2, 0), np.int64)
    buyers = np.bincount(pairs[0], minlength=len(events.item_ids))
    order = np.lexsort((np.arange(len(buyers)), -buyers))
    rank = np.empty(len(buyers), np.int64)
    rank[order] = np.arange(len(buyers))
    first = np.full(len(events.item_ids), np.inf)
    np.minimum.at(first, events.item[m], events.ts[m])
    out = []
    for i in items:
        feats = []
        if buyers[i] > 0:
            feats.append(f"rank{days:g}:{band(rank[i], RANK_EDGES)}")
        if np.isfinite(first[i]):
            feats.append(f"age:{band(max(end - first[i], 0.0) / DAY_S, AGE_EDGES_DAYS)}")
        out.append(feats)
    return out


def item_feature_names(info: ItemInfo | None) -> list[str]:
    if info is None:
        return []
    feats = []
    if info.category:
        feats.append(f"cat:{info.category}")
    if info.price is not None and info.price > 0:
        feats.append(f"price:{band(info.price, PRICE_EDGES)}")
    if info.brand:
        feats.append(f"brand:{info.brand}")
    return feats


# ------------------------------------------------------------------------------------------------
# Matrices

def vocabulary(per_entity: list[list[str]]) -> list[str]:
    return sorted({f for feats in per_entity for f in feats})


def feature_matrix(per_entity: list[list[str]], names: list[str], *, identity: bool,
                   feature_share: float | None = None, identity_rows: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows: entities; columns: identity features (one per entity, when `identity`) then `names`.
    Each row sums to 1, so a representation is a weighted mean of feature embeddings. By default
    every feature of a row weighs the same (LightFM's `normalize=True`); with `feature_share`
    and identity features, the identity weighs 1 − share and the named features share the rest
    equally (their mean is what a customer or item without identity gets: the cold start).
    `identity_rows` (a mask) limits identity columns to those entities, numbered in row order;
    the others are their named features alone, weighed as serving weighs a cold entity's
    (`feature_share` each, shared equally). Names not in `names` are ignored."""
    n = len(per_entity)
    has_identity = np.ones(n, bool) if identity_rows is None else np.asarray(identity_rows, bool)
    offset = int(has_identity.sum()) if identity else 0
    column = np.cumsum(has_identity) - 1
    index = {f: j for j, f in enumerate(names)}
    rows, cols, vals = [], [], []
    for r, feats in enumerate(per_entity):
        js = [index[f] for f in dict.fromkeys(feats) if f in index]
        own = identity and bool(has_identity[r])
        if identity and not own:
            wi, wf = 0.0, ((feature_share if feature_share is not None else 1.0) / len(js) if js else 0.0)
        elif own and js and feature_share is not None:
            wi, wf = 1.0 - feature_share, feature_share / len(js)
        else:
            wi = wf = 1.0 / (len(js) + (1 if own else 0)) if (js or own) else 0.0
        if own:
            rows.append(r)
            cols.append(int(column[r]))
            vals.append(wi)
        for j in js:
            rows.append(r)
            cols.append(offset + j)
            vals.append(wf)
    return sp.csr_matrix((np.array(vals, np.float32), (np.array(rows, np.int64), np.array(cols, np.int64))),
                         shape=(n, offset + len(names)), dtype=np.float32)
