"""The run lock (one run of a job at a time across every scheduler replica and `vicino jobs
run`) and the run log behind GET /v1/jobs."""
from __future__ import annotations

import orjson

from ..domain.runs import JobRun
from .redis_keys import LAST, LAST_OK, lock_key, occurrence_key, runs_key
from ...runtime.redis_scripts import memory_guarded

KEEP_RUNS = 50

# KEYS: lock, occurrence, last. ARGV: token, lease ms, occurrence ('' for a manual run), job,
# run JSON. Returns 1 (acquired and recorded as running), 0 (another run holds the lock) or -1
# (this occurrence was claimed already: another replica ran it).
_BEGIN = memory_guarded("""
if ARGV[3] ~= '' then
  local done = redis.call('GET', KEYS[2])
  if done and done >= ARGV[3] then return -1 end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
return 1
""")
# KEYS: lock. ARGV: token, lease ms. 1 when still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, last, last_ok, runs. ARGV: token, job, run JSON, ok ('1'/'0'), keep.
_END = memory_guarded("""
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) end
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")


class RunStore:
    def __init__(self, redis) -> None:
        self._r = redis
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._end = redis.register_script(_END)

    async def begin(self, run: JobRun, lease_s: float, occurrence: tuple[str, str] | None) -> int:
        """`occurrence`: (schedule kind, occurrence) of a scheduled run; None for a manual one."""
        kind, occ = occurrence or ("manual", "")
        return int(await self._begin(keys=[lock_key(run.job), occurrence_key(run.job, kind), LAST],
                                     args=[self._token_of(run), int(lease_s * 1000), occ, run.job,
                                           orjson.dumps(run.to_dict())]))

    async def renew(self, run: JobRun, lease_s: float) -> bool:
        return bool(await self._renew(keys=[lock_key(run.job)], args=[self._token_of(run), int(lease_s * 1000)]))

    async def end(self, run: JobRun) -> None:
        await self._end(keys=[lock_key(run.job), LAST, LAST_OK, runs_key(run.job)],
                        args=[self._token_of(run), run.job, orjson.dumps(run.to_dict(), default=str),
                              "1" if run.outcome == "ok" else "0", KEEP_RUNS])

    @staticmethod
    def _token_of(run: JobRun) -> bytes:
        return orjson.dumps({"run_id": run.run_id, "host": run.host, "started_at": run.started_at})

    async def holder(self, job: str) -> dict | None:
        raw = await self._r.get(lock_key(job))
        return orjson.loads(raw) if raw else None

    async def last_runs(self, jobs: list[str]) -> dict[str, tuple[JobRun | None, JobRun | None]]:
        """job -> (latest run as seen now, latest successful run)."""
        if not jobs:
            return {}
        last = await self._r.hmget(LAST, jobs)
        ok = await self._r.hmget(LAST_OK, jobs)
        held = [await self._r.exists(lock_key(j)) for j in jobs]
        out = {}
        for job, raw, raw_ok, h in zip(jobs, last, ok, held):
            run = JobRun.from_dict(orjson.loads(raw)).as_seen(bool(h)) if raw else None
            out[job] = (run, JobRun.from_dict(orjson.loads(raw_ok)) if raw_ok else None)
        return out

    async def history(self, job: str, n: int) -> list[JobRun]:
        return [JobRun.from_dict(orjson.loads(raw)) for raw in await self._r.lrange(runs_key(job), 0, n - 1)]
