"""Whether a store visit gets a push, and which offer: a pure function of the visit event, the
customer's consent, time zone and recent pushes, the clock, the rules and the ranking's best offer.

The checks run in a fixed order and the first that fails names the reason (cheapest and most
final first, so the use case can skip the ranking when a visit is suppressed before it):

- `visit_already_decided`: this visit already has its decision (one per visit, whatever came first).
- `visit_ended`: the customer has left (an exit was seen, or the device is no longer theirs), or
  the event is older than `max_event_age_s` (a backlog after an outage: the moment has passed).
- `no_marketing_consent`: marketing consent is off (or was never given).
- `quiet_hours`: the customer's local time is inside the quiet hours.
- `daily_cap`: the customer already had `cap_per_day` pushes in their local day.
- `store_cooldown`: they had a push for this store less than `store_cooldown_s` ago.
- `no_eligible_offer`: the ranking had nothing to offer here.
- `holdout`: everything says send, but the customer is in the holdout group: the decision is
  logged with the offer that would have been sent, and no push leaves.

With campaigns (`domain.campaigns`), `gate` is the global protection checked once per visit
(the settings' cap, cooldown and quiet hours); the holdout and the offer are each campaign's,
and `decide` remains the single-campaign policy of before (the default campaign's).

A holdout customer's would-be pushes count against their cap and cooldown as if sent, so that
the holdout's decisions stay comparable with the treated group's (same caps, same spacing).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Europe/Rome"
REASONS = ("visit_already_decided", "visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap",
           "store_cooldown", "no_eligible_offer", "holdout")
Reason = Literal["visit_already_decided", "visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap",
                 "store_cooldown", "no_eligible_offer", "holdout"]
Outcome = Literal["send", "suppress"]
# Namespaces the holdout hash, so that the group is independent of any other hash of the id.
_HOLDOUT_SALT = b"vicino.holdout.v1:"
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class QuietHours:
    """[start, end) in minutes after local midnight; start > end spans midnight."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, text: str) -> "QuietHours | None":
        """"21:00-09:00" → QuietHours; "" → None (no quiet hours). Raises ValueError otherwise."""
        text = text.strip()
        if not text:
            return None
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError(f"quiet hours {text!r}: expected HH:MM-HH:MM, e.g. 21:00-09:00")
        mins = []
        for p in parts:
            m = _HHMM.match(p.strip())
            if not m:
                raise ValueError(f"quiet hours {text!r}: {p.strip()!r} is not a 24-hour HH:MM time")
            mins.append(int(m[1]) * 60 + int(m[2]))
        if mins[0] == mins[1]:
            raise ValueError(f"quiet hours {text!r}: start and end are equal (leave it empty for none)")
        return cls(mins[0], mins[1])

    def contains(self, minute_of_day: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min


@dataclass(frozen=True)
class DecisionRules:
    cap_per_day: int = 3
    store_cooldown_s: float = 21_600.0
    quiet_hours: QuietHours | None = None
    holdout_percent: float = 10.0
    max_event_age_s: float = 900.0


@dataclass(frozen=True)
class OfferChoice:
    """The offer a push would carry (the ranking's best)."""

    offer_id: str
    score: float
    price: float | None
    currency: str | None
    title: str
    body: str
    reason: str  # why the ranking chose it: model, cold_start_features, popular_fallback
    regular_price: float | None = None   # before any promotion (a message's {regular_price})
    valid_to: float | None = None        # the offer's end (a message's {valid_to})


@dataclass(frozen=True)
class Situation:
    """What the policy needs to know about one visit event, read by the use case."""

    customer_id: str             # canonical
    event_ts: float              # the fix that caused the event
    now: float
    marketing_consent: bool
    timezone: str                # the device's IANA zone (default Europe/Rome)
    pushes_today: int            # pushes (and holdout would-be pushes) since local midnight
    last_push_at_store: float | None
    visit_decided: bool = False
    visit_ended: bool = False


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str | None           # None when sent: a Reason, or a campaign's (contracts.decisions.REASONS)
    offer: OfferChoice | None
    holdout: bool                # the customer is in the holdout group (whatever the outcome)

    @property
    def counts_as_push(self) -> bool:
        """Sent, or would have been (holdout): counts against the cap and the store cooldown."""
        return self.outcome == "send" or self.reason == "holdout"


@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo:
    """The zone by IANA name; the default for a missing or unknown one."""
    try:
        return ZoneInfo(name) if name else ZoneInfo(DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIMEZONE)


def local_day_start(now: float, timezone: str | None) -> float:
    """Epoch seconds of the last local midnight (the start of the customer's day)."""
    local = datetime.fromtimestamp(now, zone(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def local_minute_of_day(now: float, timezone: str | None) -> int:
    local = datetime.fromtimestamp(now, zone(timezone))
    return local.hour * 60 + local.minute


def holdout_bucket(customer_id: str) -> int:
    """0..9999, uniform and stable for an id."""
    return int.from_bytes(hashlib.sha256(_HOLDOUT_SALT + customer_id.encode()).digest()[:8], "big") % 10_000


def in_holdout(customer_id: str, percent: float) -> bool:
    return holdout_bucket(customer_id) < round(percent * 100)


def gate(s: Situation, rules: DecisionRules) -> Reason | None:
    """The reasons that suppress a visit whatever the offer (checked before ranking)."""
    if s.visit_decided:
        return "visit_already_decided"
    if s.visit_ended or s.now - s.event_ts > rules.max_event_age_s:
        return "visit_ended"
    if not s.marketing_consent:
        return "no_marketing_consent"
    if rules.quiet_hours is not None and rules.quiet_hours.contains(local_minute_of_day(s.now, s.timezone)):
        return "quiet_hours"
    if s.pushes_today >= rules.cap_per_day:
        return "daily_cap"
    if s.last_push_at_store is not None and s.now - s.last_push_at_store < rules.store_cooldown_s:
        return "store_cooldown"
    return None


def decide(s: Situation, rules: DecisionRules, offer: OfferChoice | None) -> Decision:
    holdout = in_holdout(s.customer_id, rules.holdout_percent)
    reason = gate(s, rules)
    if reason is not None:
        return Decision("suppress", reason, None, holdout)
    if offer is None:
        return Decision("suppress", "no_eligible_offer", None, holdout)
    if holdout:
        return Decision("suppress", "holdout", offer, holdout)
    return Decision("send", None, offer, holdout)
