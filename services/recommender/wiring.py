"""The recommender's composition root: the one place that builds adapters and use cases."""
from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry

from vicino.services.kernel.auth import TokenSigner
from vicino.services.kernel.clock import Clock

from .adapters.customer_repository import CustomerRepository
from .adapters.decision_repository import DecisionRepository
from .adapters.geo_client import GeoClient
from .adapters.kpi_sources import KpiSources
from .adapters.model_store import ModelHolder
from .adapters.published_state import PublishedCustomerState
from .settings import RecommenderSettings
from .use_cases.erasure import Erasure
from .use_cases.identity import IdentityService
from .use_cases.ingest import InteractionIngest
from .use_cases.kpis import Kpis
from .use_cases.profile import ProfileReader
from .use_cases.ranking import OfferRanker

# --- catalogue (offers, stock, rules) ---
from .adapters.catalog_repository import CatalogRepository
from .use_cases.catalog import Catalog
# --- end catalogue ---


@dataclass
class RecommenderContainer:
    settings: RecommenderSettings
    clock: Clock
    redis: object
    signer: TokenSigner
    registry: CollectorRegistry
    devices: PublishedCustomerState
    identity: IdentityService
    ingest: InteractionIngest
    profiles: ProfileReader
    erasure: Erasure
    catalog: Catalog
    models: ModelHolder
    ranker: OfferRanker
    kpis: Kpis


def build(settings: RecommenderSettings, redis, clock: Clock, registry: CollectorRegistry,
          geo_http: httpx.AsyncClient) -> RecommenderContainer:
    published = PublishedCustomerState(redis, settings.event_shards)
    customers = CustomerRepository(redis, settings)
    geo = GeoClient(geo_http, settings.admin_token)
    decisions = _decision_repository(settings, redis)
    identity = IdentityService(customers, published, geo, clock, decisions)
    catalog = Catalog(CatalogRepository(redis), clock)
    models = ModelHolder(settings.model_dir)
    return RecommenderContainer(
        settings=settings, clock=clock, redis=redis, signer=TokenSigner(settings.token_secret), registry=registry,
        devices=published, identity=identity,
        ingest=InteractionIngest(customers, identity, clock, settings),
        profiles=ProfileReader(customers, published, identity),
        erasure=Erasure(customers, published, identity, geo, clock, settings.event_shards, decisions),
        catalog=catalog, models=models,
        ranker=OfferRanker(catalog, customers, published, identity, models, clock),
        kpis=build_kpis(settings, redis, clock),
    )


def build_kpis(settings: RecommenderSettings, redis, clock: Clock) -> Kpis:
    """The KPIs (the API's and the kpi_rollup job's)."""
    sources = KpiSources(redis, settings.customer_shards, settings.history_dir, settings.max_future_s)
    return Kpis(sources, CatalogRepository(redis), clock, window_s=settings.attribution_window_h * 3600,
                push_ttl_s=settings.push_ttl_s, retention_days=settings.kpi_retention_days)


def build_visit_consumer(settings: RecommenderSettings, redis, consumer: str):
    """The worker that keeps customers' recent visits from the geo service's events."""
    from .workers.visits import VisitRecorder, visit_consumer

    customers = CustomerRepository(redis, settings)
    # merges are not run by this worker: canonical() only reads the pointers
    identity = IdentityService(customers, PublishedCustomerState(redis, settings.event_shards), None, None)
    return visit_consumer(redis, VisitRecorder(customers, identity), settings.event_shards, consumer)


def _decision_repository(settings: RecommenderSettings, redis) -> DecisionRepository:
    return DecisionRepository(redis, settings.customer_shards, settings.decision_ttl_s, settings.store_cooldown_s)


def build_ranker(settings: RecommenderSettings, redis, clock: Clock) -> OfferRanker:
    """The ranking as a worker uses it: its own catalogue copy and model holder (whose
    `follow` the caller runs), reading merge pointers but never merging."""
    customers = CustomerRepository(redis, settings)
    published = PublishedCustomerState(redis, settings.event_shards)
    identity = IdentityService(customers, published, None, None)
    return OfferRanker(Catalog(CatalogRepository(redis), clock), customers, published, identity,
                       ModelHolder(settings.model_dir), clock)


def build_worker_loops(settings: RecommenderSettings, redis, consumer: str, clock: Clock | None = None) -> dict:
    """name -> `run_forever(stop)` of each background loop of the worker process: visits from the
    geo events, decisions on visits (ranking with the published model, followed like the API
    does), and the Parquet exporter."""
    from vicino.services.kernel.clock import SystemClock

    from .workers.decisions import build_decision_consumer
    from .workers.exporter import Exporter

    clock = clock or SystemClock()
    ranker = build_ranker(settings, redis, clock)
    return {"visits": build_visit_consumer(settings, redis, consumer).run_forever,
            "model": lambda stop: ranker.models.follow(stop, settings.model_poll_s),
            "decisions": build_decision_consumer(settings, redis, consumer, ranker, clock=clock).run_forever,
            "exporter": Exporter(redis, settings).run_forever}
