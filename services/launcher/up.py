"""`vicino up`: Redis (embedded unless given), every service as a supervised child process,
demo data. Ctrl-C stops the children, then Redis."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from .demo import DEMO_DEVICE, load_demo, load_demo_recommender
from .embedded_redis import EmbeddedRedis
from .settings import LauncherSettings

# One process per service: (name, port offset from VICINO_PORT); the recommender-worker's port is
# its health edge (/healthz, /readyz, /metrics).
SERVICES = (("geo", 0), ("recommender", 1), ("recommender-worker", 4), ("push", 2), ("scheduler", 3))
MAX_RESTARTS = 5


def _secrets(data_dir: Path, settings: LauncherSettings) -> tuple[str, str]:
    """Admin token and signing secret: from the environment, else generated once and kept
    (mode 0600) so that device tokens survive a restart of the stack."""
    path = data_dir / "secrets.json"
    stored = orjson.loads(path.read_bytes()) if path.exists() else {}
    admin = settings.admin_token or stored.get("admin_token") or secrets.token_urlsafe(24)
    secret = settings.token_secret or stored.get("token_secret") or secrets.token_urlsafe(32)
    if stored.get("admin_token") != admin or stored.get("token_secret") != secret:
        path.write_bytes(orjson.dumps({"admin_token": admin, "token_secret": secret}))
        path.chmod(0o600)
    return admin, secret


def _wait_ready(url: str | None, proc: subprocess.Popen, timeout_s: float) -> None:
    if url is None:  # a worker: alive after a moment is all we can ask
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} at start")
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz not ready after {timeout_s} s")


class Stack:
    def __init__(self, settings: LauncherSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.env: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return self.url_of("geo")

    def url_of(self, service: str) -> str | None:
        offset = dict(SERVICES)[service]
        return None if offset is None else f"http://{self.settings.host}:{self.settings.port + offset}"

    def _spawn(self, service: str) -> subprocess.Popen:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{service}.log", "ab")
        cmd = [sys.executable, "-m", "vicino.services.cli", "serve", service]
        offset = dict(SERVICES)[service]
        if offset is not None:
            cmd += ["--host", self.settings.host, "--port", str(self.settings.port + offset)]
        # stderr (JSON logs) goes both to the terminal (via tee-like inheritance) and the log file
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, start_new_session=True)

    def start(self) -> dict:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        redis_url = s.redis_url
        if not redis_url:
            self.redis = EmbeddedRedis(self.data_dir / "redis").start()
            redis_url = self.redis.url
        admin, secret = _secrets(self.data_dir, s)
        self.env = {**os.environ, "VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": admin,
                    "VICINO_TOKEN_SECRET": secret, "VICINO_DATA_DIR": str(self.data_dir),
                    "VICINO_GEO_URL": self.url_of("geo"), "VICINO_RECOMMENDER_URL": self.url_of("recommender"),
                    "VICINO_HISTORY_DIR": os.environ.get("VICINO_HISTORY_DIR", str(self.data_dir / "history")),
                    "VICINO_MODEL_DIR": os.environ.get("VICINO_MODEL_DIR", str(self.data_dir / "models"))}
        for service, _offset in SERVICES:
            self.children[service] = self._spawn(service)
            _wait_ready(self.url_of(service), self.children[service], 120)
        demo = None
        if s.demo:
            demo = load_demo(self.base_url, admin, s.demo_radius_m)
            demo["recommender"] = load_demo_recommender(self.url_of("recommender"), admin, self.env,
                                                        self.data_dir / "logs" / "demo.log")
        return {"redis_url": redis_url, "admin_token": admin, "demo": demo}

    def supervise_once(self) -> None:
        for service, proc in list(self.children.items()):
            if proc.poll() is None:
                continue
            n = self.restarts.get(service, 0) + 1
            if n > MAX_RESTARTS:
                raise RuntimeError(f"{service} keeps exiting (code {proc.returncode}); see {self.data_dir}/logs/{service}.log")
            self.restarts[service] = n
            print(f"vicino: {service} exited with {proc.returncode}; restart {n}/{MAX_RESTARTS}", file=sys.stderr)
            time.sleep(min(2 ** n * 0.1, 5))
            self.children[service] = self._spawn(service)

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()


def _providers_note(stack: Stack) -> str:
    env = stack.env
    if env.get("VICINO_FCM_CREDENTIALS") or env.get("VICINO_APNS_KEY_FILE") or env.get("VICINO_WEBHOOK_URL"):
        return "providers as configured"
    return f"no provider configured: pushes are written to {stack.data_dir / 'logs' / 'push.log'}"


def banner(stack: Stack, info: dict) -> str:
    base = stack.base_url
    lines = [
        "",
        "Vicino is up.",
        f"  geo          {base}/docs   (stores, devices, consent, locations)",
        f"  recommender  {stack.url_of('recommender')}/docs   (customers, interactions, offers, stock, rules)",
        f"  push         {stack.url_of('push')}/docs   (deliveries; {_providers_note(stack)})",
        f"  scheduler    {stack.url_of('scheduler')}/docs   (GET /v1/jobs; `vicino jobs list`, `vicino jobs run NAME`)",
        f"  KPIs         {stack.url_of('recommender')}/v1/kpis   (admin token; notebooks/kpis.ipynb plots them)",
        f"  health       {base}/healthz   ready: {base}/readyz   metrics: {base}/metrics",
        f"  worker       {stack.url_of('recommender-worker')}/readyz   (the recommender-worker's health and metrics)",
        f"  redis        {info['redis_url']}" + ("  (embedded, data in " + str(stack.data_dir / 'redis') + ")" if stack.redis else ""),
        f"  admin token  {info['admin_token']}   (bootstrap admin: hand out narrower keys with "
        "`vicino keys create NAME --role operator|analyst|app_backend|support`)",
        f"  logs         {stack.data_dir / 'logs'}",
    ]
    demo = info.get("demo")
    if demo:
        st = demo["stores"]
        token = demo["device"]["token"]
        lines += [
            f"  demo data    {st['created'] + st['updated']} stores (MIMIT fuel stations of Milano and Roma, Milano NIL districts)",
            f"  demo device  {DEMO_DEVICE['device_id']} of {DEMO_DEVICE['customer_id']}, location consent given",
            f"  demo shopper {DEMO_DEVICE['customer_id']} merged with UCI Online Retail customer "
            f"{demo['recommender']['customer']} (history imported); {demo['recommender']['offers']['created'] + demo['recommender']['offers']['updated']} offers, "
            f"stock at {demo['recommender']['stocked_stores']} stores near Duomo",
            "  demo model   " + ("LightFM trained on that history and published (GET /v1/model)"
                                 if demo["recommender"]["model_published"]
                                 else f"not published, see {stack.data_dir / 'logs' / 'demo.log'}; offers use popularity"),
            "",
            "The customer as a shop assistant sees them, and their offers at the Duomo store:",
            f"  curl -s {stack.url_of('recommender')}/v1/customers/{DEMO_DEVICE['customer_id']} -H 'Authorization: Bearer {token}'",
            f"  curl -s '{stack.url_of('recommender')}/v1/customers/{DEMO_DEVICE['customer_id']}/offers?k=5' -H 'Authorization: Bearer {token}'",
            "",
            "Try a fix at Milano Duomo:",
            f"  curl -s -X POST {base}/v1/locations -H 'Authorization: Bearer {token}' \\",
            "    -H 'Content-Type: application/json' \\",
            f"    -d '{{\"device_id\":\"{DEMO_DEVICE['device_id']}\",\"fixes\":[{{\"lat\":45.4642,\"lon\":9.19,\"accuracy_m\":10,\"ts\":'$(date +%s)'}}]}}'",
        ]
    else:
        lines.append("  demo data    none (VICINO_DEMO=0): the stack starts empty")
    lines += ["", "Ctrl-C stops everything, Redis included.", ""]
    return "\n".join(lines)


def run_up(settings: LauncherSettings) -> int:
    stack = Stack(settings)
    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True

    try:
        info = stack.start()  # Ctrl-C here raises KeyboardInterrupt, and we still clean up
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        print(banner(stack, info), flush=True)
        while not stopping:
            stack.supervise_once()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except Exception as e:
        print(f"vicino up: {e}", file=sys.stderr)
        return 1
    finally:
        print("vicino: stopping services and Redis...", file=sys.stderr, flush=True)
        stack.stop()
        print("vicino: stopped.", file=sys.stderr, flush=True)
    return 0
