"""Visit transitions per device and store, from (was inside, is inside), with dwell and hysteresis.

Pure: the caller hands in the device's state, its fixes, a view of the fences and a way to
mint ids; it gets back the new state, the events and the fixes it ignored. The geo service
loads and saves the state around this; tests drive it directly.

- enter: a fix inside a fence that accepts visits, with no open visit there; mints a visit id.
- dwell: once per visit, after `dwell_s` of continuous presence (inside, or within the exit
  buffer of, the fence).
- exit: a fix farther outside than max(exit buffer, fix accuracy), or `exit_timeout_s`
  without an inside fix, or the store was removed.
Fixes older than the last processed one, or with the same timestamp, are ignored; so are
fixes less accurate than `max_accuracy_m` (they cause no transition at all).

A device makes at most `max_transitions_per_min` transitions per minute of server time: a fix
that would make more is ignored whole (reason `transition_rate`), so one device alternating in
and out of a fence cannot flood the event stream it shares with other devices. The count lives
in the device state, so it is as atomic as the state itself (compare-and-set on save).
`expire_silent` ends the visits of a device that has gone silent (the periodic sweep).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Protocol, Sequence

from .stores import Store

EventType = Literal["enter", "dwell", "exit"]


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    accuracy_m: float
    ts: float
    index: int = 0  # position in the client's batch, for reporting


@dataclass(frozen=True, slots=True)
class TransitionPolicy:
    dwell_s: float = 300.0
    exit_buffer_m: float = 30.0
    exit_timeout_s: float = 900.0
    max_accuracy_m: float = 200.0
    max_transitions_per_min: int = 30


@dataclass(slots=True)
class Visit:
    visit_id: str
    entered_at: float
    last_inside_at: float
    dwell_fired: bool = False


@dataclass(slots=True)
class DeviceState:
    last_ts: float | None = None
    visits: dict[str, Visit] = field(default_factory=dict)
    rate_minute: int | None = None  # the server minute (epoch // 60) that `rate_used` counts
    rate_used: int = 0

    def to_json(self) -> dict:
        out = {"t": self.last_ts,
               "v": {sid: [v.visit_id, v.entered_at, v.last_inside_at, v.dwell_fired]
                     for sid, v in self.visits.items()}}
        if self.rate_minute is not None:
            out["m"] = [self.rate_minute, self.rate_used]
        return out

    @classmethod
    def from_json(cls, raw: dict | None) -> "DeviceState":
        if not raw:
            return cls()
        minute, used = raw.get("m") or (None, 0)
        return cls(raw.get("t"), {sid: Visit(v[0], v[1], v[2], bool(v[3]))
                                  for sid, v in (raw.get("v") or {}).items()}, minute, used)

    def silent_since(self) -> float | None:
        """The oldest last-inside time of the open visits (what the exit sweep indexes), or None."""
        return min((v.last_inside_at for v in self.visits.values()), default=None)


@dataclass(frozen=True, slots=True)
class Transition:
    type: EventType
    store_id: str
    visit_id: str
    ts: float
    dwell_s: float | None = None
    exit_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    index: int
    reason: Literal["duplicate", "out_of_order", "low_accuracy", "transition_rate"]


class FenceView(Protocol):
    def containing(self, lat: float, lon: float) -> Sequence[Store]: ...
    def get(self, store_id: str) -> Store | None: ...


@dataclass(slots=True)
class Outcome:
    state: DeviceState
    transitions: list[Transition]
    ignored: list[Ignored]
    accepted: int


def evaluate(state: DeviceState, fixes: Iterable[Fix], fences: FenceView, policy: TransitionPolicy,
             mint_visit_id: Callable[[], str], now: float | None = None) -> Outcome:
    """Apply fixes in time order (a batch is sorted first; ties keep the client's order).

    `now` is the server time the transition cap counts against (None: no cap, e.g. replays)."""
    transitions: list[Transition] = []
    ignored: list[Ignored] = []
    accepted = 0
    visits = state.visits
    last_ts = state.last_ts
    max_acc = policy.max_accuracy_m
    budget = None  # transitions still allowed this minute; None: uncapped
    if now is not None:
        minute = int(now // 60)
        if state.rate_minute != minute:
            state.rate_minute, state.rate_used = minute, 0
        budget = policy.max_transitions_per_min - state.rate_used
    for fix in sorted(fixes, key=_by_ts):
        ts = fix.ts
        if last_ts is not None and ts <= last_ts:
            ignored.append(Ignored(fix.index, "duplicate" if ts == last_ts else "out_of_order"))
            continue
        last_ts = ts
        if fix.accuracy_m > max_acc:
            ignored.append(Ignored(fix.index, "low_accuracy"))
            continue
        inside = fences.containing(fix.lat, fix.lon)
        # One fix makes at most one transition per store it is in plus one per open visit; when
        # that could exceed the budget, work on a copy and drop the fix whole if it does.
        undo = None
        if budget is not None and budget - len(transitions) < len(inside) + len(visits):
            undo = {sid: Visit(v.visit_id, v.entered_at, v.last_inside_at, v.dwell_fired) for sid, v in visits.items()}
            mark = len(transitions)
        accepted += 1
        inside_ids = set()
        for store in inside:
            sid = store.store_id
            inside_ids.add(sid)
            visit = visits.get(sid)
            if visit is not None:
                visit.last_inside_at = ts
            elif store.accepts_visits(ts):
                visits[sid] = Visit(mint_visit_id(), ts, ts)
                transitions.append(Transition("enter", sid, visits[sid].visit_id, ts))
        if visits:
            for sid in list(visits):
                visit = visits[sid]
                store = fences.get(sid)
                if sid not in inside_ids:
                    exit_reason = _exit_reason(store, visit, fix, policy)
                    if exit_reason is not None:
                        del visits[sid]
                        end = visit.last_inside_at if exit_reason == "timeout" else ts
                        transitions.append(Transition("exit", sid, visit.visit_id, ts,
                                                      dwell_s=end - visit.entered_at, exit_reason=exit_reason))
                        continue
                if not visit.dwell_fired and store is not None:
                    threshold = store.dwell_s if store.dwell_s is not None else policy.dwell_s
                    if ts - visit.entered_at >= threshold and store.accepts_visits(ts):
                        visit.dwell_fired = True
                        transitions.append(Transition("dwell", sid, visit.visit_id, ts, dwell_s=ts - visit.entered_at))
        if undo is not None and len(transitions) > budget:
            visits.clear()
            visits.update(undo)
            del transitions[mark:]
            accepted -= 1
            ignored.append(Ignored(fix.index, "transition_rate"))
    if budget is not None:
        state.rate_used += len(transitions)
    state.last_ts = last_ts
    return Outcome(state, transitions, ignored, accepted)


def expire_silent(state: DeviceState, now: float, policy: TransitionPolicy) -> list[Transition]:
    """End the visits without an inside fix for more than `exit_timeout_s` of server time (the
    sweep, for phones that stopped reporting). The exit is dated when the visit timed out, and
    its dwell is the time last seen inside, as for a timeout found by a later fix."""
    out = []
    for sid, visit in list(state.visits.items()):
        if now - visit.last_inside_at > policy.exit_timeout_s:
            del state.visits[sid]
            out.append(Transition("exit", sid, visit.visit_id, visit.last_inside_at + policy.exit_timeout_s,
                                  dwell_s=visit.last_inside_at - visit.entered_at, exit_reason="timeout"))
    return out


def close_all(state: DeviceState, ts: float, reason: str) -> list[Transition]:
    """End every open visit at once (consent withdrawn, device erased)."""
    out = [Transition("exit", sid, v.visit_id, ts, dwell_s=max(0.0, v.last_inside_at - v.entered_at),
                      exit_reason=reason) for sid, v in state.visits.items()]
    state.visits.clear()
    return out


def _by_ts(fix: Fix) -> float:
    return fix.ts


def _exit_reason(store: Store | None, visit: Visit, fix: Fix, policy: TransitionPolicy) -> str | None:
    if store is None:
        return "store_removed"
    if fix.ts - visit.last_inside_at > policy.exit_timeout_s:
        return "timeout"
    # Hysteresis: a fix must be clearly outside, by more than the buffer and its own error.
    if store.fence.distance_outside_m(fix.lat, fix.lon) > max(policy.exit_buffer_m, fix.accuracy_m):
        return "left"
    return None
