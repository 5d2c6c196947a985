"""Delivering one push job: load (or create) its delivery, ask the domain what to do, do it,
record the outcome. Safe to run twice for one job, on two workers at once, or after a crash at
any point: every change of the record is a compare-and-set, and the `sending` mark written
before the provider call means a push is never sent twice."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from typing import Callable

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.customer_state import push_token_digest
from vicino.services.kernel.contracts.deliveries import delivery_id_for
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import PushJobV1
from vicino.services.runtime.stream_consumer import NotYet

from ..adapters.delivery_repository import DeliveryRepository
from ..adapters.providers.base import PushProvider
from ..adapters.service_clients import GeoDevices
from ..domain.delivery import (Close, DeliveryRecord, Done, RevokeToken, Send, Wait, after_send, closed,
                               next_step, recipient_token, sending, token_revoked)
from ..domain.messages import notification_for
from ..domain.outcomes import RetryLater
from ..domain.retry_policy import RetryPolicy

log = logging.getLogger("vicino.push.deliver")

MAX_ROUNDS = 8  # compare-and-set retries when another worker changes the same delivery


@dataclass
class DeliveryMetrics:
    """Hooks for the Prometheus counters (no-ops in tests that don't look)."""

    on_status: Callable[[str, str], None] = lambda provider, status: None
    on_send: Callable[[str, float], None] = lambda provider, seconds: None
    on_alert: Callable[[str, str], None] = lambda provider, reason: None


class PushDelivery:
    def __init__(self, repo: DeliveryRepository, providers: dict[str, PushProvider], routes: dict[str, str],
                 geo: GeoDevices, clock: Clock, policy: RetryPolicy, lease_s: float, provider_concurrency: int = 128,
                 draw: Callable[[], float] = random.random, metrics: DeliveryMetrics | None = None,
                 send_deadline_s: float | None = None) -> None:
        """`send_deadline_s`: the longest one provider call may take, whatever it does inside (token
        exchanges, a refresh and the request again, waits on a lock): shorter than `lease_s`, so a
        send still running is never taken for one whose worker died."""
        self.repo = repo
        self.providers = providers
        self.routes = routes
        self.geo = geo
        self.clock = clock
        self.policy = policy
        self.lease_s = lease_s
        self.send_deadline_s = send_deadline_s
        self.draw = draw
        self.metrics = metrics or DeliveryMetrics()
        # requests in flight per provider; a job waits for its slot *before* it is marked
        # `sending`, so the lease measures the send alone
        self._slots = {name: asyncio.Semaphore(min(provider_concurrency,
                                                   getattr(p, "max_in_flight", provider_concurrency)))
                       for name, p in providers.items()}

    async def handle(self, job: PushJobV1) -> DeliveryRecord | None:
        """Moves the job's delivery as far as it can go now. Raises `NotYet` when it must wait (a
        retry time, another worker's send in flight). None: the customer was erased."""
        now = self.clock.now()
        delivery_id = delivery_id_for(job.idempotency_key, customer_shard(job.customer_id, self.repo.customer_shards))
        who = await self.repo.recipient(job.customer_id, job.device_id)
        if who.erased_at is not None and who.erased_at >= job.created_at:
            return None  # queued before the erasure: keep no trace
        rec, ended, _ = await self.repo.begin(job, DeliveryRecord.from_job(job, delivery_id, now), now)
        for _ in range(MAX_ROUNDS):
            now = self.clock.now()
            step = next_step(rec, now, ended)
            if isinstance(step, Done):
                return rec
            if isinstance(step, Wait):
                raise NotYet(step.seconds)
            if isinstance(step, RevokeToken):
                saved = await self._revoke(job, rec)
            elif isinstance(step, Close):
                saved = await self._save(rec, closed(rec, step, now), now, provider=rec.provider or "-")
            else:
                assert isinstance(step, Send)
                target = recipient_token(who.registration, who.marketing_consent, owner_is_job_customer=(
                    await self._owned_by_job_customer(job, who.registration)))
                if isinstance(target, Close):
                    saved = await self._save(rec, closed(rec, target, now), now, provider="-")
                else:
                    saved = await self._send(job, rec, target)
            if saved is not None and saved.status != "sending":
                rec = saved
                continue
            # someone else changed the record (or erased it): read it again
            rec, ended, _ = await self.repo.begin(job, DeliveryRecord.from_job(job, delivery_id, now), now)
            if saved is None and (await self.repo.erased_at(job.customer_id)) is not None:
                return None
        raise RuntimeError(f"delivery {delivery_id} kept changing under this worker")

    async def _save(self, before: DeliveryRecord, after: DeliveryRecord, now: float, *, provider: str,
                    receipt: str | None = "status", dead_job: PushJobV1 | None = None,
                    dead_reason: str = "") -> DeliveryRecord | None:
        out = await self.repo.save(before, after, now, receipt=after.status if receipt == "status" else receipt,
                                   dead_job=dead_job, dead_reason=dead_reason)
        if out != "ok":
            return None
        if receipt and after.status != before.status:
            self.metrics.on_status(provider, after.status)
            # one line per push at volume costs as much CPU as a Redis round trip: routine outcomes
            # are counted in the metrics and logged at DEBUG, the others at INFO
            level = logging.DEBUG if after.status in ("sent", "queued") and after.confirmed else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "delivery " + after.status, extra={"fields": {
                    "delivery_id": after.delivery_id, "provider": provider, "reason": after.reason,
                    "attempts": after.attempts}})
        return after

    async def _owned_by_job_customer(self, job: PushJobV1, registration: dict | None) -> bool:
        """Whether the device's current registration names the job's customer. The job names the
        canonical customer (the recommender resolves merges): a registration under an id merged
        into it since is still the same person."""
        if registration is None:
            return True  # recipient_token says why not to send
        owner = registration.get("customer_id") or ""
        if owner == job.customer_id:
            return True
        return await self.repo.canonical(owner) == await self.repo.canonical(job.customer_id)

    async def _send(self, job: PushJobV1, rec: DeliveryRecord, token: str) -> DeliveryRecord | None:
        provider = self.providers[self.routes[job.platform]]
        async with self._slots[provider.name]:
            return await self._send_now(job, rec, token, provider)

    async def _send_now(self, job: PushJobV1, rec: DeliveryRecord, token: str,
                        provider: PushProvider) -> DeliveryRecord | None:
        now = self.clock.now()
        marked = sending(rec, provider.name, now, self.lease_s)
        if await self.repo.save(rec, marked, now, receipt=None) != "ok":
            return None  # another worker got there first
        # the `sending` mark must survive a failover before anything is sent: a replica promoted
        # without it would send the push again. If the wait itself fails (the master just died),
        # send anyway: raising here would leave the delivery `sending` with nothing sent, and
        # its lease would turn it into a push never sent
        try:
            await self.repo.replicated(job.customer_id)
        except Exception as e:  # noqa: BLE001 - logged; the send goes on
            log.warning("sending mark not confirmed by a replica; sending anyway",
                        extra={"fields": {"error": repr(e)[:300]}})
        started = self.clock.now()
        try:
            async with asyncio.timeout(self.send_deadline_s):
                outcome = await provider.send(notification_for(job, rec.delivery_id, token), marked.attempts)
        except TimeoutError:
            outcome = RetryLater(f"{provider.name}: no outcome within {self.send_deadline_s:g} s; outcome unknown, "
                                 "retried under the same collapse id")
        except Exception as e:  # a provider bug must not leave the delivery stuck "sending"
            log.exception("provider raised", extra={"fields": {"provider": provider.name}})
            outcome = RetryLater(f"{provider.name}: internal error {type(e).__name__}")
        now = self.clock.now()
        self.metrics.on_send(provider.name, now - started)
        after = after_send(marked, outcome, self.policy, now, self.draw())
        if after.alert:
            self.metrics.on_alert(provider.name, after.record.reason or "")
            log.error("provider refused our credentials", extra={"fields": {"provider": provider.name,
                                                                             "reason": after.record.reason}})
        record = after.record
        if record.token_cleanup_pending:
            # records keep the digest of the token a provider refused, never the token
            record = replace(record, refused_token_sha256=push_token_digest(token))
        saved = await self._save(marked, record, now, provider=provider.name,
                                 dead_job=job if after.dead_letter else None, dead_reason=after.dead_letter or "")
        return saved if saved is not None else marked  # lost the record: the next round reads it again

    async def _revoke(self, job: PushJobV1, rec: DeliveryRecord) -> DeliveryRecord | None:
        # geo removes the token only if it is still the device's (not a newer registration's)
        digest = rec.refused_token_sha256 or push_token_digest(job.push_token)
        await self.geo.revoke_push_token(job.device_id, digest, rec.reason or "token_invalid")
        return await self._save(rec, token_revoked(rec), self.clock.now(), provider=rec.provider or "-",
                                receipt=None)

