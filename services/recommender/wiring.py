"""The recommender's composition root: the one place that builds adapters and use cases."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry

from vicino.services.kernel.auth import TokenSigner
from vicino.services.kernel.roles import service_key
from vicino.services.runtime.rate_limit import RateLimiter
from vicino.services.runtime.api_keys import Authenticator
from vicino.services.kernel.clock import Clock, SystemClock
from vicino.services.runtime.redis_client import ReplicaWait
from vicino.services.runtime.stream_consumer import StreamConsumer

from .adapters.campaign_repository import CampaignRepository
from .adapters.customer_repository import CustomerRepository
from .adapters.decision_repository import DecisionRepository
from .adapters.geo_client import GeoClient
from .adapters.kpi_sources import KpiSources
from .adapters.model_store import ModelHolder
from .adapters.push_deliveries import PushDeliveryRecords
from .adapters.published_state import PublishedCustomerState
from .domain.campaigns import Campaign, default_campaign
from .domain.decision_policy import DecisionRules, QuietHours
from .settings import RecommenderSettings
from .use_cases.campaigns import CampaignBook
from .use_cases.customer_batch import CustomerBatch
from .use_cases.erasure import Erasure
from .use_cases.explanations import DecisionExplanations
from .use_cases.decide import RanksOffers, VisitDecisions
from .use_cases.identity import CanonicalIds, IdentityService
from .use_cases.ingest import InteractionIngest
from .use_cases.kpis import Kpis
from .use_cases.profile import ProfileReader
from .use_cases.ranking import OfferRanker
from .workers.decisions import DecisionWorker, decision_consumer
from .workers.exporter import Exporter
from .workers.visits import VisitRecorder, visit_consumer

# --- catalogue (offers, stock, rules) ---
from .adapters.catalog_repository import CatalogRepository
from .use_cases.catalog import Catalog
# --- end catalogue ---


# the recommender's own key at geo: it erases a customer's location data (support) and sets the
# stricter consent on both customers of a merge, and a CRM batch's consent (app_backend)
SERVICE_KEY_NAME, SERVICE_KEY_ROLES = "recommender", ("app_backend", "support")


@dataclass
class RecommenderContainer:
    settings: RecommenderSettings
    clock: Clock
    redis: object
    signer: TokenSigner
    access: Authenticator
    registry: CollectorRegistry
    devices: PublishedCustomerState
    identity: IdentityService
    ingest: InteractionIngest
    profiles: ProfileReader
    customer_batch: CustomerBatch
    erasure: Erasure
    catalog: Catalog
    models: ModelHolder
    ranker: OfferRanker
    kpis: Kpis
    campaigns: CampaignBook
    decisions: DecisionRepository
    visits: VisitDecisions          # the API's use: previews and test sends (the worker decides)
    explanations: DecisionExplanations


def build(settings: RecommenderSettings, redis, clock: Clock, registry: CollectorRegistry,
          geo_http: httpx.AsyncClient) -> RecommenderContainer:
    signer = TokenSigner(settings.token_secret)
    published = PublishedCustomerState(redis, settings.event_shards)
    customers = CustomerRepository(redis, settings)
    geo = GeoClient(geo_http, service_key(settings.token_secret, SERVICE_KEY_NAME)[1])  # registered at start
    decisions = _decision_repository(settings, redis)
    identity = IdentityService(customers, published, geo, clock, decisions)
    catalog = Catalog(CatalogRepository(redis), clock)
    models = ModelHolder(settings.model_dir)
    ranker = OfferRanker(catalog, customers, models, clock)
    campaigns = build_campaign_book(settings, redis, clock)
    return RecommenderContainer(
        settings=settings, clock=clock, redis=redis, signer=signer, registry=registry,
        access=Authenticator(redis, settings.admin_token, signer, settings.token_secret,
                             RateLimiter(redis, settings.rate_limit_policies())),
        devices=published, identity=identity,
        ingest=InteractionIngest(customers, identity, clock, settings),
        profiles=ProfileReader(customers, published, identity),
        customer_batch=CustomerBatch(customers, identity, geo, clock),
        erasure=Erasure(customers, published, identity, geo, clock, settings.event_shards, decisions),
        catalog=catalog, models=models,
        ranker=ranker,
        kpis=build_kpis(settings, redis, clock),
        campaigns=campaigns,
        decisions=decisions,
        visits=VisitDecisions(decisions, published, CanonicalIds(customers), ranker, clock, decision_rules(settings),
                              campaigns, catalog, customers),
        explanations=DecisionExplanations(decisions, CanonicalIds(customers), campaigns, CatalogRepository(redis),
                                          PushDeliveryRecords(redis, settings.customer_shards)),
    )


def settings_campaign(settings: RecommenderSettings) -> Campaign:
    """The default campaign: what runs while no campaign is stored (domain.campaigns)."""
    return default_campaign(settings.decide_on.split(","), settings.cap_per_day, settings.store_cooldown_s,
                            settings.holdout_percent, settings.push_ttl_s)


def build_campaign_book(settings: RecommenderSettings, redis, clock: Clock) -> CampaignBook:
    return CampaignBook(CampaignRepository(redis), CatalogRepository(redis), clock, settings_campaign(settings))


def build_kpis(settings: RecommenderSettings, redis, clock: Clock) -> Kpis:
    """The KPIs (the API's and the kpi_rollup job's)."""
    sources = KpiSources(redis, settings.customer_shards, settings.history_dir, settings.max_future_s)
    return Kpis(sources, CatalogRepository(redis), clock, window_s=settings.attribution_window_h * 3600,
                push_ttl_s=settings.push_ttl_s, retention_days=settings.kpi_retention_days)


def build_visit_consumer(settings: RecommenderSettings, redis, consumer: str) -> StreamConsumer:
    """The worker that keeps customers' recent visits from the geo service's events."""
    customers = CustomerRepository(redis, settings)
    recorder = VisitRecorder(customers, CanonicalIds(customers), PublishedCustomerState(redis, settings.event_shards))
    return visit_consumer(redis, recorder, settings.event_shards, consumer)


def _decision_repository(settings: RecommenderSettings, redis) -> DecisionRepository:
    wait = ReplicaWait(redis, settings.redis_url, settings.redis_wait_replicas, settings.redis_wait_ms, logging.getLogger("vicino.recommender"))
    return DecisionRepository(redis, settings.customer_shards, settings.decision_ttl_s, settings.store_cooldown_s, wait,
                              erasure_key=settings.erasure_register_key(),
                              docs_ttl_s=settings.kpi_retention_days * 86_400)


def build_ranker(settings: RecommenderSettings, redis, clock: Clock) -> OfferRanker:
    """The ranking as a worker uses it: its own catalogue copy and model holder (whose
    `follow` the caller runs); its callers hand it the canonical customer and its consent."""
    return OfferRanker(Catalog(CatalogRepository(redis), clock), CustomerRepository(redis, settings),
                       ModelHolder(settings.model_dir), clock)


def decision_rules(settings: RecommenderSettings) -> DecisionRules:
    """The global protection every campaign is under (the holdout is each campaign's)."""
    return DecisionRules(cap_per_day=settings.cap_per_day, store_cooldown_s=settings.store_cooldown_s,
                         quiet_hours=QuietHours.parse(settings.quiet_hours),
                         holdout_percent=0.0,
                         # an event older than a push's lifetime could only produce an expired push
                         max_event_age_s=settings.push_ttl_s)


def build_visit_decisions(settings: RecommenderSettings, redis, ranker: RanksOffers,
                          clock: Clock | None = None) -> VisitDecisions:
    """Decisions on visits; the worker only reads merge pointers, it never merges."""
    clock = clock or SystemClock()
    customers = CustomerRepository(redis, settings)
    catalog = getattr(ranker, "catalog", None) or Catalog(CatalogRepository(redis), clock)  # the ranker's copy if any
    return VisitDecisions(_decision_repository(settings, redis), PublishedCustomerState(redis, settings.event_shards),
                          CanonicalIds(customers), ranker, clock, decision_rules(settings),
                          build_campaign_book(settings, redis, clock), catalog, customers)


def build_decision_consumer(settings: RecommenderSettings, redis, consumer: str, ranker: RanksOffers, *,
                            clock: Clock | None = None) -> StreamConsumer:
    """The decision worker's consumer over every geo event stream."""
    return decision_consumer(redis, DecisionWorker(build_visit_decisions(settings, redis, ranker, clock)),
                             settings.event_shards, consumer)


def build_worker_loops(settings: RecommenderSettings, redis, consumer: str, clock: Clock | None = None) -> dict:
    """name -> `run_forever(stop)` of each background loop of the worker process: visits from the
    geo events, decisions on visits (ranking with the published model, followed like the API
    does), and the Parquet exporter."""
    clock = clock or SystemClock()
    ranker = build_ranker(settings, redis, clock)
    return {"visits": build_visit_consumer(settings, redis, consumer).run_forever,
            "model": lambda stop: ranker.models.follow(stop, settings.model_poll_s),
            "decisions": build_decision_consumer(settings, redis, consumer, ranker, clock=clock).run_forever,
            "exporter": Exporter(redis, settings).run_forever}
