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
from services.launcher.embedded_redis import EmbeddedRedis
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
