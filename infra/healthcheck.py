#!/usr/bin/env python3
"""The container's health check: GET a health path on the port of whichever `vicino serve`
command the container runs (the image is one for every service; its HEALTHCHECK cannot know
which). Exit 0 when it answers 200, 1 otherwise. Standard library only.

    vicino-healthcheck [PATH]         PATH defaults to /healthz; compose probes /readyz

The port comes from the container's command line (PID 1's `--port`), else from the variable
that `vicino serve <service>` reads, else the service's default, exactly as the CLI resolves it.
`serve recommender-worker` answers on its health edge (VICINO_WORKER_PORT, default 8004);
its /healthz turns 503 when a consumer has failed too many rounds in a row."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# service -> (variable `vicino serve <service>` reads for its port, default port); see services/cli/serve.py
PORTS = {
    "geo": ("VICINO_PORT", 8000),
    "recommender": ("VICINO_RECOMMENDER_PORT", 8001),
    "push": ("VICINO_PUSH_PORT", 8002),
    "scheduler": ("VICINO_SCHEDULER_PORT", 8003),
    "recommender-worker": ("VICINO_WORKER_PORT", 8004),
}


def target(argv: list[str], env: dict[str, str]) -> tuple[str, int] | None:
    """(host, port) to probe for a container started with `argv`, or None for a service
    without an HTTP port."""
    try:
        service = argv[argv.index("serve") + 1]
    except (ValueError, IndexError):
        service = "geo"  # the image's default command
    if service not in PORTS:
        return None
    var, default = PORTS[service]
    port = int(env.get(var, default))
    host = env.get("VICINO_HOST", "0.0.0.0")
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            port = int(argv[i + 1])
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
        elif arg == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
        elif arg.startswith("--host="):
            host = arg.split("=", 1)[1]
    # a wildcard bind answers on loopback; a specific address only on itself
    return ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host), port


def container_argv(cmdline: str = "/proc/1/cmdline") -> list[str]:
    with open(cmdline, "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def probe(host: str, port: int, path: str, timeout_s: float = 4.0) -> bool:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(args: list[str], cmdline: str = "/proc/1/cmdline") -> int:
    path = args[0] if args else "/healthz"
    where = target(container_argv(cmdline), dict(os.environ))
    if where is None:
        return 0
    return 0 if probe(*where, path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
