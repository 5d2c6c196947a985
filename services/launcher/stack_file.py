"""The local stack file: what `vicino up` started and where, so that every other `vicino` command
in a second terminal finds it with nothing exported.

`<data_dir>/stack.json` holds URLs, the Redis URL and the directories (never a secret: those stay
in the 0600 `secrets.json` beside it), and the launcher's pid: a file whose process is gone is
stale and ignored. `vicino up` removes it when it stops."""
from __future__ import annotations

import os
from pathlib import Path

import orjson

STACK_FILE = "stack.json"
SECRETS_FILE = "secrets.json"


def write_stack_file(data_dir: Path, *, front_url: str, urls: dict[str, str], redis_url: str, history_dir: str,
                     model_dir: str) -> Path:
    path = data_dir / STACK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"pid": os.getpid(), "front_url": front_url, "urls": urls, "redis_url": redis_url,
                                  "data_dir": str(data_dir), "history_dir": history_dir, "model_dir": model_dir},
                                 option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return path


def remove_stack_file(data_dir: Path) -> None:
    path = data_dir / STACK_FILE
    try:
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def read_stack_file(data_dir: Path) -> dict | None:
    """The running stack's file, or None (no file, unreadable, or its `vicino up` is gone)."""
    try:
        stack = orjson.loads((data_dir / STACK_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return stack if isinstance(stack, dict) and _alive(stack.get("pid")) else None


def stack_environment(data_dir: Path) -> dict[str, str]:
    """The VICINO_* settings a command needs to work against the running local stack (empty when
    none runs): URLs, Redis, directories, and the admin token and signing secret from the
    secrets file."""
    stack = read_stack_file(data_dir)
    if stack is None:
        return {}
    env = {"VICINO_URL": stack["front_url"], "VICINO_RECOMMENDER_URL": stack["front_url"],
           "VICINO_GEO_URL": stack["urls"].get("geo", stack["front_url"]), "VICINO_REDIS_URL": stack["redis_url"],
           "VICINO_DATA_DIR": stack["data_dir"], "VICINO_HISTORY_DIR": stack["history_dir"],
           "VICINO_MODEL_DIR": stack["model_dir"]}
    try:
        kept = orjson.loads((data_dir / SECRETS_FILE).read_bytes())
        env["VICINO_ADMIN_TOKEN"] = kept["admin_token"]
        env["VICINO_TOKEN_SECRET"] = kept["token_secret"]
    except (OSError, ValueError, KeyError):
        pass  # not ours to read (another user's stack): commands ask for the token as before
    return env
