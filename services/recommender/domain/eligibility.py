"""May this offer be shown here, now, on this channel? Pure functions of the offer, the store,
its stock, the campaign rules, the channel and the time; the first failing check names why not.

The checks are a tuple of small functions run in order, so a caller can extend the chain (the
ranking adds per-customer reasons such as consent or an offer already redeemed) with
`first_failure(offer, situation, STORE_CHECKS + its_own)`. Order matters only for which reason
is reported when several apply: the offer's own terms first, then the campaign switches.

Reasons:
- `not_started`, `expired`: outside [valid_from, valid_to).
- `channel`: the offer is not shown on this channel.
- `store_scope`: the offer lists its stores and this is not one of them.
- `brand`: the offer lists store brands and this store's is not one of them.
- `min_stock`: the store holds fewer than the offer's `min_stock` units of one of its items.
- `paused_store`, `paused_brand`: marketing paused every offer at this store or brand.
- `store_closed`: the store is closed now (opening_hours, in the store's time zone) and the
  rule that suppresses offers at closed stores is on.
- `low_stock`: a click_and_collect or reservation offer, one of whose items the store holds
  fewer than the low-stock threshold of, while that rule is on.

Without a store (an offer judged for a channel, not a place: an e-mail, the web shop) only the
time and channel checks apply.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opening_hours import OpeningHours

from .campaign_rules import CampaignRules
from .offers import Offer, ranking_key

REASONS = ("not_started", "expired", "channel", "store_scope", "brand", "min_stock", "paused_store",
           "paused_brand", "store_closed", "low_stock")
# Fulfilment that needs the goods set aside at the store: pointless when nearly sold out.
STOCK_BOUND_FULFILMENT = frozenset({"click_and_collect", "reservation"})


@lru_cache(maxsize=4096)
def _hours(expression: str) -> OpeningHours:
    """Stores share a handful of opening_hours strings; parse each once."""
    return OpeningHours(expression)


@dataclass(frozen=True, slots=True)
class StoreView:
    """What eligibility needs to know of a store (the geo service's published properties)."""

    store_id: str
    brand: str = ""
    opening_hours: str | None = None
    timezone: str = "Europe/Rome"

    @classmethod
    def from_feature(cls, feature: Mapping) -> StoreView:
        props = feature.get("properties") or {}
        return cls(store_id=str(feature["id"]), brand=props.get("brand") or "",
                   opening_hours=props.get("opening_hours") or None, timezone=props.get("timezone") or "Europe/Rome")

    def is_open(self, ts: float) -> bool:
        """Open at `ts` by its opening_hours in its own time zone; no hours known: open.
        Geo validates both before publishing; a store that still fails to parse counts as open
        rather than hiding every offer there."""
        if not self.opening_hours:
            return True
        try:
            local = datetime.fromtimestamp(ts, ZoneInfo(self.timezone)).replace(tzinfo=None)
            return bool(_hours(self.opening_hours).is_open(local))
        except (ValueError, ZoneInfoNotFoundError, OverflowError, OSError):
            return True


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything but the offer: where (or None), the store's stock of the offer's items (an
    item missing counts as 0), the campaign rules, the channel and the instant."""

    store: StoreView | None
    stock: Mapping[str, int]
    rules: CampaignRules
    channel: str
    now: float

    def least_stock(self, offer: Offer) -> int:
        return min(self.stock.get(item, 0) for item in offer.item_ids)


Check = Callable[[Offer, Situation], str | None]


def _not_started(o: Offer, s: Situation) -> str | None:
    return "not_started" if s.now < o.valid_from else None


def _expired(o: Offer, s: Situation) -> str | None:
    return "expired" if s.now >= o.valid_to else None


def _channel(o: Offer, s: Situation) -> str | None:
    return None if o.on_channel(s.channel) else "channel"


def _store_scope(o: Offer, s: Situation) -> str | None:
    return "store_scope" if s.store is not None and not o.covers_store(s.store.store_id) else None


def _brand(o: Offer, s: Situation) -> str | None:
    return "brand" if s.store is not None and not o.covers_brand(s.store.brand) else None


def _min_stock(o: Offer, s: Situation) -> str | None:
    if s.store is None or o.min_stock is None:
        return None
    return "min_stock" if s.least_stock(o) < o.min_stock else None


def _paused_store(o: Offer, s: Situation) -> str | None:
    return "paused_store" if s.store is not None and s.rules.store_paused(s.store.store_id) else None


def _paused_brand(o: Offer, s: Situation) -> str | None:
    return "paused_brand" if s.store is not None and s.rules.brand_paused(s.store.brand) else None


def _store_closed(o: Offer, s: Situation) -> str | None:
    if s.store is None or not s.rules.suppress_closed_stores:
        return None
    return None if s.store.is_open(s.now) else "store_closed"


def _low_stock(o: Offer, s: Situation) -> str | None:
    if s.store is None or not s.rules.suppress_low_stock or o.fulfilment not in STOCK_BOUND_FULFILMENT:
        return None
    return "low_stock" if s.least_stock(o) < s.rules.low_stock_threshold else None


STORE_CHECKS: tuple[Check, ...] = (_not_started, _expired, _channel, _store_scope, _brand, _min_stock,
                                   _paused_store, _paused_brand, _store_closed, _low_stock)


def first_failure(offer: Offer, situation: Situation, checks: Iterable[Check] = STORE_CHECKS) -> str | None:
    for check in checks:
        reason = check(offer, situation)
        if reason is not None:
            return reason
    return None


def ineligibility(offer: Offer, store: StoreView | None, stock: Mapping[str, int], rules: CampaignRules,
                  channel: str, now: float) -> str | None:
    """None if the offer may be shown, else the reason code of the first check that fails."""
    return first_failure(offer, Situation(store, stock, rules, channel, now))


@dataclass(frozen=True, slots=True)
class Verdicts:
    eligible: list[Offer]                  # best first: ranking_key
    excluded: list[tuple[Offer, str]]      # by offer id, with the reason


def sort_out(offers: Iterable[Offer], situation: Situation, checks: Iterable[Check] = STORE_CHECKS) -> Verdicts:
    checks = tuple(checks)
    eligible: list[Offer] = []
    excluded: list[tuple[Offer, str]] = []
    for offer in offers:
        reason = first_failure(offer, situation, checks)
        if reason is None:
            eligible.append(offer)
        else:
            excluded.append((offer, reason))
    eligible.sort(key=ranking_key)
    excluded.sort(key=lambda pair: pair[0].offer_id)
    return Verdicts(eligible, excluded)
