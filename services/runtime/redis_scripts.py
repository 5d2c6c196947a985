"""Lua scripts under Redis's memory limit (`maxmemory` with `noeviction`).

Redis refuses a plain write that may grow memory (a `denyoom` command: SET, HSET, ZADD, XADD...)
once `maxmemory` is reached, but checks a script without flags only at its first write, and only
if that write is itself `denyoom`: a script that starts with ZREMRANGEBYSCORE, DEL or HDEL then
writes freely (Redis 6.2, and Redis 7 for scripts without a `#!lua` shebang). Redis 7's shebang
flags would refuse the whole script up front, but Redis 6.2 (the embedded server) cannot parse
them, so every script that may grow memory starts with `MEMORY_GUARD` instead: a `denyoom`
command that never changes anything (SETRANGE at offset -1 is refused for its offset, on any key
of any type), so that its first write is checked on both. Scripts that only read, delete or
renew a TTL need no guard (they free memory or keep it as it is)."""
from __future__ import annotations

# One line, so that the line numbers in a script's errors move by one only. Redis 6.2 prefixes a
# script's errors with where they happened (`@user_script: 1: -OOM ...`): the code is put back
# first, so that clients (and the 503 mapping) read an OOM refusal as such.
MEMORY_GUARD = ("local refused = redis.pcall('SETRANGE', KEYS[1], -1, '') "
                "if not string.find(refused.err or '', 'offset', 1, true) then "
                "return redis.error_reply((string.gsub(refused.err or 'ERR memory guard', '^.-%-(%u+ )', '%1'))) end\n")


def memory_guarded(source: str) -> str:
    """The script, refused as a whole (nothing written) when Redis is out of memory. Its first
    key must be one it may write (the guard touches no key, but ACLs and Cluster see it)."""
    return MEMORY_GUARD + source.lstrip("\n")
