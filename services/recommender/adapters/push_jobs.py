"""One push job queued outside any decision: a campaign's test send (POST
/v1/campaigns/{id}/test-sends). A decision's job is written by the decision's own script
(`decision_repository`), with the decision; a test send has no decision, no counters and no visit
to mark, so it is one append to the customer's shard's push-job stream, under the same last-resort
cap, what the cap trims counted the same way."""
from __future__ import annotations

from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import PushJobV1, push_jobs_stream_key
from vicino.services.kernel.contracts.streams import trimmed_unconsumed_key
from vicino.services.runtime.redis_client import ReplicaWait

from .decision_repository import PUSH_JOBS_MAXLEN
from ...runtime.redis_scripts import memory_guarded

# KEYS: the push-job stream, its trimmed-unconsumed counter. ARGV: maxlen, then the entry's
# field/value pairs. Returns the entry id.
_QUEUE = memory_guarded("""
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
if redis.call('XLEN', KEYS[1]) > tonumber(ARGV[1]) then
  local trimmed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
  if trimmed > 0 then redis.call('INCRBY', KEYS[2], trimmed) end
end
return id
""")


class PushJobQueue:
    def __init__(self, redis, customer_shards: int, replica_wait: ReplicaWait | None = None, *,
                 maxlen: int = PUSH_JOBS_MAXLEN) -> None:
        """`replica_wait`: `queue` returns once a replica has the job (as a decision's job)."""
        self._r = redis
        self.customer_shards = customer_shards
        self._replicated = replica_wait
        self._maxlen = maxlen
        self._queue = redis.register_script(_QUEUE)

    def stream_of(self, customer_id: str) -> str:
        return push_jobs_stream_key(customer_shard(customer_id, self.customer_shards))

    async def queue(self, job: PushJobV1) -> str:
        """Appends the job; returns its stream entry id."""
        stream = self.stream_of(job.customer_id)
        pairs = [x for field_value in job.to_stream_fields().items() for x in field_value]
        entry = await self._queue(keys=[stream, trimmed_unconsumed_key(stream)], args=[self._maxlen, *pairs])
        if self._replicated is not None:
            await self._replicated.after_write(stream)
        return entry.decode() if isinstance(entry, bytes) else entry
