"""The embedded redis-server never outlives the process that started it, even when that
process is killed without a chance to stop it (a crashed `vicino up` or test run)."""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, pathlib, sys
from vicino.services.launcher.embedded_redis import EmbeddedRedis
r = EmbeddedRedis(pathlib.Path(sys.argv[1]), persist=False).start()
print(r.proc.pid, flush=True)
os._exit(0)  # no stop(), no atexit: as if killed
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_redis_dies_with_its_parent(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    pid = int(out.stdout.strip())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, 9)
        raise AssertionError(f"redis-server {pid} outlived its parent")


def test_a_service_waits_for_a_redis_that_starts_after_it(tmp_path):
    """Containers start in any order: `vicino serve geo` retries Redis for VICINO_REDIS_WAIT_S."""
    import httpx

    from vicino.services.launcher.embedded_redis import EmbeddedRedis, free_port
    from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
    from tests.support import wait_until

    redis_port, port = free_port(), free_port()
    env = {**os.environ, "VICINO_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
           "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_REDIS_WAIT_S": "30"}
    log = open(tmp_path / "geo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "serve", "geo", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log, stderr=log, start_new_session=True)
    late = EmbeddedRedis(tmp_path / "late-redis", redis_port, persist=False)
    try:
        wait_until(lambda: "waiting for Redis" in (tmp_path / "geo.log").read_text(), 30, 0.1, "the service waiting")
        assert proc.poll() is None
        late.start()  # from this (main) thread: the parent-death signal follows the starting thread

        def ready():
            assert proc.poll() is None, (tmp_path / "geo.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, 0.1, "ready once Redis is up")
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        late.stop()
