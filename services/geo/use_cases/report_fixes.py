"""A batch of fixes from one device: consent check, transitions, one atomic save with events."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vicino.services.kernel.auth import REPLACED_TOKEN, DeviceClaims
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.ids import new_id
from vicino.services.kernel.problems import Conflict, NotFound, Unauthorized

from ..adapters.device_repository import DeviceRepository, Snapshot
from ..domain.transitions import DeviceState, Fix, TransitionPolicy, evaluate
from .index_sync import IndexSync

MAX_ATTEMPTS = 8


@dataclass
class FixReport:
    accepted: int
    ignored: list[dict]
    events: list[GeofenceEventV1]
    location_consent: bool = True
    detail: str | None = None


class RecentDevices:
    """What this replica last saw of recently active devices (snapshot after its own save).

    Purely a saving of one Redis round trip per request: the save script checks the revision,
    the token and the consent atomically, and hands back the current snapshot when any of them
    moved on (another replica, a consent change, a re-registration), so a stale entry costs a
    retry, never a wrong answer. Bounded, least recently used out first.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Snapshot] = OrderedDict()

    def get(self, device_id: str) -> Snapshot | None:
        snap = self._entries.get(device_id)
        if snap is not None:
            self._entries.move_to_end(device_id)
        return snap

    def put(self, device_id: str, snap: Snapshot) -> None:
        if self.capacity <= 0:
            return
        self._entries[device_id] = snap
        self._entries.move_to_end(device_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, device_id: str) -> None:
        self._entries.pop(device_id, None)


class FixReporter:
    def __init__(self, devices: DeviceRepository, sync: IndexSync, policy: TransitionPolicy, clock: Clock,
                 state_ttl_s: float, recent: RecentDevices | None = None) -> None:
        self.devices = devices
        self.sync = sync
        self.policy = policy
        self.clock = clock
        self.state_ttl_s = state_ttl_s
        self.recent = recent or RecentDevices(0)

    async def report(self, claims: DeviceClaims, fixes: list[Fix]) -> FixReport:
        device_id = claims.device_id
        snap = self.recent.get(device_id)
        if snap is None or not _usable(snap, claims, self.clock.now()):
            snap = await self.devices.snapshot(device_id)  # a cached refusal is never trusted: re-read
        for attempt in range(MAX_ATTEMPTS):
            reg = snap.registration
            if reg is None:
                self.recent.drop(device_id)
                raise NotFound(f"device {device_id!r} is not registered")
            if not reg.accepts(claims.token_id, self.clock.now()):
                self.recent.drop(device_id)
                raise Unauthorized(REPLACED_TOKEN)
            if not reg.location_consent:
                self.recent.drop(device_id)
                return FixReport(0, [{"index": f.index, "reason": "no_location_consent"} for f in fixes], [],
                                 location_consent=False,
                                 detail="the customer has not consented to location processing; nothing was processed or stored")
            state = DeviceState.from_json(snap.state)
            before = state.last_ts
            now = self.clock.now()
            outcome = evaluate(state, fixes, self.sync.index, self.policy, _mint_visit_id, now)
            events = [GeofenceEventV1(event_id=new_id("gev"), type=t.type, device_id=device_id,
                                      customer_id=reg.customer_id, store_id=t.store_id, visit_id=t.visit_id,
                                      ts=t.ts, emitted_at=now, dwell_s=t.dwell_s, exit_reason=t.exit_reason)
                      for t in outcome.transitions]
            ignored = [{"index": i.index, "reason": i.reason} for i in sorted(outcome.ignored, key=lambda i: i.index)]
            if outcome.state.last_ts == before and not events:
                return FixReport(outcome.accepted, ignored, [])
            new_state = outcome.state.to_json()
            # saved only while the registration's current token is still the one just checked
            result = await self.devices.save_state(device_id, snap.rev, new_state, self.state_ttl_s, events,
                                                   reg.token_id)
            if result.saved:
                self.recent.put(device_id, Snapshot(reg, result.rev, new_state))
                return FixReport(outcome.accepted, ignored, events)
            snap = result.current  # another request, replica or consent change won: redo on what is there now
        self.recent.drop(device_id)
        raise Conflict("too many concurrent location reports for this device; retry")


def _usable(snap: Snapshot, claims: DeviceClaims, now: float) -> bool:
    reg = snap.registration
    return reg is not None and reg.accepts(claims.token_id, now) and reg.location_consent


def _mint_visit_id() -> str:
    return new_id("vis")
