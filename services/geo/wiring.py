"""The geo service's composition root: the one place that builds adapters and use cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from vicino.services.kernel.auth import TokenSigner
from vicino.services.runtime.rate_limit import RateLimiter
from vicino.services.runtime.api_keys import AuditTrail, Authenticator
from vicino.services.kernel.clock import Clock
from vicino.services.runtime.observability import LabelledChildren

from .adapters.device_repository import DeviceRepository
from .adapters.store_repository import StoreRepository
from .domain.transitions import TransitionPolicy
from .settings import GeoSettings
from .use_cases.devices import DeviceDirectory
from .use_cases.exit_sweep import ExitSweep
from .use_cases.index_sync import IndexSync
from .use_cases.manage_stores import StoreCatalogue
from .use_cases.region_sync import RegionSync
from .use_cases.report_fixes import FixReport, FixReporter, RecentDevices


class GeoMetrics:
    """Created once per app; the gauges read whichever index the running container holds."""

    def __init__(self, registry: CollectorRegistry, sync: Callable[[], IndexSync | None]) -> None:
        self.fixes = Counter("vicino_geo_fixes_total", "Fixes received, by outcome", ["outcome"], registry=registry)
        self.events = Counter("vicino_geo_events_total", "Visit events emitted", ["type"], registry=registry)
        self._fixes = LabelledChildren(self.fixes)
        self._events = LabelledChildren(self.events)
        self.timed_out = Counter("vicino_geo_visits_timed_out_total",
                                 "Visits ended by the exit sweep (no fix for the exit timeout)", registry=registry)
        stores = Gauge("vicino_geo_index_stores", "Stores in this replica's index", registry=registry)
        stores.set_function(lambda: len(sync().index) if sync() else 0)
        cells = Gauge("vicino_geo_index_cells", "H3 cells in this replica's index", registry=registry)
        cells.set_function(lambda: sync().index.cell_count if sync() else 0)
        seq = Gauge("vicino_geo_index_seq", "Last store change applied", registry=registry)
        seq.set_function(lambda: sync().last_seq if sync() else 0)

    def count(self, report: FixReport) -> None:
        if report.accepted:
            self._fixes("accepted").inc(report.accepted)
        for item in report.ignored:
            self._fixes(item["reason"]).inc()
        for e in report.events:
            self._events(e.type).inc()

    def count_swept(self, exits: list) -> None:
        self._events("exit").inc(len(exits))
        self.timed_out.inc(len(exits))


@dataclass
class GeoContainer:
    settings: GeoSettings
    clock: Clock
    redis: object
    signer: TokenSigner
    access: Authenticator
    audit: AuditTrail
    registry: CollectorRegistry
    sync: IndexSync
    catalogue: StoreCatalogue
    devices_repo: DeviceRepository
    directory: DeviceDirectory
    regions: RegionSync
    reporter: FixReporter
    sweep: ExitSweep
    metrics: GeoMetrics


def build(settings: GeoSettings, redis, clock: Clock, registry: CollectorRegistry, metrics: GeoMetrics,
          hot_path=None) -> GeoContainer:
    store_repo = StoreRepository(redis)
    sync = IndexSync(store_repo)
    devices = DeviceRepository(redis, settings.event_shards, settings.events_maxlen, hot_path)
    signer = TokenSigner(settings.token_secret)
    policy = TransitionPolicy(dwell_s=settings.dwell_s, exit_buffer_m=settings.exit_buffer_m,
                              exit_timeout_s=settings.exit_timeout_s, max_accuracy_m=settings.max_accuracy_m,
                              max_transitions_per_min=settings.max_transitions_per_min)
    return GeoContainer(
        settings=settings, clock=clock, redis=redis, signer=signer, registry=registry, sync=sync,
        access=Authenticator(redis, settings.admin_token, signer, settings.token_secret,
                             RateLimiter(hot_path or redis, settings.rate_limit_policies())),
        audit=AuditTrail(redis, settings.audit_retention_days, settings.token_secret),
        catalogue=StoreCatalogue(store_repo, sync), devices_repo=devices,
        directory=DeviceDirectory(devices, signer, clock, settings.device_token_ttl_s, settings.token_grace_s),
        regions=RegionSync(sync),
        reporter=FixReporter(devices, sync, policy, clock, settings.device_state_ttl_s,
                             RecentDevices(settings.device_cache_size)),
        sweep=ExitSweep(devices, policy, clock, settings.device_state_ttl_s, settings.event_shards),
        metrics=metrics,
    )
