"""Devices, consent and visit state in Redis.

A device's registration carries a copy of its customer's location consent, written whenever
the consent changes, so that a location request reads registration and visit state in one
script on one slot and saves with one compare-and-set script that also appends the events.

Consent (`{cust:<id>}`) and the copies (`{geo:NNN}`, one slot per device) live in different
Cluster slots, so no one script can change them all. A consent change is therefore versioned
steps (`set_consent`), each one script, ordered so that every moment between them, and a crash
between them, is as strict as the old or the new consent, never looser:
1. allocate the change's version (`seq` in the consent hash);
2. a withdrawal of location consent first turns every device's copy off;
3. the consent itself, its log entry, and the set of devices, in one script (a change older than
   the one already applied is not applied: the later change wins everywhere);
4. every device's copy takes the new value.
A copy is written only by a version at least as new as its own (`consent_v`), so two concurrent
changes end with the later one on the consent and on every copy, whatever their interleaving.
The workers check consent itself (step 3) when they handle an event, so an event geo emitted
before step 2 is dropped there. A crash after step 2 leaves location off on every device, even
though the consent still reads as granted until the request is retried.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from vicino.services.kernel.contracts.customer_state import token_accepted
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.contracts.streams import trimmed_unconsumed_key

from ..domain.transitions import DeviceState
from .redis_keys import CustomerKeys, DeviceKeys, all_event_streams, open_visits_key
from ...runtime.redis_scripts import memory_guarded

_READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HMGET', KEYS[2], 'r', 's')}
"""

# Compare-and-set of the visit state plus the event append: one atomic step per request, so two
# concurrent requests for one device can never both emit an enter for the same visit. The
# registration is re-checked in the same step: a report that read it before consent was withdrawn
# or the device re-registered (both delete the state, so the revision alone cannot tell) must not
# save after them.
_SAVE = memory_guarded("""
local rev = redis.call('HGET', KEYS[1], 'r') or '0'
local reg = redis.call('HMGET', KEYS[3], 'token_id', 'location_consent')
if rev ~= ARGV[1] or reg[1] ~= ARGV[5] or reg[2] ~= '1' then
  -- refused: hand back the current snapshot so the caller can decide again without a read
  return {0, redis.call('HGETALL', KEYS[3]), redis.call('HMGET', KEYS[1], 'r', 's')}
end
local new_rev = tonumber(rev) + 1
redis.call('HSET', KEYS[1], 'r', new_rev, 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
-- the shard's open visits by last-inside time, for the exit sweep
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[4], ARGV[7])
else
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
end
for i = 8, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'v', '1', 'event', ARGV[i])
end
-- the last-resort cap (the scheduler's trim_streams keeps streams far below it): what it trims
-- no consumer may have read yet, so it is counted (KEYS[5], the stream's trimmed-unconsumed)
if #ARGV >= 8 and redis.call('XLEN', KEYS[2]) > tonumber(ARGV[4]) then
  local trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[4])
  if trimmed > 0 then redis.call('INCRBY', KEYS[5], trimmed) end
end
return {1, new_rev}
""")

# The sweep found nothing to end for a device it was told was silent (its state expired, its
# consent or registration went): forget it, unless a save has since moved its entry on.
_FORGET_SILENT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# ARGV: location ('1'/'0'), the consent version it comes from. Never on a removed device (no
# stub), never over a copy from a newer change.
_SET_COPY = memory_guarded("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'consent_v') or '0')
if tonumber(ARGV[2]) < cur then return 0 end
redis.call('HSET', KEYS[1], 'location_consent', ARGV[1], 'consent_v', ARGV[2])
return 1
""")

# KEYS: consent hash, devices set. Returns {the new change's version, device ids}.
_NEXT_CONSENT_VERSION = memory_guarded("""
return {redis.call('HINCRBY', KEYS[1], 'seq', 1), redis.call('SMEMBERS', KEYS[2])}
""")

# The same, and the values the change starts from (a batch item sets only the purposes it names).
# Returns {version, device ids, location, marketing, personalisation} (false where none is set).
_NEXT_CONSENT_VERSION_FROM = memory_guarded("""
local v = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local cur = redis.call('HMGET', KEYS[1], 'location', 'marketing', 'personalisation')
return {v, redis.call('SMEMBERS', KEYS[2]), cur[1], cur[2], cur[3]}
""")

# KEYS: consent hash, consent log, devices set. ARGV: version, location, marketing,
# personalisation, updated_at, log entry JSON. Applies the change unless a newer one already was;
# returns {applied (0/1), device ids}.
_APPLY_CONSENT = memory_guarded("""
local applied = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local members = redis.call('SMEMBERS', KEYS[3])
if tonumber(ARGV[1]) < applied then return {0, members} end
redis.call('LPUSH', KEYS[2], ARGV[6])  -- first: a script that fails part-way writes nothing after it
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'location', ARGV[2], 'marketing', ARGV[3], 'personalisation', ARGV[4],
           'updated_at', ARGV[5])
return {1, members}
""")

# A device token refresh. KEYS: the registration. ARGV: the presented token id, its customer, the
# new token id, the end of the presented token's grace, now. Only the current token refreshes: a
# token already replaced (even one still in its grace) is refused, so one lost or stolen token
# can never start a second chain. Returns {1, ''} or {0, why}: gone, replaced, or previous (and the
# end of its grace).
_REFRESH_TOKEN = memory_guarded("""
local reg = redis.call('HMGET', KEYS[1], 'customer_id', 'token_id', 'prev_token_id', 'prev_token_until')
if not reg[1] then return {0, 'gone'} end
if reg[1] ~= ARGV[2] then return {0, 'replaced'} end
if reg[2] ~= ARGV[1] then
  if reg[3] == ARGV[1] then return {0, 'previous', reg[4]} end
  return {0, 'replaced'}
end
redis.call('HSET', KEYS[1], 'token_id', ARGV[3], 'prev_token_id', ARGV[1], 'prev_token_until', ARGV[4],
           'token_refreshed_at', ARGV[5])
return {1, ''}
""")

# A push token the app reports (FCM or APNs rotated it). KEYS: the registration. ARGV: the token
# id the caller's check was made on (a re-registration or removal since then refuses), the new
# push token, now. The device token stays as it is.
_SET_PUSH_TOKEN = memory_guarded("""
if redis.call('HGET', KEYS[1], 'token_id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'push_token', ARGV[2], 'push_token_updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'push_token_revoked_at', 'push_token_revoked_reason')
return 1
""")

# The device's language (BCP 47, canonical) the app reports. KEYS: the registration. ARGV: the token
# id the caller's check was made on (as for the push token), the locale ('' for none), now.
_SET_LOCALE = memory_guarded("""
if redis.call('HGET', KEYS[1], 'token_id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'locale', ARGV[2], 'locale_updated_at', ARGV[3])
return 1
""")

# Removes a push token only if it is still the registration's (a re-registration may have put a
# new one there since the provider refused the old).
_CLEAR_PUSH_TOKEN = memory_guarded("""
if redis.call('HGET', KEYS[1], 'push_token') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'push_token', '', 'push_token_revoked_at', ARGV[2], 'push_token_revoked_reason', ARGV[3])
  return 1
end
return 0
""")

CONSENT_FIELDS = ("location", "marketing", "personalisation")
BATCH_IN_FLIGHT = 250  # a consent batch's scripts at once (a Cluster client opens a connection for each)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True, slots=True)
class Registration:
    device_id: str
    customer_id: str
    platform: str
    push_token: str
    timezone: str
    token_id: str
    registered_at: float
    location_consent: bool
    prev_token_id: str = ""        # the token a refresh replaced, accepted until prev_token_until
    prev_token_until: float = 0.0
    locale: str = ""               # BCP 47, canonical (kernel.locales); "" when the app sent none

    def accepts(self, token_id: str, now: float) -> bool:
        """The current token, or the one it replaced within its grace (see customer_state)."""
        return token_accepted(self.token_id, self.prev_token_id, self.prev_token_until, token_id, now)


@dataclass(frozen=True, slots=True)
class Snapshot:
    registration: Registration | None
    rev: str
    state: dict | None


@dataclass(frozen=True, slots=True)
class SaveResult:
    saved: bool
    rev: str                      # the new revision when saved
    current: Snapshot | None      # when refused: what Redis holds now


def _registration(device_id: str, raw: dict) -> Registration | None:
    if not raw or not ({b"customer_id", "customer_id"} & raw.keys()):  # none, or not a whole registration
        return None
    g = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}
    return Registration(device_id, g["customer_id"], g["platform"], g.get("push_token", ""), g.get("timezone", ""),
                        g["token_id"], float(g["registered_at"]), g.get("location_consent") == "1",
                        g.get("prev_token_id", ""), float(g.get("prev_token_until") or 0), g.get("locale", ""))


def _snapshot(device_id: str, reg_flat: list, rev_state: list) -> Snapshot:
    rev, state = rev_state
    reg = _registration(device_id, dict(zip(reg_flat[::2], reg_flat[1::2])))
    return Snapshot(reg, (rev or b"0").decode(), orjson.loads(state) if state else None)


class DeviceRepository:
    def __init__(self, redis, shards: int, events_maxlen: int, hot_path=None) -> None:
        """`hot_path`: the client that runs the two per-request scripts (see
        vicino.services.runtime.redis_client.open_hot_path); defaults to `redis`."""
        self._r = redis
        self._shards = shards
        self._events_maxlen = events_maxlen
        hot = hot_path or redis
        self._read = hot.register_script(_READ)
        self._save = hot.register_script(_SAVE)
        self._set_copy = redis.register_script(_SET_COPY)
        self._next_consent_version = redis.register_script(_NEXT_CONSENT_VERSION)
        self._apply_consent = redis.register_script(_APPLY_CONSENT)
        # a batch's consent changes: many one-customer scripts at once (each customer is a slot of
        # its own), multiplexed on the hot path client
        self._batch_next_consent = hot.register_script(_NEXT_CONSENT_VERSION_FROM)
        self._batch_apply_consent = hot.register_script(_APPLY_CONSENT)
        self._forget_silent = redis.register_script(_FORGET_SILENT)
        self._clear_push_token = redis.register_script(_CLEAR_PUSH_TOKEN)
        self._refresh_token = redis.register_script(_REFRESH_TOKEN)
        self._set_push_token = redis.register_script(_SET_PUSH_TOKEN)
        self._set_locale = redis.register_script(_SET_LOCALE)

    def keys(self, device_id: str) -> DeviceKeys:
        return DeviceKeys(device_id, self._shards)

    async def snapshot(self, device_id: str) -> Snapshot:
        k = self.keys(device_id)
        reg_flat, rev_state = await self._read(keys=[k.registration, k.state])
        return _snapshot(device_id, reg_flat, rev_state)

    async def get(self, device_id: str) -> Registration | None:
        return _registration(device_id, await self._r.hgetall(self.keys(device_id).registration))

    async def save_state(self, device_id: str, expected_rev: str, state: dict, ttl_s: float,
                         events: list[GeofenceEventV1], token_id: str) -> SaveResult:
        """Saves only if the revision is still `expected_rev` and the registration still has this
        (current) token id and location consent; otherwise returns the current snapshot, in the
        same trip. `token_id`: the registration's, as read when the caller's token was checked (a
        refresh, a re-registration or a removal since then changes it)."""
        k = self.keys(device_id)
        silent_since = DeviceState.from_json(state).silent_since()
        args = [expected_rev, orjson.dumps(state), int(ttl_s * 1000), self._events_maxlen, token_id,
                "" if silent_since is None else repr(silent_since), device_id]
        args += [e.model_dump_json(by_alias=True) for e in events]
        out = await self._save(keys=[k.state, k.events, k.registration, k.open_visits,
                                     trimmed_unconsumed_key(k.events)], args=args)
        if int(out[0]) == 1:
            return SaveResult(True, str(int(out[1])), None)
        return SaveResult(False, "", _snapshot(device_id, out[1], out[2]))

    async def delete_state(self, device_id: str) -> None:
        k = self.keys(device_id)
        await self._r.delete(k.state)
        await self._r.zrem(k.open_visits, device_id)

    async def silent_devices(self, shard: int, before: float, count: int) -> list[str]:
        """Up to `count` devices of a shard with an open visit not seen inside since `before`."""
        raw = await self._r.zrangebyscore(open_visits_key(shard), "-inf", f"({before!r}", start=0, num=count)
        return [m.decode() for m in raw]

    async def forget_silent(self, device_id: str, before: float) -> bool:
        """Drops a device from its shard's open visits if its entry is still older than `before`."""
        return bool(int(await self._forget_silent(keys=[self.keys(device_id).open_visits],
                                                  args=[device_id, repr(before)])))

    async def register(self, reg: Registration, consent_version: int = 0) -> Registration | None:
        """Creates or replaces a registration (its consent copy from `consent_version`); returns
        the previous one."""
        k = self.keys(reg.device_id)
        previous = await self.get(reg.device_id)
        await self._r.hset(k.registration, mapping={
            "customer_id": reg.customer_id, "platform": reg.platform, "push_token": reg.push_token,
            "timezone": reg.timezone, "token_id": reg.token_id, "registered_at": repr(reg.registered_at),
            # written even when empty: a registration replaces the one before, its locale included
            "locale": reg.locale,
            "location_consent": "1" if reg.location_consent else "0", "consent_v": consent_version,
            # registering again revokes every earlier token at once: none keeps a grace
            "prev_token_id": "", "prev_token_until": "0"})
        await self._r.sadd(CustomerKeys(reg.customer_id).devices, reg.device_id)
        if previous is not None and previous.customer_id != reg.customer_id:
            await self._r.srem(CustomerKeys(previous.customer_id).devices, reg.device_id)
        return previous

    async def set_location_copy(self, device_id: str, location: bool, version: int) -> bool:
        """The device's copy of the location consent of change `version`; False (nothing written)
        on a removed device or over a copy of a newer change."""
        out = await self._set_copy(keys=[self.keys(device_id).registration],
                                   args=["1" if location else "0", version])
        return bool(int(out))

    async def clear_push_token(self, device_id: str, push_token: str, now: float, reason: str) -> bool:
        out = await self._clear_push_token(keys=[self.keys(device_id).registration],
                                           args=[push_token, repr(now), reason])
        return bool(int(out))

    async def refresh_token(self, device_id: str, presented: str, customer_id: str, new_token_id: str,
                            grace_until: float, now: float) -> tuple[str, float] | None:
        """Makes `new_token_id` the current token if `presented` is; the presented one is then
        accepted until `grace_until`. None when done, else why not: ("gone" | "replaced", 0), or
        ("previous", the end of the presented token's grace)."""
        out = await self._refresh_token(keys=[self.keys(device_id).registration],
                                        args=[presented, customer_id, new_token_id, repr(grace_until), repr(now)])
        if int(out[0]) == 1:
            return None
        return out[1].decode(), float(out[2]) if len(out) > 2 and out[2] else 0.0

    async def set_push_token(self, device_id: str, expected_token_id: str, push_token: str, now: float) -> bool:
        """The app's fresh push token, if the registration's current token id is still the one read."""
        out = await self._set_push_token(keys=[self.keys(device_id).registration],
                                         args=[expected_token_id, push_token, repr(now)])
        return bool(int(out))

    async def set_locale(self, device_id: str, expected_token_id: str, locale: str, now: float) -> bool:
        """The device's language ('' for none), if the registration's current token id is still the one read."""
        out = await self._set_locale(keys=[self.keys(device_id).registration],
                                     args=[expected_token_id, locale, repr(now)])
        return bool(int(out))

    async def unregister(self, reg: Registration) -> None:
        """Removes the registration (its tokens stop working) and the device from its customer."""
        await self._r.delete(self.keys(reg.device_id).registration)
        await self._r.srem(CustomerKeys(reg.customer_id).devices, reg.device_id)

    async def append_events(self, device_id: str, events: list[GeofenceEventV1]) -> None:
        stream = self.keys(device_id).events
        for e in events:
            await self._r.xadd(stream, e.to_stream_fields())
        if await self._r.xlen(stream) > self._events_maxlen:  # the last-resort cap, counted (see _SAVE)
            trimmed = await self._r.xtrim(stream, maxlen=self._events_maxlen, approximate=True)
            if trimmed:
                await self._r.incrby(trimmed_unconsumed_key(stream), trimmed)

    async def drop_events_of(self, customer_id: str, device_ids: set[str]) -> int:
        """Deletes, from every event stream, the events of this customer or these devices (erasure).
        A full scan: erasures are rare, and the streams are capped."""
        needles = [b'"customer_id":' + orjson.dumps(customer_id)]
        needles += [b'"device_id":' + orjson.dumps(d) for d in device_ids]
        dropped = 0
        for stream in all_event_streams(self._shards):
            start = "-"
            while True:
                page = await self._r.xrange(stream, min=start, count=5000)
                if not page:
                    break
                doomed = [eid for eid, fields in page
                          if any(n in (fields.get(b"event") or b"") for n in needles)]
                if doomed:
                    dropped += await self._r.xdel(stream, *doomed)
                ms, seq = page[-1][0].decode().split("-")
                start = f"{ms}-{int(seq) + 1}"
        return dropped

    async def forget_customer(self, customer_id: str) -> None:
        ck = CustomerKeys(customer_id)
        await self._r.delete(ck.consent, ck.consent_log, ck.consent_audit, ck.devices)

    async def customer_devices(self, customer_id: str) -> list[str]:
        return sorted(m.decode() for m in await self._r.smembers(CustomerKeys(customer_id).devices))

    # consent ---------------------------------------------------------------------------------

    async def consent(self, customer_id: str) -> dict:
        raw = await self._r.hgetall(CustomerKeys(customer_id).consent)
        g = {k.decode(): v.decode() for k, v in raw.items()}
        out = {f: g.get(f) == "1" for f in CONSENT_FIELDS}
        out["updated_at"] = float(g["updated_at"]) if "updated_at" in g else None
        return out

    async def consent_version(self, customer_id: str) -> tuple[bool, int]:
        """(location consent, the version of the change that set it: 0 if none)."""
        location, v = await self._r.hmget(CustomerKeys(customer_id).consent, ["location", "v"])
        return location == b"1", int(v or 0)

    async def next_consent_version(self, customer_id: str) -> tuple[int, list[str]]:
        """Step 1 of a consent change: its version, and the customer's devices now."""
        ck = CustomerKeys(customer_id)
        version, members = await self._next_consent_version(keys=[ck.consent, ck.devices])
        return int(version), sorted(m.decode() for m in members)

    async def apply_consent(self, customer_id: str, version: int, values: dict[str, bool], actor: str,
                            now: float, source: str | None = None) -> tuple[bool, list[str]]:
        """Step 3: the consent and its log entry, unless a newer change was applied; returns
        (applied, the customer's devices). `source` (e.g. "crm-import") is kept in the entry."""
        ck = CustomerKeys(customer_id)
        flat = {f: "1" if values[f] else "0" for f in CONSENT_FIELDS}
        entry = {**flat, "at": now, "by": actor, **({"source": source} if source else {})}
        applied, members = await self._apply_consent(
            keys=[ck.consent, ck.consent_log, ck.devices],
            args=[version, flat["location"], flat["marketing"], flat["personalisation"], repr(now),
                  orjson.dumps(entry)])
        return bool(int(applied)), sorted(m.decode() for m in members)

    async def set_consent(self, customer_id: str, values: dict[str, bool], actor: str, now: float,
                          source: str | None = None) -> list[str]:
        """Records the consent and its audit entry and mirrors `location` into every device of the
        customer, in the steps the module's docstring orders; returns those device ids."""
        version, devices = await self.next_consent_version(customer_id)
        if not values["location"]:
            for device_id in devices:  # a withdrawal holds on the devices before it is recorded
                await self.set_location_copy(device_id, False, version)
        _, members = await self.apply_consent(customer_id, version, values, actor, now, source)
        for device_id in members:
            await self.set_location_copy(device_id, values["location"], version)
        return members

    async def set_consents(self, changes: list[tuple[str, dict[str, bool], str | None]], actor: str,
                           now: float) -> list[tuple[dict, list[str]]]:
        """`set_consent` for many customers at once (a CRM import): the same steps in the same
        order for each, each step run for the whole batch together (`BATCH_IN_FLIGHT` scripts at
        a time). A change names only the purposes it sets (customer_id, {purpose: bool}, source);
        the others keep the value they have when its version is allocated. Returns per change
        (the consent as recorded, the customer's devices)."""
        async def step(script, calls: list[tuple[list, list]]) -> list:
            out = []
            for i in range(0, len(calls), BATCH_IN_FLIGHT):
                out += await asyncio.gather(*(script(keys=k, args=a) for k, a in calls[i:i + BATCH_IN_FLIGHT]))
            return out

        keys = [CustomerKeys(customer_id) for customer_id, _, _ in changes]
        started = await step(self._batch_next_consent, [([ck.consent, ck.devices], []) for ck in keys])
        versions: list[int] = []
        full: list[dict[str, bool]] = []
        for (_, values, _), (version, members, *current) in zip(changes, started):
            versions.append(int(version))
            was = dict(zip(CONSENT_FIELDS, current))
            merged = {f: values[f] if f in values else was[f] == b"1" for f in CONSENT_FIELDS}
            full.append(merged)
            if not merged["location"]:
                for device_id in sorted(_text(m) for m in members):  # the withdrawal holds on the devices first
                    await self.set_location_copy(device_id, False, int(version))
        calls = []
        for (_, _, source), ck, version, values in zip(changes, keys, versions, full):
            flat = {f: "1" if values[f] else "0" for f in CONSENT_FIELDS}
            entry = {**flat, "at": now, "by": actor, **({"source": source} if source else {})}
            calls.append(([ck.consent, ck.consent_log, ck.devices],
                          [version, flat["location"], flat["marketing"], flat["personalisation"], repr(now),
                           orjson.dumps(entry)]))
        applied = await step(self._batch_apply_consent, calls)
        out: list[tuple[dict, list[str]]] = []
        for (customer_id, _, _), version, values, (ok, members) in zip(changes, versions, full, applied):
            devices = sorted(_text(m) for m in members)
            for device_id in devices:
                await self.set_location_copy(device_id, values["location"], version)
            # a newer change that won meanwhile is what the customer's consent now is
            out.append(({**values, "updated_at": now} if int(ok) else await self.consent(customer_id), devices))
        return out

    async def consent_audit(self, customer_id: str, count: int = 100) -> list[dict]:
        """The most recent changes, newest first: the list, then (older) the legacy stream's."""
        ck = CustomerKeys(customer_id)
        out = []
        for raw in await self._r.lrange(ck.consent_log, 0, count - 1):
            g = orjson.loads(raw)
            out.append({"at": float(g["at"]), "by": g["by"], **{f: g[f] == "1" for f in CONSENT_FIELDS},
                        "source": g.get("source")})
        if len(out) < count:
            for _eid, fields in await self._r.xrevrange(ck.consent_audit, count=count - len(out)):
                g = {k.decode(): v.decode() for k, v in fields.items()}
                out.append({"at": float(g["at"]), "by": g["by"], **{f: g[f] == "1" for f in CONSENT_FIELDS},
                            "source": None})
        return out
