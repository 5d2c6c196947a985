"""Ends the visits of phones that went silent: an `exit` with reason `timeout` once a visit has
had no inside fix for `exit_timeout_s`, so visit durations and footfall do not wait for a fix
that may never come.

Each shard keeps a sorted set of its devices with an open visit, scored by their oldest
last-inside time (written by the same script that saves the state). Every replica sweeps; the
save is the same compare-and-set as a location report's, so when two replicas (or a sweep and
a late fix) race on a device, one saves and the other re-reads a state with no visit left to
end: an exit is emitted once.
"""
from __future__ import annotations

import asyncio
import logging

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.ids import new_id

from ..adapters.device_repository import DeviceRepository
from ..domain.transitions import DeviceState, TransitionPolicy, expire_silent

log = logging.getLogger("vicino.geo.exit_sweep")

MAX_ATTEMPTS = 8
BATCH = 500        # devices read per shard per round
MAX_ROUNDS = 20    # rounds per shard per pass; what is left waits for the next pass


class ExitSweep:
    def __init__(self, devices: DeviceRepository, policy: TransitionPolicy, clock: Clock, state_ttl_s: float,
                 shards: int) -> None:
        self.devices = devices
        self.policy = policy
        self.clock = clock
        self.state_ttl_s = state_ttl_s
        self.shards = shards

    async def sweep_once(self) -> list[GeofenceEventV1]:
        """One pass over every shard; returns the exits it emitted."""
        now = self.clock.now()
        before = now - self.policy.exit_timeout_s
        emitted: list[GeofenceEventV1] = []
        for shard in range(self.shards):
            for _ in range(MAX_ROUNDS):
                due = await self.devices.silent_devices(shard, before, BATCH)
                for device_id in due:
                    emitted += await self._expire(device_id, now, before)
                if len(due) < BATCH:
                    break
        return emitted

    async def _expire(self, device_id: str, now: float, before: float) -> list[GeofenceEventV1]:
        snap = await self.devices.snapshot(device_id)
        for _ in range(MAX_ATTEMPTS):
            reg = snap.registration
            if reg is None or not reg.location_consent or not snap.state:
                break  # visits were already closed by the unregistration / withdrawal, or the state expired
            state = DeviceState.from_json(snap.state)
            timed_out = expire_silent(state, now, self.policy)
            if not timed_out:
                break  # a fix (or another replica) got there first; its save re-scored the entry
            events = [GeofenceEventV1(event_id=new_id("gev"), type="exit", device_id=device_id,
                                      customer_id=reg.customer_id, store_id=t.store_id, visit_id=t.visit_id,
                                      ts=t.ts, emitted_at=now, dwell_s=t.dwell_s, exit_reason=t.exit_reason)
                      for t in timed_out]
            result = await self.devices.save_state(device_id, snap.rev, state.to_json(), self.state_ttl_s, events,
                                                   reg.token_id)
            if result.saved:
                return events
            snap = result.current
        await self.devices.forget_silent(device_id, before)
        return []

    async def run(self, stop: asyncio.Event, interval_s: float, on_exits=None) -> None:
        """Sweeps every `interval_s` until `stop` is set; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                exits = await self.sweep_once()
                if exits and on_exits is not None:
                    on_exits(exits)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("exit sweep failed; retrying at the next interval")
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
