"""The marketing KPIs of a period: a pure function of the decisions, the push gateway's delivery
receipts and the customers' purchases and redemptions. No I/O: the caller reads the streams and
may over-read; `compute_kpis` keeps what belongs to the report itself.

What is kept
- Decisions with `period[0] <= decided_at < period[1]`, at `store_id` and for `offer_id` when
  those filters are given (duplicates by decision_id count once).
- Receipts of kept decisions, one per (delivery_id, status). Events, one per event_id.
Attribution looks only at kept decisions, so a store's report never depends on how much the
caller over-read.

Definitions (every number can be derived by hand from these)
- Exposure: a kept decision with an offer that was sent (outcome `send`: treated) or held back
  (reason `holdout`: the holdout group's would-be push).
- Match: event e matches exposure d when e.customer_id == d.customer_id,
  d.decided_at < e.ts <= d.decided_at + window_s, and either e is an `offer_redeem` of d's offer
  or a `purchase` of an item in `offer_items[d.offer_id]`. No other type ever matches.
- Last touch: an event is attributed to at most one exposure, the matching one with the latest
  decided_at (ties: the greater decision_id).
- Attribution keys of an attributed event: `store` when bought in a store and that store is the
  one whose visit triggered d; `online` when on web or app; `anywhere` always.
- An exposure is converted under key k when at least one event attributed to it has key k. Its
  revenue under k is the sum of `value` (None counts 0) of its attributed purchases with key k;
  a redemption carries no revenue, the till's purchase does.
- decisions: total, sent, suppressed and suppressed_by_reason (every reason of REASONS, 0 if none).
- deliveries (kept receipts grouped by delivery_id): sent = deliveries with a `sent` or `opened`
  receipt; opened = with an `opened` receipt; open_rate = opened / sent. A delivery never sent
  counts once under its final status (latest receipt among failed, expired, token_invalid,
  suppressed; gateway suppressions also by reason). pending = sent decisions none of whose
  deliveries reached sent, opened or one of those final statuses (no receipt at all included).
- conversions (treated only), per key: conversions = converted sent decisions,
  rate = conversions / sent decisions, revenue.
- funnel (treated): sent and opened deliveries, then sent decisions with an attributed
  redemption (redeemed) and with an attributed purchase (purchased).
- uplift, per customer (intention to treat): a treated customer has a sent exposure, a holdout
  customer a holdout exposure; either is converted when any of those exposures converted
  anywhere. difference = p_treated - p_holdout with its 95% interval by Newcombe's hybrid score
  method (1998, method 10); relative = difference / p_holdout.
- repurchase, per group: of the group's converted customers, those with another purchase (any
  item, channel, attributed or not) in (first, first + window_s], where `first` is the ts of the
  customer's earliest event attributed to that group's exposures.
- by_store (sorted by store_id): decisions, sent, converted sent decisions per key, anywhere revenue.
A figure that cannot be computed (a rate over nothing) is None, never an error. With no kept
decisions every count is 0 and the report says so in `empty` and `empty_reason`.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vicino.services.kernel.contracts.decisions import REASONS

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
KEYS = ("store", "online", "anywhere")
CONVERSION_TYPES = frozenset({"purchase", "offer_redeem"})
ONLINE_CHANNELS = frozenset({"web", "app"})
# A delivery that reached one of these was settled by the gateway; one that did not is pending.
SENT_STATUSES = frozenset({"sent", "opened"})
UNSENT_FINAL_STATUSES = ("failed", "expired", "token_invalid", "suppressed")


@dataclass(frozen=True)
class ConversionEvent:
    """The part of an interaction the KPIs read."""

    event_id: str
    customer_id: str
    type: str
    channel: str
    ts: float
    item_id: str | None = None
    offer_id: str | None = None
    store_id: str | None = None
    value: float | None = None

    @classmethod
    def from_interaction(cls, interaction: Any) -> "ConversionEvent":
        """From an `InteractionV1`, or anything with the same attributes."""
        return cls(event_id=interaction.event_id, customer_id=interaction.customer_id, type=interaction.type,
                   channel=interaction.channel, ts=float(interaction.ts),
                   item_id=getattr(interaction, "item_id", None), offer_id=getattr(interaction, "offer_id", None),
                   store_id=getattr(interaction, "store_id", None), value=getattr(interaction, "value", None))


def wilson_interval(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for x successes out of n (no continuity correction)."""
    if n <= 0 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= x <= n and n > 0, got x={x}, n={n}")
    z2 = z * z
    centre = (x + z2 / 2) / (n + z2)
    half = z * math.sqrt(x * (n - x) / n + z2 / 4) / (n + z2)
    # Clamp the rounding dust at x = 0 or x = n.
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Interval for p1 - p2 by Newcombe (1998) method 10: the hybrid score interval built from
    each proportion's Wilson interval."""
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _ratio(n: int, d: int) -> float | None:
    return n / d if d else None


def _scope(store_id: str | None, offer_id: str | None) -> str:
    parts = [p for p, v in (("this store", store_id), ("this offer", offer_id)) if v is not None]
    return "in the period" + (" for " + " and ".join(parts) if parts else "")


@dataclass
class _Exposure:
    decision: Any
    treated: bool
    keys: set
    revenue: dict
    redeemed: bool = False
    purchased: bool = False
    first_ts: float | None = None  # earliest attributed event


def _keep_decisions(decisions, period, store_id, offer_id) -> list:
    start, end = period
    seen, kept = set(), []
    for d in decisions:
        if not start <= d.decided_at < end or d.decision_id in seen:
            continue
        if store_id is not None and d.store_id != store_id:
            continue
        if offer_id is not None and d.offer_id != offer_id:
            continue
        seen.add(d.decision_id)
        kept.append(d)
    return kept


def _unique_events(events: Iterable) -> list:
    seen, out = set(), []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def _matches(event, d, offer_items: Mapping[str, frozenset]) -> bool:
    if event.type == "offer_redeem":
        return event.offer_id == d.offer_id
    return event.type == "purchase" and event.item_id in offer_items.get(d.offer_id, frozenset())


def _attribute(exposures: list[_Exposure], events: list, offer_items, window_s: float) -> None:
    """Last touch: for each event, walk back from the customer's latest exposure before it and
    credit the first that matches. Exposures are sorted by (decided_at, decision_id), so the
    first match is the latest one, ties going to the greater decision_id."""
    by_customer: dict[str, list[_Exposure]] = defaultdict(list)
    for x in exposures:
        by_customer[x.decision.customer_id].append(x)
    decided_at: dict[str, list[float]] = {}
    for customer, xs in by_customer.items():
        xs.sort(key=lambda x: (x.decision.decided_at, x.decision.decision_id))
        decided_at[customer] = [x.decision.decided_at for x in xs]
    for e in events:
        xs = by_customer.get(e.customer_id)
        if xs is None or e.type not in CONVERSION_TYPES:
            continue
        i = bisect_left(decided_at[e.customer_id], e.ts) - 1  # exposures decided strictly before e
        while i >= 0:
            x = xs[i]
            d = x.decision
            if e.ts > d.decided_at + window_s:
                break  # every earlier exposure's window closed before e too
            if _matches(e, d, offer_items):
                _credit(x, e)
                break
            i -= 1


def _credit(x: _Exposure, e) -> None:
    keys = ["anywhere"]
    if e.channel == "store" and e.store_id == x.decision.store_id:
        keys.append("store")
    elif e.channel in ONLINE_CHANNELS:
        keys.append("online")
    x.keys.update(keys)
    if e.type == "purchase":
        x.purchased = True
        for k in keys:
            x.revenue[k] += e.value or 0.0
    else:
        x.redeemed = True
    x.first_ts = e.ts if x.first_ts is None else min(x.first_ts, e.ts)


def _deliveries(receipts: Iterable, kept_ids: set, sent_decisions: list) -> dict:
    seen = set()
    by_delivery: dict[str, list] = defaultdict(list)
    for r in receipts:
        if r.decision_id not in kept_ids or (r.delivery_id, r.status) in seen:
            continue
        seen.add((r.delivery_id, r.status))
        by_delivery[r.delivery_id].append(r)
    counts = dict.fromkeys(("sent", "opened") + UNSENT_FINAL_STATUSES, 0)
    suppressed_by_reason: dict[str, int] = defaultdict(int)
    settled_decisions = set()
    for rs in by_delivery.values():
        statuses = {r.status for r in rs}
        if statuses & SENT_STATUSES:
            counts["sent"] += 1
            counts["opened"] += "opened" in statuses
            settled_decisions.add(rs[0].decision_id)
            continue
        finals = [r for r in rs if r.status in UNSENT_FINAL_STATUSES]
        if not finals:
            continue  # queued only: the decision is pending
        # max() keeps the first of equal ts; reversed so that a tie goes to the later receipt.
        final = max(reversed(finals), key=lambda r: r.ts)
        counts[final.status] += 1
        if final.status == "suppressed":
            suppressed_by_reason[final.reason or "unknown"] += 1
        settled_decisions.add(rs[0].decision_id)
    return {"total": len(by_delivery), "sent": counts["sent"], "opened": counts["opened"],
            "open_rate": _ratio(counts["opened"], counts["sent"]),
            **{s: counts[s] for s in UNSENT_FINAL_STATUSES},
            "suppressed_by_reason": dict(sorted(suppressed_by_reason.items())),
            "pending": sum(1 for d in sent_decisions if d.decision_id not in settled_decisions)}


def _group(exposures: list[_Exposure], purchase_ts: Mapping[str, list[float]], window_s: float) -> tuple[dict, dict]:
    """Per-customer conversion and repurchase of one group's exposures."""
    first: dict[str, float | None] = {}
    for x in exposures:
        c = x.decision.customer_id
        prev = first.get(c)
        first[c] = x.first_ts if prev is None else (prev if x.first_ts is None else min(prev, x.first_ts))
    converted = {c: ts for c, ts in first.items() if ts is not None}
    repurchased = 0
    for c, ts in converted.items():
        times = purchase_ts.get(c, [])
        repurchased += bisect_right(times, ts + window_s) > bisect_right(times, ts)
    group = {"customers": len(first), "converted": len(converted), "rate": _ratio(len(converted), len(first))}
    repurchase = {"customers": len(converted), "repurchased": repurchased,
                  "rate": _ratio(repurchased, len(converted))}
    return group, repurchase


def _uplift(treated: dict, holdout: dict, scope: str) -> dict:
    p_t, p_h = treated["rate"], holdout["rate"]
    difference = ci95 = relative = note = None
    if p_t is None and p_h is None:
        note = f"no treated and no holdout customers {scope}"
    elif p_t is None:
        note = f"no treated customers {scope}"
    elif p_h is None:
        note = f"no holdout customers {scope}"
    else:
        difference = p_t - p_h
        ci95 = list(newcombe_interval(treated["converted"], treated["customers"],
                                      holdout["converted"], holdout["customers"]))
        if p_h > 0:
            relative = difference / p_h
        else:
            note = "no holdout customer converted, so the relative uplift is undefined"
    return {"treated": treated, "holdout": holdout, "difference": difference, "ci95": ci95,
            "relative": relative, "method": "newcombe_hybrid_score", "note": note}


def compute_kpis(decisions: Iterable, receipts: Iterable, events: Iterable, *,
                 offer_items: Mapping[str, Collection[str]], period: tuple[float, float], window_s: float,
                 store_id: str | None = None, offer_id: str | None = None) -> dict:
    """The KPI report of `period` (see the module docstring), as plain JSON-ready values."""
    if period[0] > period[1]:
        raise ValueError(f"the period ends before it starts: {period}")
    if window_s < 0:
        raise ValueError(f"the attribution window cannot be negative: {window_s}")
    items = {offer: frozenset(its) for offer, its in offer_items.items()}
    kept = _keep_decisions(decisions, period, store_id, offer_id)
    unique_events = _unique_events(events)

    exposures = [_Exposure(d, d.outcome == "send", set(), dict.fromkeys(KEYS, 0.0)) for d in kept
                 if d.offer_id is not None and (d.outcome == "send" or d.reason == "holdout")]
    _attribute(exposures, unique_events, items, window_s)
    treated = [x for x in exposures if x.treated]
    held = [x for x in exposures if not x.treated]
    sent_decisions = [d for d in kept if d.outcome == "send"]
    n_sent = len(sent_decisions)

    by_reason = dict.fromkeys(REASONS, 0)
    for d in kept:
        if d.outcome != "send":
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
    deliveries = _deliveries(receipts, {d.decision_id for d in kept}, sent_decisions)

    conversions = {}
    for k in KEYS:
        n = sum(1 for x in treated if k in x.keys)
        conversions[k] = {"conversions": n, "rate": _ratio(n, n_sent),
                          "revenue": sum((x.revenue[k] for x in treated), 0.0)}

    purchase_ts: dict[str, list[float]] = defaultdict(list)
    for e in unique_events:
        if e.type == "purchase":
            purchase_ts[e.customer_id].append(e.ts)
    for times in purchase_ts.values():
        times.sort()
    treated_group, treated_repurchase = _group(treated, purchase_ts, window_s)
    holdout_group, holdout_repurchase = _group(held, purchase_ts, window_s)
    scope = _scope(store_id, offer_id)

    stores: dict[str, dict] = {}
    for d in kept:
        s = stores.setdefault(d.store_id, {"store_id": d.store_id, "decisions": 0, "sent": 0,
                                           "conversions": dict.fromkeys(KEYS, 0), "revenue": 0.0})
        s["decisions"] += 1
        s["sent"] += d.outcome == "send"
    for x in treated:
        s = stores[x.decision.store_id]
        for k in x.keys:
            s["conversions"][k] += 1
        s["revenue"] += x.revenue["anywhere"]

    return {
        "period": {"from": float(period[0]), "to": float(period[1])},
        "filters": {"store_id": store_id, "offer_id": offer_id},
        "attribution_window_s": float(window_s),
        "empty": not kept,
        "empty_reason": None if kept else f"no decisions {scope}",
        "decisions": {"total": len(kept), "sent": n_sent, "suppressed": len(kept) - n_sent,
                      "suppressed_by_reason": by_reason},
        "deliveries": deliveries,
        "conversions": conversions,
        "funnel": {"sent": deliveries["sent"], "opened": deliveries["opened"],
                   "redeemed": sum(1 for x in treated if x.redeemed),
                   "purchased": sum(1 for x in treated if x.purchased)},
        "uplift": _uplift(treated_group, holdout_group, scope),
        "repurchase": {"treated": treated_repurchase, "holdout": holdout_repurchase},
        "by_store": [stores[s] for s in sorted(stores)],
    }
