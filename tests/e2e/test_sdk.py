"""The TypeScript SDK (clients/typescript) against a real stack: `vicino up` on free ports, empty
(VICINO_DEMO=0); meanwhile `npm ci` (when node_modules is missing), `npm run build` and the SDK's
unit tests; then its integration tests against this stack (`npm test` is both). The stack's URL and
keys reach the Node tests through the environment; a small fault controller on loopback lets them
stop the stack's Redis for a few seconds (the 503 storm). Node (>= 18) and npm are required: the
test fails, never skips, without them."""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import redis as redis_lib

from vicino.services.kernel.auth import DeviceClaims, TokenSigner
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.launcher.stack_file import read_stack_file
from tests.support import ROOT, port_block, port_open, wait_until

pytestmark = pytest.mark.e2e

SDK = ROOT / "clients" / "typescript"
VICINO = Path(sys.executable).with_name("vicino")
NPM_TIMEOUT_S = 300  # `npm ci` on a cold cache; the build and the tests take well under a minute
TEST_TIMEOUT_S = 240
# The stack as the tests need it: rate limits low enough for the backlog to meet a 429, pushes
# decided on enter at any hour for everyone (no holdout), so that a visit becomes a delivery.
STACK_ENV = {"VICINO_DEMO": "0", "VICINO_LOG_LEVEL": "WARNING", "VICINO_RATE_LIMIT_LOCATIONS_BURST": "2",
             "VICINO_RATE_LIMIT_LOCATIONS_PER_S": "1", "VICINO_DECIDE_ON": "enter", "VICINO_QUIET_HOURS": "",
             "VICINO_HOLDOUT_PERCENT": "0"}


def node_and_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js >= 18 and npm are needed to build and test the TypeScript SDK (clients/typescript): "
                    f"{'node' if node is None else 'npm'} is not on PATH. Install them (Debian/Ubuntu: "
                    "`apt-get install nodejs npm`; .ci/run does it in CI)", pytrace=False)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))
    if major < 18:
        pytest.fail(f"Node.js >= 18 is needed for the TypeScript SDK (global fetch, node:test); found {version}",
                    pytrace=False)
    return node, npm


class Stack:
    """One `vicino up` (its own process group): the front door on VICINO_PORT, its stack file."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = port_block(6)  # the front door and the five services behind it
        self.data_dir = tmp_path / "vicino-data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_")}
        env.update(STACK_ENV, VICINO_PORT=str(self.port), VICINO_DATA_DIR=str(self.data_dir))
        cmd = [str(VICINO), "up"] if VICINO.exists() else [sys.executable, "-m", "vicino.services.cli", "up"]
        self.log = open(tmp_path / "vicino-up.log", "wb")
        self.log_path = tmp_path / "vicino-up.log"
        self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.restarted_redis: EmbeddedRedis | None = None

    def wait_ready(self) -> None:
        def banner():
            if self.proc.poll() is not None:
                raise AssertionError(f"vicino up exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            return "Ctrl-C stops everything" in self.log_path.read_text(errors="replace")

        wait_until(banner, 120, 0.1, "the `vicino up` banner")
        running = read_stack_file(self.data_dir)
        assert running is not None and running["front_url"] == self.base_url, running
        self.redis_url = running["redis_url"]
        self.redis_port = int(urlsplit(self.redis_url).port)
        secrets = orjson.loads((self.data_dir / "secrets.json").read_bytes())
        self.admin_token, self.token_secret = secrets["admin_token"], secrets["token_secret"]

    def key(self, name: str, role: str) -> str:
        r = httpx.post(f"{self.base_url}/v1/keys", headers={"Authorization": f"Bearer {self.admin_token}"},
                       json={"name": name, "roles": [role]}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["key"]

    def stop_redis(self) -> Path:
        """Stops the stack's Redis (SIGTERM: it writes its AOF, as in a restart); returns its data
        directory."""
        client = redis_lib.Redis.from_url(self.redis_url, socket_timeout=5)
        pid = int(client.info("server")["process_id"])
        data = Path(client.config_get("dir")["dir"])
        client.close()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not port_open(self.redis_port), 15, 0.02, "Redis stopped")
        return data

    def start_redis(self, data: Path) -> None:
        """Redis again on the same port and data. Called from the main thread: a redis-server is
        told to exit with the thread that started it (EmbeddedRedis)."""
        if self.restarted_redis is not None:
            self.restarted_redis.stop()
        self.restarted_redis = EmbeddedRedis(data, port=self.redis_port, persist=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.restarted_redis is not None:
            self.restarted_redis.stop()
        self.log.close()


class FaultController:
    """`POST /redis/outage?seconds=N` from the Node tests: answered once Redis is down; the main
    thread (which polls the npm process) does the work."""

    def __init__(self) -> None:
        self.requests: queue.Queue = queue.Queue()
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                url = urlsplit(self.path)
                if url.path != "/redis/outage":
                    self.send_error(404)
                    return
                seconds = float(parse_qs(url.query).get("seconds", ["3"])[0])
                done = threading.Event()
                controller.requests.put((min(seconds, 10.0), done))
                ok = done.wait(30)
                self.send_response(200 if ok else 504)
                self.end_headers()
                self.wfile.write(b'{"redis": "stopped"}' if ok else b'{"redis": "not stopped in time"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(cmd: list[str], env: dict | None = None, timeout: float = NPM_TIMEOUT_S) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=SDK, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}"
    return r


def test_the_typescript_sdk_against_a_real_stack(tmp_path):
    _, npm = node_and_npm()
    t0 = time.monotonic()
    stack = Stack(tmp_path)
    faults = FaultController()
    proc: subprocess.Popen | None = None
    try:
        if not (SDK / "node_modules" / ".package-lock.json").exists():
            run([npm, "ci", "--no-audit", "--no-fund"])
        run([npm, "run", "build"])  # while the stack starts
        unit = run([npm, "run", "test:unit"])
        built = time.monotonic()
        stack.wait_ready()
        expired = TokenSigner(stack.token_secret).issue(
            DeviceClaims("sdk-expired", "sdk-customer-expired", "expired-token-id", time.time() - 60))
        env = {**os.environ, "VICINO_SDK_BASE_URL": stack.base_url,
               "VICINO_SDK_APP_BACKEND_KEY": stack.key("sdk app server", "app_backend"),
               "VICINO_SDK_OPERATOR_KEY": stack.key("sdk operator", "operator"),
               "VICINO_SDK_SUPPORT_KEY": stack.key("sdk support", "support"),
               "VICINO_SDK_EXPIRED_TOKEN": expired, "VICINO_SDK_FAULTS_URL": faults.url}
        up = time.monotonic()
        out = tmp_path / "npm-test.log"
        with open(out, "wb") as log:
            proc = subprocess.Popen([npm, "run", "test:integration"], cwd=SDK, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + TEST_TIMEOUT_S
            outages = 0
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"the integration tests still run after {TEST_TIMEOUT_S} s:\n{out.read_text()[-6000:]}")
                try:
                    seconds, done = faults.requests.get(timeout=0.05)
                except queue.Empty:
                    continue
                outages += 1
                data = stack.stop_redis()
                stopped_at = time.monotonic()
                done.set()
                time.sleep(max(0.0, seconds - (time.monotonic() - stopped_at)))
                stack.start_redis(data)
        text = out.read_text(errors="replace")
        print(f"\nSDK: build and unit tests {built - t0:.1f} s (the stack starting meanwhile), stack ready "
              f"{up - t0:.1f} s, integration tests {time.monotonic() - up:.1f} s, {outages} Redis outage(s)\n"
              + unit.stdout[-1500:] + text[-3000:])
        assert proc.returncode == 0, f"npm run test:integration failed ({proc.returncode}):\n{text[-8000:]}"
        assert outages == 1, "the 503 storm test did not stop Redis"
        for report in (unit.stdout, text):  # nothing skipped or left out
            assert re.search(r"ℹ fail 0", report) and re.search(r"ℹ pass [1-9]", report), report[-3000:]
            assert not re.search(r"ℹ (skipped|todo|cancelled) [1-9]", report), report[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        faults.close()
        stack.stop()


def test_without_node_the_sdk_test_fails_naming_node(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="Node.js >= 18 and npm are needed.*node is not on PATH"):
        node_and_npm()
