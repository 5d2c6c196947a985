"""`vicino up`: Redis (embedded unless given), every service as a supervised child process,
demo data. Ctrl-C stops the children, then Redis."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from .demo import DEMO_DEVICE, load_demo, load_demo_recommender
from .embedded_redis import EmbeddedRedis
from .settings import LauncherSettings
from .stack_file import remove_stack_file, write_stack_file

# One process per service: (name, port offset from VICINO_PORT), in the order `vicino up` waits
# for them (they start together). The front door on
# VICINO_PORT serves every public route (the app's one base URL); the per-service ports stay for
# operators and for the services' calls to each other; the recommender-worker's port is its
# health edge (/healthz, /readyz, /metrics).
SERVICES = (("geo", 5), ("recommender", 1), ("recommender-worker", 4), ("push", 2), ("scheduler", 3), ("front", 0))
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


class StartError(RuntimeError):
    """A service that could not start: the message names it, its port and the reason."""


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return False
        except OSError:
            return True


def _last_error(log: Path) -> str:
    """The most telling line of a service's log: its last error or its last line."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines()[-40:] if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            return str(record.get("msg") or record.get("message") or line)[:300]
        if record is None and ("Error" in line or "error" in line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""


def _wait_ready(service: str, url: str | None, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    def exited() -> StartError:
        why = _last_error(log)
        return StartError(f"{service} ({url or 'worker'}) exited with code {proc.returncode} before it was ready"
                          + (f": {why}" if why else "") + f" (log: {log})")

    if url is None:  # a worker: alive after a moment is all we can ask
        time.sleep(0.5)
        if proc.poll() is not None:
            raise exited()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise exited()
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise StartError(f"{service}: {url}/readyz not ready after {timeout_s} s (log: {log})")


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
        """The front door: every public route on VICINO_PORT."""
        return self.url_of("front")

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
        for service, offset in SERVICES:  # before anything starts: the common failure, said plainly
            port = s.port + offset
            if _port_taken(s.host, port):
                raise StartError(f"{service} cannot start: port {port} on {s.host} is already in use (another "
                                 f"`vicino up`, or another program: `ss -ltnp 'sport = :{port}'` names it); the stack "
                                 f"uses ports {s.port}..{s.port + len(SERVICES) - 1}: set VICINO_PORT to another base port")
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
        # all at once (they need each other only per request, not to be ready): the stack is up
        # in the time of its slowest service, not the sum
        for service, _offset in SERVICES:
            self.children[service] = self._spawn(service)
        for service, _offset in SERVICES:
            _wait_ready(service, self.url_of(service), self.children[service], 120,
                        self.data_dir / "logs" / f"{service}.log")
        write_stack_file(self.data_dir, front_url=self.base_url,
                         urls={name: self.url_of(name) for name, _ in SERVICES},
                         redis_url=redis_url, history_dir=self.env["VICINO_HISTORY_DIR"],
                         model_dir=self.env["VICINO_MODEL_DIR"])
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
        remove_stack_file(self.data_dir)


def _providers_note(stack: Stack) -> str:
    env = stack.env
    if env.get("VICINO_FCM_CREDENTIALS") or env.get("VICINO_APNS_KEY_FILE") or env.get("VICINO_WEBHOOK_URL"):
        return "providers as configured"
    return f"no provider configured: pushes are written to {stack.data_dir / 'logs' / 'push.log'}"


def banner(stack: Stack, info: dict) -> str:
    base = stack.base_url
    lines = [
        "",
        "Vicino is up. One base URL for the app, the console and every API call:",
        f"  API          {base}   docs: {base}/docs   OpenAPI: {base}/openapi.json",
        "               (stores, devices, consent, locations, customers, offers, stock, rules, campaigns, KPIs, "
        "deliveries, jobs)",
        f"  health       {base}/healthz   ready: {base}/readyz   metrics: {base}/metrics",
        f"  pushes       {_providers_note(stack)}",
        f"  KPIs         {base}/v1/kpis   (analyst key; notebooks/kpis.ipynb plots them)",
        f"  redis        {info['redis_url']}" + ("  (embedded, data in " + str(stack.data_dir / 'redis') + ")" if stack.redis else ""),
        f"  admin token  {info['admin_token']}   (bootstrap admin: hand out narrower keys with "
        "`vicino keys create NAME --role operator|analyst|app_backend|support`)",
        f"  stack file   {stack.data_dir / 'stack.json'}   (every `vicino` command in another terminal reads it: "
        "nothing to export)",
        f"  logs         {stack.data_dir / 'logs'}",
        "  per service  (for operators) " + "  ".join(
            f"{name} {stack.url_of(name)}" for name in ("geo", "recommender", "push", "scheduler", "recommender-worker")),
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
            f"  campaigns    {', '.join(demo['recommender']['campaigns'])} (one in Italian, one in English): "
            f"GET {base}/v1/campaigns; why a visit got its push: GET {base}/v1/visits/<visit_id>/decision",
            "",
            "The customer as a shop assistant sees them, and their offers at the Duomo store:",
            f"  curl -s {base}/v1/customers/{DEMO_DEVICE['customer_id']} -H 'Authorization: Bearer {token}'",
            f"  curl -s '{base}/v1/customers/{DEMO_DEVICE['customer_id']}/offers?k=5' -H 'Authorization: Bearer {token}'",
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
