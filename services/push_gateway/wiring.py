"""The push gateway's composition root: providers from the settings, the delivery use case, the
job consumer. Tests wire their own HTTP clients (pointed at local provider stand-ins)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from vicino.services.kernel.auth import TokenSigner
from vicino.services.kernel.roles import service_key
from vicino.services.runtime.rate_limit import RateLimiter
from vicino.services.runtime.api_keys import Authenticator
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
from vicino.services.kernel.contracts.streams import PUSH_GATEWAY_GROUP, dead_letter_of
from vicino.services.runtime.redis_client import ReplicaWait
from vicino.services.runtime.stream_consumer import StreamConsumer

from .adapters.delivery_repository import DeliveryRepository
from .adapters.providers.apns import ApnsKey, ApnsProvider
from .adapters.providers.base import PushProvider
from .adapters.providers.fcm import FcmProvider, ServiceAccount
from .adapters.providers.log import LogProvider
from .adapters.providers.webhook import WebhookProvider
from .adapters.service_clients import GeoDevices, RecommenderInteractions
from .domain.retry_policy import RetryPolicy
from .domain.routing import routing_table
from .settings import PushSettings
from .use_cases.deliver import DeliveryMetrics, PushDelivery
from .use_cases.opens import DeliveryOpens
from .worker import PushJobHandler

log = logging.getLogger("vicino.push")
# the push gateway's own key: it revokes dead push tokens at geo and reports opens to the recommender
SERVICE_KEY_NAME, SERVICE_KEY_ROLES = "push", ("app_backend",)

GROUP = PUSH_GATEWAY_GROUP


@dataclass
class ProviderClients:
    """One HTTP client per provider (pooled connections; HTTP/2 for APNs). Tests hand their own
    `httpx.AsyncClient`s; anything with httpx's `post` will do (`ShardedClient`)."""

    fcm: "httpx.AsyncClient | ShardedClient | None" = None
    apns: "httpx.AsyncClient | ShardedClient | None" = None
    webhook: "httpx.AsyncClient | ShardedClient | None" = None
    owned: list = field(default_factory=list)

    @classmethod
    def open(cls, settings: PushSettings) -> "ProviderClients":
        timeout = httpx.Timeout(settings.provider_timeout_s)
        n = settings.provider_concurrency
        c = cls(# HTTP/2 where the server offers it (Google's does); over HTTP/1.1, small pools
                fcm=ShardedClient.open(n, timeout, http2=True),
                # one multiplexed HTTP/2 connection (httpcore carries up to 100 streams on it);
                # measured: 3 connections cost 40% more CPU per push than 1 at the same rate
                apns=httpx.AsyncClient(http2=True, limits=httpx.Limits(max_connections=n), timeout=timeout),
                webhook=ShardedClient.open(n, timeout))
        c.owned = [c.fcm, c.apns, c.webhook]
        return c

    async def aclose(self) -> None:
        for client in self.owned:
            await client.aclose()


class ShardedClient:
    """Many small httpx connection pools used in turn, as one client (the providers call `post`).
    httpcore's pool does work per request that grows with its connections and queued requests:
    256 requests in flight over HTTP/1.1 cost ~4.6 ms of CPU each through one pool of 256
    connections, ~1.1 ms through 64 pools of 4 (this machine, FCM stand-in in the same process)."""

    PER_POOL = 4

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self._clients = clients
        self._next = 0

    @classmethod
    def open(cls, in_flight: int, timeout: httpx.Timeout, *, http2: bool = False) -> "ShardedClient":
        """Pools of `PER_POOL` connections, enough for `in_flight` requests."""
        pools = max(1, -(-in_flight // cls.PER_POOL))
        limits = httpx.Limits(max_connections=cls.PER_POOL, max_keepalive_connections=cls.PER_POOL)
        return cls([httpx.AsyncClient(limits=limits, timeout=timeout, http2=http2) for _ in range(pools)])

    async def post(self, url: str, **kw) -> httpx.Response:
        self._next = (self._next + 1) % len(self._clients)
        return await self._clients[self._next].post(url, **kw)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()


def check_providers(settings: PushSettings) -> list[str]:
    """Loads every configured key file: raises ProviderConfigError with one clear message if one
    cannot work. Returns the lines that say which provider serves which platform."""
    configured = _configured(settings)
    if settings.fcm_credentials:
        ServiceAccount.load(settings.fcm_credentials)
    if settings.apns_key_file:
        ApnsKey.load(settings.apns_key_file, settings.apns_key_id or "", settings.apns_team_id or "")
    lines = []
    for platform, provider in routing_table(configured).items():
        native = {"android": "FCM", "ios": "APNs"}.get(platform)
        note = "" if provider in ("fcm", "apns") or native is None else f" ({native} not configured)"
        lines.append(f"{platform} → {provider}{note}")
    return lines


def _configured(settings: PushSettings) -> frozenset[str]:
    names = {"log"}
    if settings.fcm_credentials:
        names.add("fcm")
    if settings.apns_key_file:
        names.add("apns")
    if settings.webhook_url:
        names.add("webhook")
    return frozenset(names)


def build_providers(settings: PushSettings, clients: ProviderClients) -> dict[str, PushProvider]:
    providers: dict[str, PushProvider] = {"log": LogProvider()}
    kw = {"timeout_s": settings.provider_timeout_s}
    if settings.fcm_credentials:
        providers["fcm"] = FcmProvider(ServiceAccount.load(settings.fcm_credentials), clients.fcm,
                                       endpoint=settings.fcm_endpoint, **kw)
    if settings.apns_key_file:
        key = ApnsKey.load(settings.apns_key_file, settings.apns_key_id or "", settings.apns_team_id or "")
        providers["apns"] = ApnsProvider(key, settings.apns_topic or "", clients.apns, endpoint=settings.apns_endpoint,
                                         refresh_s=settings.apns_token_refresh_s, **kw)
    if settings.webhook_url:
        providers["webhook"] = WebhookProvider(settings.webhook_url, settings.webhook_secret or "", clients.webhook,
                                               **kw)
    return providers


class PushMetrics(DeliveryMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        statuses = Counter("vicino_push_deliveries_total", "delivery status changes", ["provider", "status"],
                           registry=registry)
        latency = Histogram("vicino_push_provider_seconds", "provider request time", ["provider"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        alerts = Counter("vicino_push_provider_auth_failures_total", "a provider refused our credentials",
                         ["provider"], registry=registry)
        super().__init__(on_status=lambda p, s: statuses.labels(p, s).inc(),
                         on_send=lambda p, sec: latency.labels(p).observe(sec),
                         on_alert=lambda p, reason: alerts.labels(p).inc())


@dataclass
class PushContainer:
    settings: PushSettings
    clock: Clock
    redis: object
    signer: TokenSigner
    access: Authenticator
    registry: CollectorRegistry
    repo: DeliveryRepository
    delivery: PushDelivery
    opens: DeliveryOpens
    routes: dict[str, str]
    hot_path: object = None


def build(settings: PushSettings, redis, clock: Clock, registry: CollectorRegistry, clients: ProviderClients,
          geo_http: httpx.AsyncClient, recommender_http: httpx.AsyncClient, *, hot_path=None,
          draw=None) -> PushContainer:
    repo = DeliveryRepository(redis, settings.customer_shards, settings.event_shards, settings.delivery_retention_s,
                              hot_path=hot_path, replica_wait=ReplicaWait(redis, settings.redis_url, settings.redis_wait_replicas,
                                                                          settings.redis_wait_ms, log),
                              erasure_key=settings.erasure_register_key())
    providers = build_providers(settings, clients)
    routes = routing_table(frozenset(providers))
    policy = RetryPolicy(max_attempts=settings.max_attempts, base_s=settings.retry_base_s, max_s=settings.retry_max_s)
    kw = {"draw": draw} if draw else {}
    own_key = service_key(settings.token_secret, SERVICE_KEY_NAME)[1]  # registered by the app at start
    delivery = PushDelivery(repo, providers, routes, GeoDevices(geo_http, own_key), clock, policy,
                            # a send takes at most: an OAuth exchange, the request, a refresh and the
                            # request again, each within the timeout; longer than that, its worker died
                            lease_s=settings.provider_timeout_s * 4 + 5,
                            send_deadline_s=settings.provider_timeout_s * 4,
                            provider_concurrency=settings.provider_concurrency, metrics=PushMetrics(registry), **kw)
    opens = DeliveryOpens(repo, RecommenderInteractions(recommender_http, own_key), clock)
    signer = TokenSigner(settings.token_secret)
    return PushContainer(settings=settings, clock=clock, redis=redis, signer=signer,
                         access=Authenticator(redis, settings.admin_token, signer, settings.token_secret,
                                                 RateLimiter(hot_path or redis, settings.rate_limit_policies())),
                         registry=registry, repo=repo, delivery=delivery, opens=opens, routes=routes, hot_path=hot_path)


def build_consumer(settings: PushSettings, redis, consumer: str, delivery: PushDelivery) -> StreamConsumer:
    streams = [push_jobs_stream_key(i) for i in range(settings.customer_shards)]
    return StreamConsumer(redis, streams, GROUP, consumer, PushJobHandler(delivery).handle,
                          dead_letter=dead_jobs_stream_of, batch=settings.concurrency,
                          concurrency=settings.concurrency, claim_idle_ms=settings.claim_idle_ms)


def dead_jobs_stream_of(jobs_stream: str) -> str:
    return dead_letter_of(jobs_stream)  # = contracts.deliveries.dead_jobs_stream_key(shard)

