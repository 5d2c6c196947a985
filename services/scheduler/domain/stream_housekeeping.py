"""Which stream entries may go and which are stuck: pure decisions over what XINFO and
XPENDING report.

An entry may be trimmed once every consumer group that must read it has acknowledged it (it
is below each group's oldest pending entry and at or below its last delivered one) and it is
older than what the stream must keep. Past a hard cap on its length, the oldest entries go even
though a group still needs them; the caller counts and reports them. A pending entry delivered `max_deliveries` times without
an acknowledgement crashed or hung every consumer that took it: it is moved to the dead letters
so that it stops coming back. Consumers with nothing pending that have been idle for long are
names of stopped processes (consumers are named host-pid): they are removed.
"""
from __future__ import annotations

from dataclasses import dataclass


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(parsed: tuple[int, int]) -> str:
    return f"{parsed[0]}-{parsed[1]}"


def next_id(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return format_id((ms, seq + 1))


@dataclass(frozen=True)
class GroupState:
    name: str
    last_delivered_id: str
    oldest_pending_id: str | None  # None: nothing pending


def consumed_below(groups: list[GroupState], required: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(MINID, None) below which every required group is done with the entries, or (None, why)."""
    by_name = {g.name: g for g in groups}
    missing = [name for name in required if name not in by_name]
    if missing:
        # a consumer that has never started has read nothing: keep everything for it
        return None, f"group {', '.join(missing)} does not exist yet"
    bounds = []
    for name in required:
        g = by_name[name]
        bounds.append(parse_id(g.oldest_pending_id) if g.oldest_pending_id else parse_id(next_id(g.last_delivered_id)))
    return format_id(min(bounds)), None


def trim_bound(consumed: str | None, keep_s: float | None, now: float) -> str | None:
    """The MINID to trim at: below what is consumed (when groups must read the stream) and older
    than `keep_s` (when the stream must keep its entries that long); None when nothing may go."""
    bounds = []
    if consumed is not None:
        bounds.append(parse_id(consumed))
    if keep_s is not None:
        bounds.append((max(0, int((now - keep_s) * 1000)), 0))
    if not bounds:
        return None
    return format_id(min(bounds))


def past_hard_cap(length: int, hard_cap: int) -> int:
    """How many entries, all still needed by a group (they are above what every group consumed),
    must go so that the stream holds `hard_cap`: memory over completeness, said out loud."""
    return max(0, length - hard_cap)


@dataclass(frozen=True)
class PendingEntry:
    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


def stuck_entries(pending: list[PendingEntry], *, stuck_after_ms: int, max_deliveries: int
                  ) -> tuple[list[PendingEntry], list[PendingEntry]]:
    """(to dead-letter, waiting): entries idle past `stuck_after_ms`, split by whether they were
    delivered `max_deliveries` times already. Waiting ones are a live consumer's to reclaim
    (XAUTOCLAIM); they are reported, not touched."""
    idle = [p for p in pending if p.idle_ms >= stuck_after_ms]
    bury = [p for p in idle if p.deliveries >= max_deliveries]
    return bury, [p for p in idle if p.deliveries < max_deliveries]


@dataclass(frozen=True)
class ConsumerState:
    name: str
    pending: int
    idle_ms: int


def departed_consumers(consumers: list[ConsumerState], idle_after_ms: int) -> list[str]:
    return [c.name for c in consumers if c.pending == 0 and c.idle_ms >= idle_after_ms]
