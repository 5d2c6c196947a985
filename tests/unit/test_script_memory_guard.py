"""Every Lua script of the services that may grow Redis's memory starts with the memory guard
(vicino.services.runtime.redis_scripts): Redis checks a script's writes against `maxmemory` only
at its first write, so without it a script that starts with DEL or ZREMRANGEBYSCORE writes past
the limit. Read from the source, so that a new script cannot forget it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"

# the write commands Redis flags `denyoom` (refused under OOM) that a script might call
GROWING = {"SET", "SETNX", "SETEX", "PSETEX", "APPEND", "SETRANGE", "INCR", "INCRBY", "INCRBYFLOAT", "DECR",
           "DECRBY", "MSET", "HSET", "HSETNX", "HMSET", "HINCRBY", "HINCRBYFLOAT", "LPUSH", "RPUSH", "LINSERT",
           "LSET", "SADD", "ZADD", "ZINCRBY", "XADD", "PFADD", "GEOADD", "SETBIT", "COPY", "RESTORE",
           "LMOVE", "RPOPLPUSH", "SMOVE", "ZUNIONSTORE", "ZINTERSTORE", "SUNIONSTORE", "SINTERSTORE"}
CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'")


def _scripts() -> list[tuple[str, int, str, bool]]:
    """(file, line, source, guarded) of every string literal holding a redis.call."""
    out = []
    for path in sorted(SERVICES.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "memory_guarded":
                guarded |= {id(n) for arg in node.args for n in ast.walk(arg)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call(" in node.value:
                out.append((str(path.relative_to(SERVICES)), node.lineno, node.value, id(node) in guarded))
    return out


def test_every_script_that_may_grow_memory_is_guarded():
    scripts = _scripts()
    assert len(scripts) >= 15, scripts  # the scan finds the scripts at all
    unguarded = [(f, line, sorted({c.upper() for c in CALL.findall(src)} & GROWING))
                 for f, line, src, guarded in scripts if not guarded and {c.upper() for c in CALL.findall(src)} & GROWING]
    assert not unguarded, f"scripts that may grow memory without memory_guarded(...): {unguarded}"
