"""Campaigns: what a marketer decides (when, where, to whom, which offers, how often, saying what)
and the pure rules that turn one visit into each campaign's outcome. No I/O.

A campaign is a document replaced whole (`PUT /v1/campaigns/{id}`, with its revision as ETag).
On a visit event, the campaigns whose trigger matches (event type and store scope; drafts and
ended ones never) are tried in `priority` order, highest first, ties by campaign id. Each is
checked in this order and the first failing check is its reason:

- `paused`: its status is paused (it is still listed, so "why no push?" has an answer).
- `outside_schedule`: now is before `starts_at` or at/after `ends_at`.
- `outside_hours`: `hours` (OpenStreetMap opening_hours) says closed now, in the store's time zone.
- `not_in_audience`: the customer does not pass the audience filters (below).
- `quiet_hours`: the campaign's own quiet hours, in the customer's time zone (the global ones
  were checked for the whole visit before any campaign).
- `cap_reached`: the customer's pushes from this campaign today, this week (last 7 local days)
  or in total reached its limit. Holdout would-be pushes count, as for the global cap.
- `cooldown`: this campaign pushed this customer at this store less than `store_cooldown_s` ago.
- `budget_spent`: the campaign's sends today (its time zone) or in total reached the budget.
- `no_eligible_offer`: nothing in its pool is eligible here (and new, in `discover` mode).
- then `held_out` (the customer is in this campaign's holdout: the next campaign is tried, and
  the would-be push counts against caps) or `sent`. Campaigns after the one that sent are
  `outranked`.

Audience filters (all given ones must pass; evaluated on `CustomerFacts`, built from the
customer's hot history — the most recent `history_hot_per_customer` interactions — and the
attributes a CRM import set):
- `countries`: the customer's country (the CRM's, else the latest interaction's) is one of them.
- `channels`: the customer used at least one of these channels.
- `min_purchases` / `max_purchases`: purchase count in the hot history, inclusive band.
- `purchased_within_days` / `not_purchased_within_days`: last purchase recency band.
- `bought_items` / `never_bought_items`, `bought_categories` / `never_bought_categories`:
  any-of / none-of, over the hot history's purchases (categories through the catalogue's items).
- `include_customer_ids` (only these, when given) and `exclude_customer_ids`.

The holdout is stable per customer and campaign: the hash is salted with the campaign id (or
the campaign's own `holdout_salt`), so each campaign holds out a different tenth.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opening_hours import OpeningHours
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints,
                      field_validator, model_validator)

from vicino.services.kernel.contracts.interactions import Channel
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import InstantIn

from . import messages
from .decision_policy import QuietHours, in_holdout, local_day_start, local_minute_of_day, zone

Status = Literal["draft", "active", "paused", "ended"]
EventType = Literal["enter", "dwell"]
Mode = Literal["replenish", "discover"]
# from -> the statuses a PUT may move it to (a PUT that keeps the status is an edit)
TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"draft", "active", "ended"}),
    "active": frozenset({"active", "paused", "ended"}),
    "paused": frozenset({"paused", "active", "ended"}),
    "ended": frozenset(),  # final: an ended campaign is kept for its KPIs and explanations, never edited
}
MAX_COOLDOWN_S = 30 * 86_400   # the per-campaign store pushes are kept this long
WEEK_S = 7 * 86_400
MAX_IDS = 10_000
DEFAULT_CAMPAIGN_ID = "default"
_LEGACY_SALT = "vicino.holdout.v1"  # the default campaign keeps the holdout group of before campaigns

ClientId = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


def _unique_sorted(values: list[str] | None) -> list[str] | None:
    return None if values is None else sorted(set(values))


def _one_or_many(v):
    return [v] if isinstance(v, str) else v


def _no_control(text: str) -> str:
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise ValueError("must not contain control characters")
    return text


Ids = Annotated[list[ClientId], Field(max_length=MAX_IDS), AfterValidator(_unique_sorted)]
Names = Annotated[list[Text], Field(max_length=1000), AfterValidator(_unique_sorted)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Strict):
    on: Annotated[list[EventType], BeforeValidator(_one_or_many), Field(min_length=1),
                  AfterValidator(_unique_sorted)] = Field(["dwell"], description="enter, dwell or both")
    store_ids: Ids | None = Field(None, description="only these stores")
    brands: Names | None = Field(None, description="only stores of these brands (case-insensitive)")

    def matches(self, event_type: str, store_id: str, brand: str) -> bool:
        if event_type not in self.on:
            return False
        if self.store_ids is not None and store_id not in self.store_set:
            return False
        return self.brands is None or brand.casefold() in self.brand_set

    # the lists as sets, built once per (immutable) campaign: a decision looks them up per visit
    @cached_property
    def store_set(self) -> frozenset[str]:
        return frozenset(self.store_ids or ())

    @cached_property
    def brand_set(self) -> frozenset[str]:
        return frozenset(b.casefold() for b in self.brands or ())


class Audience(_Strict):
    countries: Names | None = Field(None, description="the customer's country is one of these (case-insensitive)")
    channels: Annotated[list[Channel], AfterValidator(_unique_sorted)] | None = \
        Field(None, description="the customer used at least one of these channels")
    min_purchases: int | None = Field(None, ge=0, le=1_000_000)
    max_purchases: int | None = Field(None, ge=0, le=1_000_000)
    purchased_within_days: float | None = Field(None, gt=0, le=3650, description="last purchase at most this old")
    not_purchased_within_days: float | None = Field(None, gt=0, le=3650,
                                                    description="no purchase this recent (lapsed customers)")
    bought_items: Ids | None = None
    never_bought_items: Ids | None = None
    bought_categories: Names | None = None
    never_bought_categories: Names | None = None
    include_customer_ids: Ids | None = Field(None, description="only these customers")
    exclude_customer_ids: Ids | None = None

    @cached_property
    def include_set(self) -> frozenset[str]:
        return frozenset(self.include_customer_ids or ())

    @cached_property
    def exclude_set(self) -> frozenset[str]:
        return frozenset(self.exclude_customer_ids or ())

    @cached_property
    def country_set(self) -> frozenset[str]:
        return frozenset(c.casefold() for c in self.countries or ())

    @property
    def everyone(self) -> bool:
        """No filter given: nothing about the customer needs to be read."""
        return all(getattr(self, f) is None for f in type(self).model_fields)

    @model_validator(mode="after")
    def _bands(self) -> "Audience":
        if self.min_purchases is not None and self.max_purchases is not None and self.min_purchases > self.max_purchases:
            raise ValueError("min_purchases is above max_purchases: no customer could match")
        return self


class OfferPool(_Strict):
    offer_ids: Ids | None = Field(None, description="the pool; absent: every offer eligible at the store")
    mode: Mode = Field("replenish", description="replenish: the model's ranking; discover: only items the "
                       "customer has not bought in the last discover_days")
    discover_days: float = Field(90.0, gt=0, le=3650)

    @cached_property
    def offer_set(self) -> frozenset[str]:
        return frozenset(self.offer_ids or ())


class Limits(_Strict):
    per_customer_per_day: int | None = Field(None, ge=0, le=100, description="the customer's local day")
    per_customer_per_week: int | None = Field(None, ge=0, le=700, description="the last 7 local days")
    per_customer_total: int | None = Field(None, ge=0, le=100_000)
    store_cooldown_s: float = Field(0.0, ge=0, le=MAX_COOLDOWN_S, description="no second push of this campaign "
                                    "to the customer at the same store within this many seconds")
    sends_per_day: int | None = Field(None, ge=0, description="budget: pushes sent per day (campaign time zone)")
    sends_total: int | None = Field(None, ge=0, description="budget: pushes sent in total")
    quiet_hours: str | None = Field(None, description="HH:MM-HH:MM, customer's local time; on top of the global "
                                    "quiet hours")
    holdout_percent: float = Field(10.0, ge=0, le=100)
    holdout_salt: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = \
        Field(None, description="the holdout hash's salt; default the campaign id (a different group per campaign)")
    ttl_s: float = Field(900.0, ge=10, le=86_400, description="the push expires this long after the decision")

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        QuietHours.parse(v)  # ValueError says what is wrong
        return v.strip()


class Template(_Strict):
    title: Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(_no_control)]
    body: Annotated[str, StringConstraints(max_length=4000), AfterValidator(_no_control)] = ""

    @field_validator("title", "body")
    @classmethod
    def _template(cls, v: str) -> str:
        messages.check_template(v)
        return v


class Message(_Strict):
    templates: dict[str, Template] = Field(min_length=1, max_length=100,
                                           description="BCP 47 locale -> title and body templates")
    default_locale: str
    deep_link: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    image_url: Annotated[str, StringConstraints(pattern=r"^https://\S+$", max_length=2000)] | None = None

    @field_validator("templates")
    @classmethod
    def _locales(cls, v: dict[str, Template]) -> dict[str, Template]:
        out: dict[str, Template] = {}
        for tag, t in v.items():
            canonical = messages.canonical_locale(tag)
            if canonical in out:
                raise ValueError(f"locale {tag!r} appears twice (as {canonical!r})")
            out[canonical] = t
        return out

    @model_validator(mode="after")
    def _default_and_size(self) -> "Message":
        default = messages.canonical_locale(self.default_locale)
        if default not in self.templates:
            raise ValueError(f"default_locale {self.default_locale!r} has no template (have: "
                             f"{', '.join(sorted(self.templates))})")
        object.__setattr__(self, "default_locale", default)
        for tag, t in self.templates.items():
            size = messages.max_rendered_payload_bytes(t.title, t.body, self.deep_link, self.image_url)
            if size > messages.APNS_MAX_PAYLOAD:
                raise ValueError(f"the {tag} message can reach {size} bytes once its fields are filled in; APNs and "
                                 f"FCM accept {messages.APNS_MAX_PAYLOAD}: shorten the title or body")
        return self


class CampaignIn(_Strict):
    """What a PUT carries."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
                    AfterValidator(_no_control)]
    status: Status = "draft"
    starts_at: InstantIn | None = Field(None, description="not before (RFC 3339 or epoch s); absent: at once")
    ends_at: InstantIn | None = Field(None, description="not at or after; absent: until ended")
    hours: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)] | None = \
        Field(None, description="OpenStreetMap opening_hours: when in the week it may fire, store's time zone")
    timezone: str = Field("Europe/Rome", description="IANA zone of the campaign's budget days")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher is tried first")
    trigger: Trigger = Field(default_factory=Trigger)
    audience: Audience = Field(default_factory=Audience)
    offers: OfferPool = Field(default_factory=OfferPool)
    limits: Limits = Field(default_factory=Limits)
    message: Message | None = Field(None, description="absent: the offer's own title and body, verbatim")

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            OpeningHours(v)
        except Exception as e:  # the library raises its own error types
            raise ValueError(f"hours {v!r} is not OpenStreetMap opening_hours syntax: {e}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Rome)") from None
        return v

    @model_validator(mode="after")
    def _window(self) -> "CampaignIn":
        if self.starts_at is not None and self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


@dataclass(frozen=True)
class Campaign:
    """A stored campaign: its content, id and revision (the ETag)."""

    campaign_id: str
    revision: int
    spec: CampaignIn
    created_at: float
    updated_at: float

    @property
    def status(self) -> str:
        return self.spec.status

    def salt(self) -> str:
        return self.spec.limits.holdout_salt or self.campaign_id


def transition_error(current: str | None, wanted: str) -> str | None:
    """Why a PUT may not move a campaign from `current` (None: new) to `wanted`, or None."""
    if current is None:
        return None if wanted in ("draft", "active", "paused") else \
            "a new campaign starts as draft, active or paused, not ended"
    if wanted not in TRANSITIONS[current]:
        if current == "ended":
            return "the campaign has ended; an ended campaign is kept as it was (create a new one)"
        return f"a campaign cannot go from {current} to {wanted}"
    return None


def campaign_holdout(customer_id: str, c: Campaign) -> bool:
    if c.campaign_id == DEFAULT_CAMPAIGN_ID and c.spec.limits.holdout_salt == _LEGACY_SALT:
        return in_holdout(customer_id, c.spec.limits.holdout_percent)
    digest = hashlib.sha256(f"vicino.campaign-holdout.v1:{c.salt()}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(c.spec.limits.holdout_percent * 100)


def default_campaign(decide_on: Iterable[str], cap_per_day: int, store_cooldown_s: float, holdout_percent: float,
                     ttl_s: float) -> Campaign:
    """What runs when no campaign is defined at all: the settings of before campaigns. Every
    store, every customer, the model's best eligible offer with its own title and body, the
    global cap and cooldown, the holdout group of before (`VICINO_HOLDOUT_PERCENT`)."""
    spec = CampaignIn(name="default (from the VICINO_* settings)", status="active", trigger=Trigger(on=list(decide_on)),
                      limits=Limits(per_customer_per_day=cap_per_day, store_cooldown_s=min(store_cooldown_s,
                                                                                           MAX_COOLDOWN_S),
                                    holdout_percent=holdout_percent, holdout_salt=_LEGACY_SALT,
                                    ttl_s=max(10.0, min(ttl_s, 86_400.0))))
    return Campaign(DEFAULT_CAMPAIGN_ID, 0, spec, 0.0, 0.0)


# --- what a decision knows -------------------------------------------------------------------------

@dataclass(frozen=True)
class CustomerFacts:
    """What the audience filters look at, built by `facts_from_history`."""

    customer_id: str
    country: str | None
    channels: frozenset[str]
    purchases: int
    last_purchase_ts: float | None
    bought_at: Mapping[str, float]              # item_id -> latest purchase ts
    categories: frozenset[str]                  # casefolded categories of bought items


def facts_from_history(customer_id: str, history: Sequence[Mapping], attributes: Mapping[str, str],
                       item_categories: Mapping[str, str]) -> CustomerFacts:
    """`history`: the hot history, newest first; `attributes`: the CRM's (country, locale);
    `item_categories`: item_id -> category, from the catalogue."""
    country = attributes.get("country") or next((h.get("country") for h in history if h.get("country")), None)
    bought: dict[str, float] = {}
    purchases = 0
    last: float | None = None
    for h in history:
        if h.get("type") == "purchase":
            purchases += 1
            last = h["ts"] if last is None else max(last, h["ts"])
            item = h.get("item_id")
            if item and h["ts"] > bought.get(item, float("-inf")):
                bought[item] = h["ts"]
    cats = frozenset(c.casefold() for c in (item_categories.get(i) for i in bought) if c)
    return CustomerFacts(customer_id, country, frozenset(h["channel"] for h in history if h.get("channel")),
                         purchases, last, bought, cats)


def in_audience(a: Audience, f: CustomerFacts, now: float) -> bool:
    if a.include_customer_ids is not None and f.customer_id not in a.include_set:
        return False
    if a.exclude_customer_ids and f.customer_id in a.exclude_set:
        return False
    if a.countries is not None and (f.country is None or f.country.casefold() not in a.country_set):
        return False
    if a.channels is not None and not f.channels.intersection(a.channels):
        return False
    if a.min_purchases is not None and f.purchases < a.min_purchases:
        return False
    if a.max_purchases is not None and f.purchases > a.max_purchases:
        return False
    age_days = None if f.last_purchase_ts is None else (now - f.last_purchase_ts) / 86_400
    if a.purchased_within_days is not None and (age_days is None or age_days > a.purchased_within_days):
        return False
    if a.not_purchased_within_days is not None and age_days is not None and age_days <= a.not_purchased_within_days:
        return False
    if a.bought_items is not None and not any(i in f.bought_at for i in a.bought_items):
        return False
    if a.never_bought_items and any(i in f.bought_at for i in a.never_bought_items):
        return False
    if a.bought_categories is not None and not any(c.casefold() in f.categories for c in a.bought_categories):
        return False
    if a.never_bought_categories and any(c.casefold() in f.categories for c in a.never_bought_categories):
        return False
    return True


@dataclass(frozen=True)
class CampaignCounters:
    """The customer's pushes (and holdout would-be pushes) per campaign, and the budgets spent."""

    recent: Mapping[str, tuple[float, ...]] = field(default_factory=dict)   # campaign -> push times, last 8 days
    totals: Mapping[str, int] = field(default_factory=dict)                 # campaign -> pushes ever
    last_at_store: Mapping[str, float] = field(default_factory=dict)        # campaign -> last push at this store
    spent_today: Mapping[str, int] = field(default_factory=dict)            # campaign -> sends today (its zone)
    spent_total: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VisitContext:
    event_type: str
    store_id: str
    store_brand: str
    store_timezone: str
    customer_timezone: str
    now: float


def budget_day(now: float, timezone: str) -> str:
    return datetime.fromtimestamp(now, zone(timezone)).strftime("%Y-%m-%d")


@lru_cache(maxsize=1024)
def _hours(expression: str) -> OpeningHours:
    return OpeningHours(expression)


def _quiet(text: str) -> QuietHours | None:
    return _parsed_quiet(text)


@lru_cache(maxsize=256)
def _parsed_quiet(text: str) -> QuietHours | None:
    return QuietHours.parse(text)


def triggered(campaigns: Iterable[Campaign], ctx: VisitContext) -> list[Campaign]:
    """The campaigns this visit event may concern (active or paused, trigger matching), in the
    order they are tried."""
    hits = [c for c in campaigns if c.status in ("active", "paused")
            and c.spec.trigger.matches(ctx.event_type, ctx.store_id, ctx.store_brand)]
    hits.sort(key=lambda c: (-c.spec.priority, c.campaign_id))
    return hits


def event_types(campaigns: Iterable[Campaign]) -> frozenset[str]:
    """The event types some active or paused campaign triggers on."""
    return frozenset(t for c in campaigns if c.status in ("active", "paused") for t in c.spec.trigger.on)


def precheck(c: Campaign, ctx: VisitContext, facts: CustomerFacts, counters: CampaignCounters) -> str | None:
    """The campaign's reason not to send before any offer is looked at, or None."""
    s = c.spec
    if s.status == "paused":
        return "paused"
    if (s.starts_at is not None and ctx.now < s.starts_at) or (s.ends_at is not None and ctx.now >= s.ends_at):
        return "outside_schedule"
    if s.hours is not None:
        try:
            local = datetime.fromtimestamp(ctx.now, zone(ctx.store_timezone)).replace(tzinfo=None)
            if not _hours(s.hours).is_open(local):
                return "outside_hours"
        except (ValueError, OverflowError, OSError):
            return "outside_hours"  # validated on PUT; a value that still fails never fires
    if not in_audience(s.audience, facts, ctx.now):
        return "not_in_audience"
    lim = s.limits
    if lim.quiet_hours is not None:
        q = _quiet(lim.quiet_hours)
        if q is not None and q.contains(local_minute_of_day(ctx.now, ctx.customer_timezone)):
            return "quiet_hours"
    times = counters.recent.get(c.campaign_id, ())
    if lim.per_customer_per_day is not None:
        day_start = local_day_start(ctx.now, ctx.customer_timezone)
        if sum(1 for t in times if t >= day_start) >= lim.per_customer_per_day:
            return "cap_reached"
    if lim.per_customer_per_week is not None:
        week_start = week_start_at(ctx.now, ctx.customer_timezone)
        if sum(1 for t in times if t >= week_start) >= lim.per_customer_per_week:
            return "cap_reached"
    if lim.per_customer_total is not None and counters.totals.get(c.campaign_id, 0) >= lim.per_customer_total:
        return "cap_reached"
    last = counters.last_at_store.get(c.campaign_id)
    if lim.store_cooldown_s > 0 and last is not None and ctx.now - last < lim.store_cooldown_s:
        return "cooldown"
    if lim.sends_total is not None and counters.spent_total.get(c.campaign_id, 0) >= lim.sends_total:
        return "budget_spent"
    if lim.sends_per_day is not None and counters.spent_today.get(c.campaign_id, 0) >= lim.sends_per_day:
        return "budget_spent"
    return None


def week_start_at(now: float, timezone: str) -> float:
    """The start of the customer's local day six days ago: 'this week' is the last 7 local days."""
    day = datetime.fromtimestamp(local_day_start(now, timezone), zone(timezone))
    return (day - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def offer_allowed(pool: OfferPool, offer_id: str, item_ids: Sequence[str], facts: CustomerFacts, now: float) -> bool:
    """Whether a ranked, eligible offer may be this campaign's: in its pool and, in discover
    mode, about none of the items the customer bought in the last `discover_days`."""
    if pool.offer_ids is not None and offer_id not in pool.offer_set:
        return False
    if pool.mode == "discover":
        horizon = now - pool.discover_days * 86_400
        return not any(facts.bought_at.get(i, float("-inf")) >= horizon for i in item_ids)
    return True
