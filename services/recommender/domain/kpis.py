"""The marketing KPIs of a period: a pure function of the decisions, the push gateway's delivery
receipts and the customers' interactions (purchases, redemptions, surveys, support contacts and
replies, and who was active at all). No I/O: the caller reads the streams and may over-read;
`compute_kpis` keeps what belongs to the report itself.

What is kept
- Decisions with `period[0] <= decided_at < period[1]`, at `store_id` and for `offer_id` when
  those filters are given (duplicates by decision_id count once).
- With `campaign_id` = C, only C's decisions: those whose `campaigns` list has C as `sent` or
  `held_out`. Seen from C, a decision is *sent* when `campaign_id == C` and its outcome is `send`,
  and *held out* when C's entry is `held_out` (suppressed, reason `holdout`); its offer is C's
  (the `offer_id` filter looks at that one). Decisions without a campaign (older ones, or visits
  no campaign sent to or held out) are in no campaign's figures.
- Receipts of kept sent decisions, one per (delivery_id, status). Events, one per event_id.
Attribution looks only at kept decisions, so a store's report never depends on how much the
caller over-read.

Definitions (every number can be derived by hand from these)
- Exposure: a kept decision with an offer that was sent (outcome `send`: treated) or held back
  (reason `holdout`: the holdout group's would-be push). Per campaign C: treated = sent by C,
  holdout = held out by C. A customer C held out may still have got a lower-priority campaign's
  push on that visit: C's uplift measures C against what the customer would otherwise have got,
  not against no push at all.
- Match: event e matches exposure x when e.customer_id == x's customer,
  x.decided_at < e.ts <= x.decided_at + window_s, and either e is an `offer_redeem` of x's offer
  or a `purchase` of an item in `offer_items[x's offer]`. No other type ever matches.
- Last touch: an event is attributed to at most one exposure, the matching one with the latest
  decided_at (ties: the greater decision_id).
- Attribution keys of an attributed event: `store` when bought in a store and that store is the
  one whose visit triggered the decision; `online` when on web or app; `anywhere` always.
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
- by_campaign (sorted by campaign_id): for each campaign with a decision kept by the store and
  offer filters (only C itself under `campaign_id` = C), the figures of C's own report: decisions,
  sent, held_out, conversions per key, anywhere revenue, and its uplift (groups, difference,
  ci95). Each campaign attributes among its own exposures, so campaigns do not add up to the total.
- retention: a customer is *active* in a span when they have any interaction (any type, any
  channel) in it, or a decided store visit (a decision, any store, any filter: a visit is
  presence). Of the customers active in the period, `retained` are those active again in the
  next period of the same length, [to, to + (to - from)). Split like the uplift: treated
  customers (a sent exposure in the period) and holdout customers (a holdout exposure), every
  one of them active in the period through their visit; difference and 95% interval as the
  uplift's. Unknown (null) until the next period has ended at `now`.
- upselling: a *basket* is the purchases of one customer on one channel within the same whole
  second of ts (the interaction contract has no basket id; a till or a web checkout sends a
  basket's lines with one time); its ts is its earliest line's, its value the sum of its lines'
  `value` (None counts 0), its items the sum of their `quantity` (None counts 1). A group's
  baskets are those of its customers with ts in (x.decided_at, x.decided_at + window_s] of one
  of the customer's exposures in the group (any item: the whole basket, attributed or not; a
  basket counts once per group). Per group: baskets (n), customers, value_per_basket and
  items_per_basket (means); difference = treated - holdout, for each mean.
- nps: over the latest `survey` of each customer with ts in the period (ties: the greater
  event_id): n, promoters (score 9-10), passives (7-8), detractors (0-6), and
  nps = 100 * (promoters - detractors) / n, in points from -100 to 100. by_channel: the same
  over the latest survey of each customer on that channel.
- responsiveness: over the `support_contact`s with ts in the period; a contact's answer is the
  earliest `support_reply` of the same customer whose reply_to is the contact's event_id (a
  reply timestamped before its contact, clocks apart, counts as at once). contacts, answered,
  unanswered (no reply among the events given), within_24h (answered at most 24 h after),
  share_within_24h = within_24h / contacts, median_s (the median; of an even count the mean of the
  two middle ones) and p90_s (nearest rank: the ceil(0.9 n)-th smallest) of the answered
  contacts' times to answer, in seconds; by_channel: the same per the contact's channel.
  nps and responsiveness are about the customers' care, not the pushes: the store, offer and
  campaign filters do not apply to them.
A figure that cannot be computed (a rate over nothing) is None, never an error. With no kept
decisions every count is 0 and the report says so in `empty` and `empty_reason`. retention,
upselling, nps and responsiveness are None when the period has no such data, and `unavailable`
then says why (figure -> reason), never zeros.
"""
from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vicino.services.kernel.contracts.decisions import REASONS

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
KEYS = ("store", "online", "anywhere")
CONVERSION_TYPES = frozenset({"purchase", "offer_redeem"})
CARE_TYPES = frozenset({"survey", "support_contact", "support_reply"})
ONLINE_CHANNELS = frozenset({"web", "app"})
# A delivery that reached one of these was settled by the gateway; one that did not is pending.
SENT_STATUSES = frozenset({"sent", "opened"})
UNSENT_FINAL_STATUSES = ("failed", "expired", "token_invalid", "suppressed")
ANSWER_IN_S = 24 * 3600.0
PROMOTER, DETRACTOR = 9, 6   # promoters score 9-10, detractors 0-6


@dataclass(frozen=True)
class ConversionEvent:
    """The part of an interaction the KPIs read (purchases, redemptions, surveys, support)."""

    event_id: str
    customer_id: str
    type: str
    channel: str
    ts: float
    item_id: str | None = None
    offer_id: str | None = None
    store_id: str | None = None
    value: float | None = None
    quantity: float | None = None
    score: int | None = None
    reply_to: str | None = None

    @classmethod
    def from_interaction(cls, interaction: Any) -> "ConversionEvent":
        """From an `InteractionV1`, or anything with the same attributes."""
        return cls(event_id=interaction.event_id, customer_id=interaction.customer_id, type=interaction.type,
                   channel=interaction.channel, ts=float(interaction.ts),
                   item_id=getattr(interaction, "item_id", None), offer_id=getattr(interaction, "offer_id", None),
                   store_id=getattr(interaction, "store_id", None), value=getattr(interaction, "value", None),
                   quantity=getattr(interaction, "quantity", None), score=getattr(interaction, "score", None),
                   reply_to=getattr(interaction, "reply_to", None))


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


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scope(store_id: str | None, offer_id: str | None, campaign_id: str | None = None) -> str:
    parts = [p for p, v in (("this store", store_id), ("this offer", offer_id), ("this campaign", campaign_id))
             if v is not None]
    return "in the period" + (" for " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class _Seen:
    """A kept decision as the report sees it: the whole decision, or one campaign's part of it."""
    decision: Any
    sent: bool
    held_out: bool
    offer_id: str | None
    reason: str | None   # why it was not sent (None when sent)


@dataclass
class _Exposure:
    decision: Any
    treated: bool
    offer_id: str
    keys: set = field(default_factory=set)
    revenue: dict = field(default_factory=lambda: dict.fromkeys(KEYS, 0.0))
    redeemed: bool = False
    purchased: bool = False
    first_ts: float | None = None  # earliest attributed event


def _as_seen(d, campaign_id: str | None) -> _Seen | None:
    """The decision seen as a whole, or from campaign `campaign_id` (None: not that campaign's)."""
    if campaign_id is None:
        sent = d.outcome == "send"
        return _Seen(d, sent, d.reason == "holdout" and d.offer_id is not None, d.offer_id, d.reason)
    own = next((c for c in d.campaigns if c.campaign_id == campaign_id and c.outcome in ("sent", "held_out")), None)
    if own is None:
        return None
    if d.campaign_id == campaign_id and d.outcome == "send":
        return _Seen(d, True, False, d.offer_id, None)
    if own.outcome == "held_out":
        return _Seen(d, False, True, own.offer_id, "holdout")
    return _Seen(d, False, False, own.offer_id, d.reason)  # C sent, but the push was not made after all


def _in_period(decisions: Iterable, period) -> list:
    start, end = period
    seen, kept = set(), []
    for d in decisions:
        if start <= d.decided_at < end and d.decision_id not in seen:
            seen.add(d.decision_id)
            kept.append(d)
    return kept


def _keep(decisions: list, store_id, offer_id, campaign_id) -> list[_Seen]:
    kept = []
    for d in decisions:
        if store_id is not None and d.store_id != store_id:
            continue
        v = _as_seen(d, campaign_id)
        if v is None or (offer_id is not None and v.offer_id != offer_id):
            continue
        kept.append(v)
    return kept


def _unique_events(events: Iterable) -> list:
    seen, out = set(), []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def _matches(event, x: _Exposure, offer_items: Mapping[str, frozenset]) -> bool:
    if event.type == "offer_redeem":
        return event.offer_id == x.offer_id
    return event.type == "purchase" and event.item_id in offer_items.get(x.offer_id, frozenset())


def _exposures(seen: list[_Seen]) -> list[_Exposure]:
    return [_Exposure(v.decision, v.sent, v.offer_id) for v in seen if v.offer_id is not None and (v.sent or v.held_out)]


def _attribute(exposures: list[_Exposure], conversions: Mapping[str, list], offer_items, window_s: float) -> None:
    """Last touch: for each event, walk back from the customer's latest exposure before it and
    credit the first that matches. Exposures are sorted by (decided_at, decision_id), so the
    first match is the latest one, ties going to the greater decision_id. `conversions`: each
    customer's purchases and redemptions."""
    by_customer: dict[str, list[_Exposure]] = defaultdict(list)
    for x in exposures:
        by_customer[x.decision.customer_id].append(x)
    for customer, xs in by_customer.items():
        xs.sort(key=lambda x: (x.decision.decided_at, x.decision.decision_id))
        decided_at = [x.decision.decided_at for x in xs]
        for e in conversions.get(customer, ()):
            i = bisect_left(decided_at, e.ts) - 1  # exposures decided strictly before e
            while i >= 0:
                x = xs[i]
                if e.ts > x.decision.decided_at + window_s:
                    break  # every earlier exposure's window closed before e too
                if _matches(e, x, offer_items):
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


def _deliveries(receipts: Iterable, sent_decisions: list) -> dict:
    sent_ids = {d.decision_id for d in sent_decisions}
    seen = set()
    by_delivery: dict[str, list] = defaultdict(list)
    for r in receipts:
        if r.decision_id not in sent_ids or (r.delivery_id, r.status) in seen:
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


def _difference(treated: dict, holdout: dict, hits: str, scope: str) -> tuple[float | None, list | None, str | None]:
    """p_treated - p_holdout of two groups {customers, <hits>, rate} and its Newcombe interval."""
    if treated["rate"] is None and holdout["rate"] is None:
        return None, None, f"no treated and no holdout customers {scope}"
    if treated["rate"] is None:
        return None, None, f"no treated customers {scope}"
    if holdout["rate"] is None:
        return None, None, f"no holdout customers {scope}"
    return (treated["rate"] - holdout["rate"],
            list(newcombe_interval(treated[hits], treated["customers"], holdout[hits], holdout["customers"])), None)


def _uplift(treated: dict, holdout: dict, scope: str) -> dict:
    difference, ci95, note = _difference(treated, holdout, "converted", scope)
    relative = None
    if difference is not None:
        if holdout["rate"] > 0:
            relative = difference / holdout["rate"]
        else:
            note = "no holdout customer converted, so the relative uplift is undefined"
    return {"treated": treated, "holdout": holdout, "difference": difference, "ci95": ci95,
            "relative": relative, "method": "newcombe_hybrid_score", "note": note}


def _conversions(treated: list[_Exposure], n_sent: int) -> dict:
    out = {}
    for k in KEYS:
        n = sum(1 for x in treated if k in x.keys)
        out[k] = {"conversions": n, "rate": _ratio(n, n_sent), "revenue": sum((x.revenue[k] for x in treated), 0.0)}
    return out


def _by_campaign(in_period: list, store_id, offer_id, campaign_id, conversions, purchase_ts, items,
                 window_s: float) -> list[dict]:
    ids = {c.campaign_id for d in in_period for c in d.campaigns if c.outcome in ("sent", "held_out")}
    if campaign_id is not None:
        ids &= {campaign_id}
    out = []
    for cid in sorted(ids):
        seen = _keep(in_period, store_id, offer_id, cid)
        if not seen:
            continue
        exposures = _exposures(seen)
        _attribute(exposures, conversions, items, window_s)
        treated = [x for x in exposures if x.treated]
        treated_group, _ = _group(treated, purchase_ts, window_s)
        holdout_group, _ = _group([x for x in exposures if not x.treated], purchase_ts, window_s)
        difference, ci95, note = _difference(treated_group, holdout_group, "converted", "for this campaign")
        n_sent = sum(v.sent for v in seen)
        conv = _conversions(treated, n_sent)
        out.append({"campaign_id": cid, "decisions": len(seen), "sent": n_sent,
                    "held_out": sum(v.held_out for v in seen),
                    "conversions": {k: conv[k]["conversions"] for k in KEYS}, "revenue": conv["anywhere"]["revenue"],
                    "uplift": {"treated": treated_group, "holdout": holdout_group, "difference": difference,
                               "ci95": ci95, "note": note}})
    return out


def _retention(decisions: list, period, activity, now: float | None, treated: set, holdout: set,
               scope: str) -> tuple[dict | None, str | None]:
    start, end = period
    after = end + (end - start)
    if now is not None and now < after:
        return None, (f"the next period (as long as this one) ends at {_instant(after)}, after now: retention is "
                      "known once it has ended")
    if activity is None:
        return None, "no activity was read for this report"
    active = set(activity[0]) | {d.customer_id for d in decisions if start <= d.decided_at < end}
    again = set(activity[1]) | {d.customer_id for d in decisions if end <= d.decided_at < after}
    if not active:
        return None, "no customer was active in the period"

    def group(customers: set) -> dict:
        retained = len(customers & again)
        return {"customers": len(customers), "retained": retained, "rate": _ratio(retained, len(customers))}

    t, h = group(treated), group(holdout)
    difference, ci95, note = _difference(t, h, "retained", scope)
    return {"active": group(active), "treated": t, "holdout": h, "difference": difference, "ci95": ci95,
            "method": "newcombe_hybrid_score", "note": note}, None


def _baskets(purchases: Iterable) -> dict[str, list[tuple[float, float, float]]]:
    """customer -> baskets (ts, value, items), sorted by ts."""
    lines: dict[tuple, list] = defaultdict(list)
    for e in purchases:
        lines[(e.customer_id, e.channel, math.floor(e.ts))].append(e)
    out: dict[str, list] = defaultdict(list)
    for (customer, _, _), es in lines.items():
        out[customer].append((min(e.ts for e in es), sum(e.value or 0.0 for e in es),
                              sum(1.0 if e.quantity is None else e.quantity for e in es)))
    for bs in out.values():
        bs.sort()
    return out


def _upselling(exposures: list[_Exposure], baskets: Mapping[str, list], window_s: float,
               scope: str) -> tuple[dict | None, str | None]:
    groups = {}
    for name, treated in (("treated", True), ("holdout", False)):
        picked: dict[str, set] = defaultdict(set)  # customer -> indices of their baskets
        for x in exposures:
            if x.treated != treated:
                continue
            bs = baskets.get(x.decision.customer_id, [])
            times = [b[0] for b in bs]
            lo, hi = bisect_right(times, x.decision.decided_at), bisect_right(times, x.decision.decided_at + window_s)
            picked[x.decision.customer_id].update(range(lo, hi))
        chosen = [baskets[c][i] for c, idx in picked.items() for i in sorted(idx)]
        n = len(chosen)
        groups[name] = {"baskets": n, "customers": sum(1 for idx in picked.values() if idx),
                        "value_per_basket": sum(b[1] for b in chosen) / n if n else None,
                        "items_per_basket": sum(b[2] for b in chosen) / n if n else None}
    t, h = groups["treated"], groups["holdout"]
    if not t["baskets"] and not h["baskets"]:
        return None, f"no purchase within the attribution window of any exposure {scope}"
    both = t["baskets"] and h["baskets"]
    note = None if both else f"no {'holdout' if t['baskets'] else 'treated'} basket {scope}"
    return {**groups, "difference": {k: t[k] - h[k] if both else None for k in ("value_per_basket", "items_per_basket")},
            "note": note}, None


def _nps_of(scores: list[int]) -> dict:
    n = len(scores)
    promoters = sum(s >= PROMOTER for s in scores)
    detractors = sum(s <= DETRACTOR for s in scores)
    return {"n": n, "promoters": promoters, "passives": n - promoters - detractors, "detractors": detractors,
            "nps": 100.0 * (promoters - detractors) / n}


def _nps(surveys: list) -> tuple[dict | None, str | None]:
    if not surveys:
        return None, "no survey in the period"
    latest: dict[str, Any] = {}
    by_channel: dict[str, dict[str, Any]] = defaultdict(dict)

    def newer(e, prev) -> bool:
        return prev is None or (e.ts, e.event_id) > (prev.ts, prev.event_id)

    for e in surveys:
        if newer(e, latest.get(e.customer_id)):
            latest[e.customer_id] = e
        if newer(e, by_channel[e.channel].get(e.customer_id)):
            by_channel[e.channel][e.customer_id] = e
    return {**_nps_of([e.score for e in latest.values()]),
            "by_channel": {ch: _nps_of([e.score for e in by_channel[ch].values()]) for ch in sorted(by_channel)}}, None


def _answer_times(contacts: list, delays: dict) -> dict:
    answered = sorted(delays[c.event_id, c.customer_id] for c in contacts if (c.event_id, c.customer_id) in delays)
    n, within = len(contacts), sum(1 for t in answered if t <= ANSWER_IN_S)
    return {"contacts": n, "answered": len(answered), "unanswered": n - len(answered), "within_24h": within,
            "share_within_24h": _ratio(within, n),
            "median_s": statistics.median(answered) if answered else None,
            "p90_s": answered[math.ceil(0.9 * len(answered)) - 1] if answered else None}


def _responsiveness(contacts: list, replies: list) -> tuple[dict | None, str | None]:
    if not contacts:
        return None, "no support contact in the period"
    first_reply: dict[tuple[str, str], float] = {}
    for r in replies:
        key = (r.reply_to, r.customer_id)
        first_reply[key] = min(r.ts, first_reply.get(key, math.inf))
    delays = {(c.event_id, c.customer_id): max(0.0, first_reply[c.event_id, c.customer_id] - c.ts)
              for c in contacts if (c.event_id, c.customer_id) in first_reply}
    channels = sorted({c.channel for c in contacts})
    return {**_answer_times(contacts, delays),
            "by_channel": {ch: _answer_times([c for c in contacts if c.channel == ch], delays) for ch in channels}}, None


def compute_kpis(decisions: Iterable, receipts: Iterable, events: Iterable, *,
                 offer_items: Mapping[str, Collection[str]], period: tuple[float, float], window_s: float,
                 store_id: str | None = None, offer_id: str | None = None, campaign_id: str | None = None,
                 activity: tuple[Collection[str], Collection[str]] | None = None, now: float | None = None) -> dict:
    """The KPI report of `period` (see the module docstring), as plain JSON-ready values.

    `activity`: the customers with any interaction in the period and those with one in the next
    period of the same length (None: not read, and retention says so); `decisions` may then
    include the next period's, whose visits count as activity too. `now`: when the report is
    made (retention waits for the next period to end)."""
    if period[0] > period[1]:
        raise ValueError(f"the period ends before it starts: {period}")
    if window_s < 0:
        raise ValueError(f"the attribution window cannot be negative: {window_s}")
    if activity is not None and now is None:
        raise ValueError("retention needs `now` with `activity`: has the next period ended?")
    items = {offer: frozenset(its) for offer, its in offer_items.items()}
    read = list(decisions)
    in_period = _in_period(read, period)
    kept = _keep(in_period, store_id, offer_id, campaign_id)
    unique_events = _unique_events(events)
    conversions: dict[str, list] = defaultdict(list)
    purchase_ts: dict[str, list[float]] = defaultdict(list)
    for e in unique_events:
        if e.type in CONVERSION_TYPES:
            conversions[e.customer_id].append(e)
        if e.type == "purchase":
            purchase_ts[e.customer_id].append(e.ts)
    for es in conversions.values():
        es.sort(key=lambda e: (e.ts, e.event_id))  # the same sums whatever the input order
    for times in purchase_ts.values():
        times.sort()

    exposures = _exposures(kept)
    _attribute(exposures, conversions, items, window_s)
    treated = [x for x in exposures if x.treated]
    held = [x for x in exposures if not x.treated]
    sent_decisions = [v.decision for v in kept if v.sent]
    n_sent = len(sent_decisions)

    by_reason = dict.fromkeys(REASONS, 0)
    for v in kept:
        if not v.sent:
            by_reason[v.reason] = by_reason.get(v.reason, 0) + 1
    deliveries = _deliveries(receipts, sent_decisions)

    treated_group, treated_repurchase = _group(treated, purchase_ts, window_s)
    holdout_group, holdout_repurchase = _group(held, purchase_ts, window_s)
    scope = _scope(store_id, offer_id, campaign_id)

    stores: dict[str, dict] = {}
    for v in kept:
        s = stores.setdefault(v.decision.store_id, {"store_id": v.decision.store_id, "decisions": 0, "sent": 0,
                                                    "conversions": dict.fromkeys(KEYS, 0), "revenue": 0.0})
        s["decisions"] += 1
        s["sent"] += v.sent
    for x in treated:
        s = stores[x.decision.store_id]
        for k in x.keys:
            s["conversions"][k] += 1
        s["revenue"] += x.revenue["anywhere"]

    start, end = period
    unavailable: dict[str, str] = {}
    retention, unavailable["retention"] = _retention(
        read, period, activity, now, {x.decision.customer_id for x in treated},
        {x.decision.customer_id for x in held}, scope)
    upselling, unavailable["upselling"] = _upselling(
        exposures, _baskets(e for e in unique_events if e.type == "purchase"), window_s, scope)
    nps, unavailable["nps"] = _nps([e for e in unique_events if e.type == "survey" and e.score is not None
                                    and start <= e.ts < end])
    responsiveness, unavailable["responsiveness"] = _responsiveness(
        [e for e in unique_events if e.type == "support_contact" and start <= e.ts < end],
        [e for e in unique_events if e.type == "support_reply" and e.reply_to is not None])

    return {
        "period": {"from": float(start), "to": float(end)},
        "filters": {"store_id": store_id, "offer_id": offer_id, "campaign_id": campaign_id},
        "attribution_window_s": float(window_s),
        "empty": not kept,
        "empty_reason": None if kept else f"no decisions {scope}",
        "decisions": {"total": len(kept), "sent": n_sent, "suppressed": len(kept) - n_sent,
                      "suppressed_by_reason": by_reason},
        "deliveries": deliveries,
        "conversions": _conversions(treated, n_sent),
        "funnel": {"sent": deliveries["sent"], "opened": deliveries["opened"],
                   "redeemed": sum(1 for x in treated if x.redeemed),
                   "purchased": sum(1 for x in treated if x.purchased)},
        "uplift": _uplift(treated_group, holdout_group, scope),
        "repurchase": {"treated": treated_repurchase, "holdout": holdout_repurchase},
        "by_store": [stores[s] for s in sorted(stores)],
        "by_campaign": _by_campaign(in_period, store_id, offer_id, campaign_id, conversions, purchase_ts, items,
                                    window_s),
        "retention": retention,
        "upselling": upselling,
        "nps": nps,
        "responsiveness": responsiveness,
        "unavailable": {k: why for k, why in unavailable.items() if why is not None},
    }
