"""A Redis hash whose every write is announced: the write, a sequence bump and a change-log
entry `{seq, op: upsert|delete, ids}` happen in one script, so a reader that keeps a copy (geo's
store index, the recommender's catalogue) never sees a change without its announcement. The
three keys must share a hash tag (one Cluster slot)."""
from __future__ import annotations

import orjson
from .redis_scripts import memory_guarded

_WRITE = memory_guarded("""
local out = {0}
local changed = 0
if ARGV[2] == 'upsert' then
  for i = 4, #ARGV, 2 do
    out[#out + 1] = redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  changed = 1
else
  for i = 4, #ARGV do
    local n = redis.call('HDEL', KEYS[1], ARGV[i])
    out[#out + 1] = n
    changed = changed + n
  end
end
if changed == 0 then return out end  -- deleting what does not exist: no change, no log entry
local seq = redis.call('INCR', KEYS[2])
out[1] = seq
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'op', ARGV[2], 'ids', ARGV[3])
return out
""")


class ChangeLoggedHash:
    def __init__(self, redis, hash_key: str, seq_key: str, changes_key: str, *, changes_maxlen: int,
                 chunk: int = 2000) -> None:
        self._keys = [hash_key, seq_key, changes_key]
        self._maxlen = changes_maxlen
        self._chunk = chunk  # entries per script: a long script blocks every other client
        self._write = redis.register_script(_WRITE)

    async def upsert(self, pairs: list[tuple[str, bytes]]) -> tuple[list[bool], list[int]]:
        """Writes (id, value) pairs; a created flag per pair, and the seq of each chunk's change."""
        created: list[bool] = []
        seqs: list[int] = []
        for start in range(0, len(pairs), self._chunk):
            chunk = pairs[start:start + self._chunk]
            args: list = [self._maxlen, "upsert", orjson.dumps([i for i, _ in chunk])]
            for i, value in chunk:
                args += [i, value]
            out = await self._write(keys=self._keys, args=args)
            seqs.append(int(out[0]))
            created += [bool(int(x)) for x in out[1:]]
        return created, seqs

    async def delete(self, entry_id: str) -> tuple[bool, int]:
        """(whether it existed, the change's seq; 0 when nothing changed)."""
        out = await self._write(keys=self._keys, args=[self._maxlen, "delete", orjson.dumps([entry_id]), entry_id])
        return bool(int(out[1])), int(out[0])
