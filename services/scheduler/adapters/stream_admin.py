"""The stream commands of the housekeeping jobs, one stream at a time (on a Redis Cluster each
stream lives in its own slot; a stream's dead letters share its hash tag)."""
from __future__ import annotations

from redis.exceptions import ResponseError

from vicino.services.kernel.contracts.streams import trimmed_unconsumed_key

from ..domain.stream_housekeeping import ConsumerState, GroupState, PendingEntry

SCHEDULER_CONSUMER = "vicino-scheduler"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _d(info: dict) -> dict:
    return {_s(k): v for k, v in info.items()}


class StreamAdmin:
    def __init__(self, redis) -> None:
        self._r = redis

    async def exists(self, stream: str) -> bool:
        return bool(await self._r.exists(stream))

    async def groups(self, stream: str) -> list[GroupState]:
        try:
            infos = await self._r.xinfo_groups(stream)
        except ResponseError as e:  # no such key
            if "no such key" in str(e).lower():
                return []
            raise
        out = []
        for info in map(_d, infos):
            name = _s(info["name"])
            oldest = None
            if int(info.get("pending") or 0):
                summary = await self._r.xpending(stream, name)
                oldest = _s(summary["min"]) if summary and summary.get("min") else None
            out.append(GroupState(name, _s(info["last-delivered-id"]), oldest))
        return out

    async def consumers(self, stream: str, group: str) -> list[ConsumerState]:
        return [ConsumerState(_s(c["name"]), int(c["pending"]), int(c["idle"]))
                for c in map(_d, await self._r.xinfo_consumers(stream, group))]

    async def delete_consumer(self, stream: str, group: str, consumer: str) -> None:
        await self._r.xgroup_delconsumer(stream, group, consumer)

    async def pending(self, stream: str, group: str, min_idle_ms: int, count: int) -> list[PendingEntry]:
        rows = await self._r.xpending_range(stream, group, min="-", max="+", count=count, idle=min_idle_ms)
        return [PendingEntry(_s(p["message_id"]), _s(p["consumer"]), int(p["time_since_delivered"]),
                             int(p["times_delivered"])) for p in rows]

    async def bury(self, stream: str, group: str, dead_letter: str, entry: PendingEntry, reason: str) -> bool:
        """Claim the entry (only if still idle: a consumer may have just taken it), copy it to the
        dead letters, acknowledge it. False when someone else has it now."""
        claimed = await self._r.xclaim(stream, group, SCHEDULER_CONSUMER, max(0, entry.idle_ms - 1000),
                                       [entry.entry_id])
        if not claimed:
            return False
        entry_id, fields = claimed[0]
        if fields:  # None/empty: deleted since (an erasure): only the acknowledgement is left to do
            await self._r.xadd(dead_letter, {**{_s(k): v for k, v in fields.items()}, "dead_reason": reason,
                                             "dead_from": _s(entry_id), "dead_group": group},
                               maxlen=100_000, approximate=True)
        await self._r.xack(stream, group, entry.entry_id)
        return True

    async def trim(self, stream: str, minid: str) -> int:
        # exact, so that entries deleted by an erasure (XDEL leaves their bytes in the node) go
        # with their neighbours instead of waiting for a whole node to age out
        return int(await self._r.xtrim(stream, minid=minid, approximate=False))

    async def trim_to_length(self, stream: str, maxlen: int) -> int:
        return int(await self._r.xtrim(stream, maxlen=maxlen, approximate=False))

    async def count_trimmed_unconsumed(self, stream: str, n: int) -> None:
        """The stream's counter of entries trimmed while a group needed them (the consumers' /metrics
        export it as vicino_stream_trimmed_unconsumed_total)."""
        await self._r.incrby(trimmed_unconsumed_key(stream), n)

    async def length(self, stream: str) -> int:
        return int(await self._r.xlen(stream))
