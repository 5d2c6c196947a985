"""Deciding on a store visit over the campaigns: at most one push per visit, and one logged
decision per event decided on.

An enter or dwell event is decided on when some active or paused campaign triggers on its type
and store (`domain.campaigns.triggered`; with no campaign stored, the default campaign built from
the settings). The use case reads what the policy needs (consent, the device's time zone, locale
and push token, the customer's pushes today, at this store and per campaign, whether the visit
is decided or over), checks the global protection once (`decision_policy.gate`), then tries the
campaigns in priority order (`domain.campaigns.precheck`, then the best ranked offer the
campaign may use, then its holdout): the first that may send sends; every campaign tried leaves
its outcome in the decision. A sending campaign with a budget reserves its unit first (given
back if the record does not happen). The ranking is asked once, for as many offers as the
campaigns' pools need. The decision is recorded with its push job and counters in one atomic
script. The script refuses if the visit was decided
meanwhile (a redelivery, a racing consumer: nothing more is written) or if the counters moved
since they were read (another visit of the customer was decided: read and decide again), so
caps hold under concurrency. An exit event marks its visit ended, for the policy and the push
gateway.

A visit that got its push (or a holdout would-be push) is decided; an event decided without
one leaves the visit's other event type its own try (a campaign on dwell after one on enter
found nothing to send). `visit_already_decided` is an outcome of this use case, not a logged
decision: the decisions stream holds at most one entry per visit and event type.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.decisions import DecisionV1
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key
from vicino.services.kernel.ids import new_id
from vicino.services.kernel.problems import Conflict, NotFound

from vicino.services.kernel.contracts.decisions import CampaignOutcomeV1, MessageV1

from ..adapters.customer_repository import CustomerRepository
from ..adapters.decision_repository import Counters, DecisionRepository
from ..adapters.published_state import PublishedCustomerState
from ..domain import messages
from ..domain.campaigns import (Campaign, CampaignCounters, CustomerFacts, VisitContext, budget_day, campaign_holdout,
                                event_types, facts_from_history, offer_allowed, precheck, triggered)
from ..domain.decision_policy import (DEFAULT_TIMEZONE, Decision, DecisionRules, OfferChoice, Situation, gate,
                                      local_day_start)
from ..domain.eligibility import StoreView
from ..domain.identity import Moved
from .campaigns import CampaignBook, Snapshot
from .catalog import Catalog
from .identity import CanonicalIds

log = logging.getLogger("vicino.recommender.decisions")
CHANNEL = "app"    # a geofence decision is a push to the app
MAX_ROUNDS = 8     # counters moved or the customer was merged meanwhile: read and decide again
# A campaign that restricts its offers (a pool, discover mode) takes the best ranked offer that
# fits: the ranking is asked once for every eligible offer (the cost is in eligibility and the
# scores, which are computed for all of them anyway; the order is the same for every campaign).
ALL_OFFERS = 1_000_000
NO_FACTS = CustomerFacts("", None, frozenset(), 0, None, {}, frozenset())


class RankedOffer(Protocol):
    offer_id: str
    score: float
    price: float | None
    currency: str | None
    title: str
    body: str
    reason: str


class Ranking(Protocol):
    offers: Sequence[RankedOffer]
    model_version: str | None


class RanksOffers(Protocol):
    """The port to the offer ranking (use_cases/ranking.py's `OfferRanker` implements it)."""

    async def rank(self, customer: str, *, personalisation: bool, store_id: str | None, channel: str, k: int,
                   now: float) -> Ranking:
        """`customer`: the canonical id; `personalisation`: its consent to a personalised ranking."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What became of one event: `kind` is decided, duplicate (the visit already had its
    decision), ended (an exit, recorded), ignored (not an event decided on, an erased customer,
    or one without location and marketing consent: nothing is logged for them)."""

    kind: str
    decision: DecisionV1 | None = None
    job: PushJobV1 | None = None


@dataclass(frozen=True)
class Choice:
    """What the campaigns made of a visit: the outcomes, and the campaign that sends or holds out."""

    outcomes: list[CampaignOutcomeV1]
    campaign: Campaign | None = None
    offer: OfferChoice | None = None
    held_out: bool = False
    reserved_day: str | None = None   # the budget day a unit was reserved on (give it back if unrecorded)


class VisitDecisions:
    def __init__(self, repo: DecisionRepository, published: PublishedCustomerState, identity: CanonicalIds,
                 ranker: RanksOffers, clock: Clock, rules: DecisionRules, campaigns: CampaignBook,
                 catalog: Catalog, customers: CustomerRepository) -> None:
        self.repo = repo
        self.published = published
        self.identity = identity
        self.ranker = ranker
        self.clock = clock
        self.rules = rules
        self.campaigns = campaigns
        self.catalog = catalog
        self.customers = customers
        self._categories: tuple[int, dict[str, str]] = (-1, {})
        # the service's ranker takes the hot history the audiences just read (one read, not two)
        self._shares_history = "history" in inspect.signature(ranker.rank).parameters
        self.counts: Counter[str] = Counter()  # outcome or reason -> events, for logs and tests

    async def on_event(self, e: GeofenceEventV1) -> Outcome:
        snap = await self.campaigns.snapshot()  # one consistent version of every campaign for this event
        if e.type != "exit" and e.type not in event_types(snap.campaigns):
            return self._count(Outcome("ignored"))
        erased_at = await self.repo.erased_at(e.customer_id)
        if erased_at is not None and erased_at >= e.emitted_at:
            return self._count(Outcome("ignored"))  # emitted before the customer was erased: keep no trace
        customer = await self.identity.canonical(e.customer_id)
        if e.type == "exit":
            for _ in range(MAX_ROUNDS):
                out = await self.repo.end_visit(customer, e.visit_id, e.ts, self.clock.now())
                if not isinstance(out, Moved):
                    return self._count(Outcome("ended"))
                customer = await self.identity.canonical(out.customer_id)
            raise RuntimeError("the customer kept being merged while recording an exit")
        return self._count(await self._decide(e, customer, snap))

    async def _decide(self, e: GeofenceEventV1, customer: str, snap: Snapshot) -> Outcome:
        # consent as geo holds it now, not as it was when the event was queued: a visit seen after
        # the customer withdrew location or marketing consent is decided on by no one
        first = await self.published.consent(e.customer_id)
        consent = first if customer == e.customer_id else await self.published.consent(customer)
        if not all(c["location"] and c["marketing"] for c in (first, consent)):
            return Outcome("ignored")
        marketing = True  # read once: the same records decide the visit below (after a merge, both ids)
        reg = await self.published.registration(e.device_id)
        # a device removed or handed to someone else: geo ends its visits, so does the decision
        device_theirs = reg is not None and bool(reg.get("push_token")) and (
            reg["customer_id"] == e.customer_id or await self.identity.canonical(reg["customer_id"]) == customer)
        tz = (reg or {}).get("timezone") or DEFAULT_TIMEZONE
        feature = await self.catalog.repo.store_feature(e.store_id)
        store = StoreView.from_feature(feature) if feature is not None else StoreView(e.store_id)
        store_name = ((feature or {}).get("properties") or {}).get("name") or e.store_id
        ctx = VisitContext(e.type, e.store_id, store.brand, store.timezone, tz, self.clock.now())
        hits = triggered(snap.campaigns, ctx)
        if not hits:
            return Outcome("ignored")  # no campaign concerns this store and event type
        facts: CustomerFacts | None = None
        attributes: dict = {}
        ranked: list | None = None
        ranked_for: str | None = None
        model_version: str | None = None
        for _ in range(MAX_ROUNDS):
            now = self.clock.now()
            ctx = VisitContext(e.type, e.store_id, store.brand, store.timezone, tz, now)
            day_start = local_day_start(now, tz)
            read = await self.repo.counters(customer, e.visit_id, e.store_id, day_start, now, e.type)
            s = Situation(customer_id=customer, event_ts=e.ts, now=now, marketing_consent=marketing, timezone=tz,
                          pushes_today=read.pushes_today, last_push_at_store=read.last_push_at_store,
                          visit_decided=read.visit_decided, visit_ended=read.visit_ended or not device_theirs)
            if s.visit_decided:
                return Outcome("duplicate")
            global_reason = gate(s, self.rules)
            if global_reason is not None:
                choice = Choice([CampaignOutcomeV1(campaign_id=c.campaign_id, revision=c.revision, outcome="suppressed",
                                                   reason=global_reason) for c in hits])
            else:
                if ranked_for != customer:
                    if consent is None:  # the gate passed, so it was read; a safety net
                        consent = await self.published.consent(customer)
                    facts, attributes, history = await self._facts(customer, hits)
                    ranked, model_version = await self._rank(customer, consent, e.store_id, now, _depth(hits), history)
                    ranked_for = customer
                choice = await self._try_campaigns(hits, ctx, facts or NO_FACTS, read, ranked or [], customer, consent,
                                                   e.store_id, now, model_version)
            d = _decision(global_reason, choice)
            message = self._message(choice, reg, attributes, store_name, store.timezone) if choice.offer else None
            record, job = self._records(e, customer, d, choice, message, reg, model_version if d.offer else None, now)
            cooldown = choice.campaign.spec.limits.store_cooldown_s if choice.campaign else 0.0
            out = await self.repo.record(customer, read, day_start, now, record, job, d.counts_as_push, cooldown)
            if out != "ok" and choice.reserved_day is not None:
                await self.campaigns.repo.release(choice.campaign.campaign_id, choice.reserved_day)
            if out == "ok":
                await self.repo.index_visit(e.visit_id, customer, now)
                log.info("visit decided", extra={"fields": {"store_id": e.store_id, "outcome": d.outcome,
                                                            "reason": d.reason, "event_type": e.type,
                                                            "campaign_id": record.campaign_id}})
                return Outcome("decided", record, job)
            if out == "duplicate":
                return Outcome("duplicate")
            if isinstance(out, Moved):
                customer = await self.identity.canonical(out.customer_id)
                marketing, consent = await self._consents(e.customer_id, customer)
        raise RuntimeError("the customer's counters kept moving; the event will be retried")

    async def _facts(self, customer: str, hits: list[Campaign]) -> tuple[CustomerFacts, dict, list[dict] | None]:
        """What the audiences and discover pools look at, read only when one of them needs it;
        the CRM attributes (locale, country) are read whenever a campaign has a message."""
        needs_history = any(not c.spec.audience.everyone or c.spec.offers.mode == "discover" for c in hits)
        needs_attributes = needs_history or any(c.spec.message is not None for c in hits)
        attributes = await self.customers.attributes(customer) if needs_attributes else {}
        if not needs_history:
            return NO_FACTS, attributes, None
        history = await self.customers.hot_history(customer)
        return facts_from_history(customer, history, attributes, await self._item_categories()), attributes, history

    async def _item_categories(self) -> dict[str, str]:
        seq, offers = await self.catalog.versioned_offers()
        if self._categories[0] != seq:
            self._categories = (seq, {i: o.category for o in offers for i in o.item_ids})
        return self._categories[1]

    async def _rank(self, customer: str, consent: dict, store_id: str, now: float, k: int,
                    history: list[dict] | None = None) -> tuple[list, str | None]:
        extra = {"history": history} if history is not None and self._shares_history else {}
        try:
            ranking = await self.ranker.rank(customer, personalisation=consent["personalisation"], store_id=store_id,
                                             channel=CHANNEL, k=k, now=now, **extra)
        except NotFound:  # the store was removed since the event: nothing to offer there
            return [], None
        return list(ranking.offers), ranking.model_version

    async def _try_campaigns(self, hits: list[Campaign], ctx: VisitContext, facts: CustomerFacts, read: Counters,
                             ranked: list, customer: str, consent: dict, store_id: str, now: float,
                             model_version: str | None, *, reserve: bool = True) -> Choice:
        budgeted = [c for c in hits if c.spec.limits.sends_total is not None or c.spec.limits.sends_per_day is not None]
        spend = await self.campaigns.spend(budgeted) if budgeted else {}
        counters = CampaignCounters(recent=read.campaign_recent, totals=read.campaign_totals,
                                    last_at_store=read.campaign_last_at_store,
                                    spent_today={c: v.today for c, v in spend.items()},
                                    spent_total={c: v.total for c, v in spend.items()})
        outcomes: list[CampaignOutcomeV1] = []
        held: tuple[Campaign, OfferChoice] | None = None
        sent: tuple[Campaign, OfferChoice, str | None] | None = None
        for c in hits:
            if sent is not None:
                outcomes.append(_suppressed(c, "outranked"))
                continue
            reason = precheck(c, ctx, facts, counters)
            if reason is not None:
                outcomes.append(_suppressed(c, reason))
                continue
            best = next((o for o in ranked if _fits(c, o, facts, now)), None)
            if best is None:
                outcomes.append(_suppressed(c, "no_eligible_offer"))
                continue
            offer = _choice(best)
            if campaign_holdout(customer, c):
                outcomes.append(CampaignOutcomeV1(campaign_id=c.campaign_id, revision=c.revision, outcome="held_out",
                                                  offer_id=offer.offer_id, score=offer.score))
                held = held or (c, offer)
                continue
            day = None
            lim = c.spec.limits
            if reserve and (lim.sends_total is not None or lim.sends_per_day is not None):
                day = budget_day(now, c.spec.timezone)
                if not await self.campaigns.repo.reserve(c.campaign_id, day, lim.sends_per_day, lim.sends_total):
                    outcomes.append(_suppressed(c, "budget_spent"))
                    continue
            outcomes.append(CampaignOutcomeV1(campaign_id=c.campaign_id, revision=c.revision, outcome="sent",
                                              offer_id=offer.offer_id, score=offer.score))
            sent = (c, offer, day)
        if sent is not None:
            return Choice(outcomes, sent[0], sent[1], False, sent[2])
        if held is not None:
            return Choice(outcomes, held[0], held[1], True)
        return Choice(outcomes)

    # preview and test sends (the campaign API): the same steps, nothing recorded ----------------------

    async def preview(self, campaign: Campaign, customer_id: str, store_id: str, locale: str | None,
                      event_type: str | None = None) -> dict:
        """What `campaign` would do now for this customer at this store, and why: the global
        protection, the campaign's own checks, the offer and the rendered message. A draft or
        paused campaign is previewed as if active (its status is reported beside). Nothing is
        recorded, reserved or sent."""
        customer = await self.identity.canonical(customer_id)
        feature = await self.catalog.repo.store_feature(store_id)
        if feature is None:
            raise NotFound(f"store {store_id!r} does not exist (stores are managed by the geo service)")
        store = StoreView.from_feature(feature)
        store_name = (feature.get("properties") or {}).get("name") or store_id
        reg = await self._any_device(customer)
        tz = (reg or {}).get("timezone") or DEFAULT_TIMEZONE
        kind = event_type or campaign.spec.trigger.on[0]
        now = self.clock.now()
        ctx = VisitContext(kind, store_id, store.brand, store.timezone, tz, now)
        as_active = replace(campaign, spec=campaign.spec.model_copy(update={"status": "active"})) \
            if campaign.status in ("draft", "paused") else campaign
        marketing, consent = await self._consents(customer, customer)
        read = await self.repo.counters(customer, "preview", store_id, local_day_start(now, tz), now, kind)
        s = Situation(customer_id=customer, event_ts=now, now=now, marketing_consent=marketing, timezone=tz,
                      pushes_today=read.pushes_today, last_push_at_store=read.last_push_at_store)
        out = {"campaign_id": campaign.campaign_id, "revision": campaign.revision, "status": campaign.status,
               "customer_id": customer, "store_id": store_id, "event_type": kind, "at": now,
               "global_reason": gate(s, self.rules), "would_send": False, "outcome": "suppressed", "reason": None,
               "offer": None, "message": None}
        if campaign.status == "ended":
            out["reason"] = "ended"
            return out
        if not campaign.spec.trigger.matches(kind, store_id, store.brand):
            out["reason"] = "not_triggered_here"
            return out
        consent = consent or await self.published.consent(customer)
        facts, attributes, history = await self._facts(customer, [as_active])
        ranked, model_version = await self._rank(customer, consent, store_id, now, _depth([as_active]), history)
        choice = await self._try_campaigns([as_active], ctx, facts, read, ranked, customer, consent, store_id, now,
                                           model_version, reserve=False)
        outcome = choice.outcomes[0]
        if locale is not None:
            reg = {**(reg or {}), "locale": locale}
        message = self._message(choice, reg, attributes, store_name, store.timezone) if choice.offer else None
        out.update(outcome=outcome.outcome, reason=outcome.reason,
                   would_send=out["global_reason"] is None and outcome.outcome == "sent",
                   offer=None if choice.offer is None else {"offer_id": choice.offer.offer_id,
                                                            "score": round(choice.offer.score, 6),
                                                            "rank_reason": choice.offer.reason,
                                                            "model_version": model_version},
                   message=None if message is None else message.model_dump())
        return out

    async def test_job(self, campaign: Campaign, device_id: str, store_id: str) -> PushJobV1:
        """The push a test send delivers: the campaign's message for the device's customer at the
        store, with the best offer the campaign may use there (its audience, caps, hours and
        holdout do not apply: it is a test). Marked `test`, it never counts in the KPIs."""
        reg = await self.published.registration(device_id)
        if reg is None or not reg.get("push_token"):
            raise NotFound(f"device {device_id!r} is not registered with a push token")
        customer = await self.identity.canonical(reg["customer_id"])
        feature = await self.catalog.repo.store_feature(store_id)
        if feature is None:
            raise NotFound(f"store {store_id!r} does not exist (stores are managed by the geo service)")
        store = StoreView.from_feature(feature)
        now = self.clock.now()
        consent = await self.published.consent(customer)
        facts, attributes, history = await self._facts(customer, [campaign])
        ranked, _ = await self._rank(customer, consent, store_id, now, _depth([campaign]), history)
        best = next((o for o in ranked if _fits(campaign, o, facts, now)), None)
        if best is None:
            raise Conflict(f"no offer of campaign {campaign.campaign_id!r} is eligible at store {store_id!r} now: "
                           "nothing to fill the message with")
        choice = Choice([], campaign, _choice(best))
        message = self._message(choice, reg, attributes, (feature.get("properties") or {}).get("name") or store_id,
                                store.timezone)
        visit_id = new_id("tst")
        return PushJobV1(
            job_id=new_id("job"), idempotency_key=idempotency_key(customer, store_id, visit_id), customer_id=customer,
            device_id=device_id, platform=reg["platform"], push_token=reg["push_token"], title=message.title,
            body=message.body, deep_link=message.deep_link, image_url=message.image_url,
            data=PushDataV1(offer_id=best.offer_id, store_id=store_id, visit_id=visit_id, decision_id=new_id("tdc"),
                            campaign_id=campaign.campaign_id, test=True),
            collapse_key=visit_id, created_at=now, expires_at=now + campaign.spec.limits.ttl_s)

    async def _any_device(self, customer: str) -> dict | None:
        """A registration of one of the customer's devices (its zone and locale), if any."""
        for d in await self.published.devices(customer):
            reg = await self.published.registration(d["device_id"])
            if reg is not None:
                return reg
        return None

    def _message(self, choice: Choice, reg: dict | None, attributes: dict, store_name: str,
                 store_tz: str) -> MessageV1:
        o, c = choice.offer, choice.campaign
        assert o is not None and c is not None
        m = c.spec.message
        wanted = [(reg or {}).get("locale"), attributes.get("locale")]
        if m is None:  # the offer's own words, as before campaigns
            return MessageV1(locale=next((w for w in wanted if w), "und"), title=o.title, body=o.body)
        locale = messages.pick_locale(m.templates.keys(), wanted, m.default_locale)
        values = messages.MessageValues(store_name=store_name, offer_title=o.title, price=o.price,
                                        regular_price=o.regular_price, currency=o.currency, valid_to=o.valid_to,
                                        timezone=store_tz)
        t = m.templates[locale]
        return MessageV1(locale=locale, title=messages.render(t.title, locale, values),
                         body=messages.render(t.body, locale, values), deep_link=m.deep_link, image_url=m.image_url)

    async def _consents(self, event_customer: str, customer: str) -> tuple[bool, dict | None]:
        """The marketing consent that decides, and the canonical customer's consent record (None
        when it was not needed: the event's customer had no marketing consent)."""
        # geo keeps consent per customer id; after a merge both ids carry the stricter one
        first = await self.published.consent(event_customer)
        if customer == event_customer:
            return bool(first["marketing"]), first
        if not first["marketing"]:
            return False, None
        consent = await self.published.consent(customer)
        return bool(consent["marketing"]), consent

    def _records(self, e: GeofenceEventV1, customer: str, d: Decision, choice: Choice, message: MessageV1 | None,
                 reg: dict | None, model_version: str | None, now: float) -> tuple[DecisionV1, PushJobV1 | None]:
        decision_id = new_id("dec")
        job = None
        c = choice.campaign
        if d.outcome == "send":
            assert d.offer is not None and reg is not None and message is not None and c is not None
            job = PushJobV1(
                job_id=new_id("job"), idempotency_key=idempotency_key(customer, e.store_id, e.visit_id),
                customer_id=customer, device_id=e.device_id, platform=reg["platform"], push_token=reg["push_token"],
                title=message.title, body=message.body, deep_link=message.deep_link, image_url=message.image_url,
                data=PushDataV1(offer_id=d.offer.offer_id, store_id=e.store_id, visit_id=e.visit_id,
                                decision_id=decision_id, campaign_id=c.campaign_id),
                collapse_key=e.visit_id, created_at=now, expires_at=now + c.spec.limits.ttl_s)
        o = d.offer
        record = DecisionV1(
            decision_id=decision_id, customer_id=customer, device_id=e.device_id, store_id=e.store_id,
            visit_id=e.visit_id, event_id=e.event_id, event_type=e.type, outcome=d.outcome, reason=d.reason,
            offer_id=o.offer_id if o else None, score=o.score if o else None, price=o.price if o else None,
            currency=o.currency if o else None, rank_reason=o.reason if o else None, model_version=model_version,
            holdout=d.holdout, job_id=job.job_id if job else None, ts=e.ts, decided_at=now,
            campaign_id=c.campaign_id if c is not None and o is not None else None, campaigns=choice.outcomes,
            message=message)
        return record, job

    def _count(self, outcome: Outcome) -> Outcome:
        d = outcome.decision
        self.counts[outcome.kind if d is None else (d.reason or "send")] += 1
        return outcome


def _choice(o: RankedOffer) -> OfferChoice:
    return OfferChoice(offer_id=o.offer_id, score=float(o.score), price=o.price, currency=o.currency,
                       title=o.title, body=o.body, reason=o.reason,
                       regular_price=getattr(o, "regular_price", None), valid_to=getattr(o, "valid_to", None))


def _suppressed(c: Campaign, reason: str) -> CampaignOutcomeV1:
    return CampaignOutcomeV1(campaign_id=c.campaign_id, revision=c.revision, outcome="suppressed", reason=reason)


def _restricted(c: Campaign) -> bool:
    return c.spec.offers.offer_ids is not None or c.spec.offers.mode == "discover"


def _depth(hits: list[Campaign]) -> int:
    return ALL_OFFERS if any(_restricted(c) for c in hits) else 1


def _fits(c: Campaign, o, facts: CustomerFacts, now: float) -> bool:
    return offer_allowed(c.spec.offers, o.offer_id, getattr(o, "item_ids", ()), facts, now)


def _decision(global_reason: str | None, choice: Choice) -> Decision:
    """The visit's decision from the global gate and the campaigns' outcomes: sent by the sending
    campaign; `holdout` when one held the customer out and none sent; otherwise the reason of the
    first campaign tried (the highest priority)."""
    if global_reason is not None:
        return Decision("suppress", global_reason, None, False)
    if choice.campaign is not None and not choice.held_out:
        return Decision("send", None, choice.offer, False)
    if choice.held_out:
        return Decision("suppress", "holdout", choice.offer, True)
    first = choice.outcomes[0].reason
    return Decision("suppress", first, None, False)
