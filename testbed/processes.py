"""`vicino serve <service>` as its own process, the way a container runs it, for the tests, the
benchmarks and the load tests; with the loopback helpers they need (a free port, waiting)."""
from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# The secrets every served process of a test or benchmark run is started with (never a real one)
ADMIN_TOKEN = "test-admin-token-0123456789"
TOKEN_SECRET = "test-token-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_block(n: int = 6) -> int:
    """A base port such that base..base+n-1 are free on 127.0.0.1 (a stack's consecutive ports),
    below Linux's ephemeral range (32768-60999), where an outgoing connection of any process may
    take one of them between this check and the stack's bind."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32700 - n)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free loopback ports")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)


@contextlib.contextmanager
def served_service(service: str, redis_url: str, log_dir: Path, *, workers: int = 1, env: dict | None = None,
                   admin_token: str = ADMIN_TOKEN, token_secret: str = TOKEN_SECRET):
    """`vicino serve <service>` as its own process tree on a free port, as a container runs it;
    yields the base URL once /readyz answers, and stops it (SIGTERM, then SIGKILL) afterwards.
    Its log is `<log_dir>/<service>.log`."""
    port = free_port()
    full_env = {**os.environ, "VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": admin_token,
                "VICINO_TOKEN_SECRET": token_secret, "VICINO_LOG_LEVEL": "WARNING", **(env or {})}
    log_path = log_dir / f"{service}.log"
    log = open(log_path, "wb")
    extra = ["--workers", str(workers)] if workers != 1 else []
    proc = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "serve", service, "--host", "127.0.0.1",
                             "--port", str(port), *extra], cwd=ROOT, env=full_env,
                            stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, 0.1, f"{service} service ready")
        yield url
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
