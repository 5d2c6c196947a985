"""A batch of fixes from one device: consent check, transitions, one atomic save with events."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.kernel.auth import DeviceClaims
from services.kernel.clock import Clock
from services.kernel.contracts.geofence_events import GeofenceEventV1
from services.kernel.ids import new_id
from services.kernel.problems import Conflict, NotFound, Unauthorized

from ..adapters.device_repository import DeviceRepository
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
    ignored_counts: dict[str, int] = field(default_factory=dict)


class FixReporter:
    def __init__(self, devices: DeviceRepository, sync: IndexSync, policy: TransitionPolicy, clock: Clock,
                 state_ttl_s: float) -> None:
        self.devices = devices
        self.sync = sync
        self.policy = policy
        self.clock = clock
        self.state_ttl_s = state_ttl_s

    async def report(self, claims: DeviceClaims, fixes: list[Fix]) -> FixReport:
        device_id = claims.device_id
        snap = await self.devices.snapshot(device_id)
        for attempt in range(MAX_ATTEMPTS):
            reg = snap.registration
            if reg is None:
                raise NotFound(f"device {device_id!r} is not registered")
            if reg.token_id != claims.token_id:
                raise Unauthorized("this device token was replaced by a newer registration")
            if not reg.location_consent:
                return FixReport(0, [{"index": f.index, "reason": "no_location_consent"} for f in fixes], [],
                                 location_consent=False,
                                 detail="the customer has not consented to location processing; nothing was processed or stored")
            state = DeviceState.from_json(snap.state)
            before = state.last_ts
            outcome = evaluate(state, fixes, self.sync.index, self.policy, _mint_visit_id)
            now = self.clock.now()
            events = [GeofenceEventV1(event_id=new_id("gev"), type=t.type, device_id=device_id,
                                      customer_id=reg.customer_id, store_id=t.store_id, visit_id=t.visit_id,
                                      ts=t.ts, emitted_at=now, dwell_s=t.dwell_s, exit_reason=t.exit_reason)
                      for t in outcome.transitions]
            ignored = [{"index": i.index, "reason": i.reason} for i in sorted(outcome.ignored, key=lambda i: i.index)]
            if outcome.state.last_ts == before and not events:
                return FixReport(outcome.accepted, ignored, [])
            if await self.devices.save_state(device_id, snap.rev, outcome.state.to_json(), self.state_ttl_s, events,
                                             claims.token_id):
                return FixReport(outcome.accepted, ignored, events)
            snap = await self.devices.snapshot(device_id)  # another request won the race: redo on its state
        raise Conflict("too many concurrent location reports for this device; retry")


def _mint_visit_id() -> str:
    return new_id("vis")
