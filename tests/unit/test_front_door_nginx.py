"""The production front door in a real nginx (Debian's `nginx` package: .ci/run installs it, and
never starts its service; without it these tests fail, they never skip).

Two nginx processes on free loopback ports, in front of four small recording HTTP servers that
stand in for the services (each answers with its own name and remembers what reached it):
- infra/nginx/nginx.conf, the compose proxy, as shipped except for the addresses (the compose
  service names become 127.0.0.1 ports, `listen 8080` a loopback port) and the /tmp paths;
- the Ingress (infra/k8s/base/ingress.yaml) written as ingress-nginx writes it (`location ~*
  "^<path>"` in its order, each with its Ingress's body limit, buffering and timeouts): the
  same regular expressions in nginx's own engine.
Through one port, every operation of every service's OpenAPI reaches its owner, a body over a
route's limit gets a 413 and never reaches a service, and nothing listens or connects anywhere
but 127.0.0.1."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from tests.unit.front_door_support import (
    BODY_METHODS, HEALTH, NGINX_CONF, SERVICES, build_service_apps, concrete_paths, expected_owner,
    ingress_locations, load_ingresses, nginx_size, operations, parse_nginx, table_paths,
)

LOOPBACK = "127.0.0.1"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    assert found, ("nginx not found: install Debian's `nginx` package (`apt-get install -y nginx`; .ci/run "
                   "does it; its service is never started by the tests)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# ---- the stand-ins for the services ------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    service: str
    method: str
    path: str
    body_bytes: int
    headers: dict
    peer_port: int


class Upstreams:
    """One small HTTP/1.1 server (keep-alive) per service on a loopback port."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.servers = {name: self._serve(name) for name in SERVICES}
        self.ports = {name: s.server_address[1] for name, s in self.servers.items()}

    def _serve(self, name: str) -> ThreadingHTTPServer:
        upstreams = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms wait for an ACK

            def answer(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    size = 0
                    while (chunk := int(self.rfile.readline().split(b";")[0], 16)):
                        size += len(self.rfile.read(chunk))
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    size = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with upstreams._lock:
                    upstreams.seen.append(Seen(name, self.command, self.path, size,
                                               {k.lower(): v for k, v in self.headers.items()},
                                               self.client_address[1]))
                body = json.dumps({"service": name, "path": self.path, "body_bytes": size}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return server

    def since(self, mark: int) -> list[Seen]:
        with self._lock:
            return self.seen[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def close(self) -> None:
        for s in self.servers.values():
            s.shutdown()
            s.server_close()


# ---- the two front doors ------------------------------------------------------------------------

def render_compose_conf(text: str, upstream_ports: dict[str, int], listen_port: int, workdir: Path) -> str:
    """nginx.conf with only its addresses and /tmp paths changed."""
    out, n = re.subn(r"\bserver ([a-z-]+):\d+;", lambda m: f"server {LOOPBACK}:{upstream_ports[m.group(1)]};", text)
    assert n == len(SERVICES)
    out, n = re.subn(r"\blisten 8080;", f"listen {LOOPBACK}:{listen_port};", out)
    assert n == 1
    out, n = re.subn(r"(?<=[ \t])/tmp/", f"{workdir}/", out)
    assert n >= 6, "the pid and the temporary files"
    out = out.replace("access_log /dev/stdout", f"access_log {workdir}/access.log")
    return out


def render_ingress_conf(upstream_ports: dict[str, int], listen_port: int, workdir: Path) -> str:
    """The Ingress as ingress-nginx renders its locations (template.go buildLocation: `~*
    "^<path>"` with backslashes and quotes escaped), in its order, with each Ingress's body
    limit, buffering and timeouts; what matches nothing goes to a 404 (its default backend)."""
    locations = []
    for loc in ingress_locations(load_ingresses()):
        service = loc.service.removeprefix("vicino-")
        path = loc.path.replace("\\", "\\\\").replace('"', '\\"')
        buffering = loc.annotation("proxy-request-buffering", "on")
        locations.append(f"""
        location ~* "^{path}" {{
            client_max_body_size {loc.annotation("proxy-body-size")};
            client_body_buffer_size {loc.annotation("client-body-buffer-size", "16k")};
            proxy_request_buffering {buffering};
            proxy_connect_timeout {loc.annotation("proxy-connect-timeout")}s;
            proxy_send_timeout {loc.annotation("proxy-send-timeout")}s;
            proxy_read_timeout {loc.annotation("proxy-read-timeout")}s;
            proxy_pass http://upstream_{service};
        }}""")
    upstreams = "".join(f"""
    upstream upstream_{name} {{
        server {LOOPBACK}:{port};
        keepalive 4;
        keepalive_timeout 4s;
    }}""" for name, port in upstream_ports.items())
    return f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client-body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    {upstreams}
    server {{
        listen {LOOPBACK}:{listen_port};
        {"".join(locations)}
        location / {{ return 404; }}
    }}
}}
"""


@dataclass
class FrontDoor:
    name: str
    url: str
    port: int
    process: subprocess.Popen
    workdir: Path

    def stderr(self) -> str:
        return (self.workdir / "stderr.log").read_text()


def assert_loopback_only(conf_text: str) -> None:
    """Every address in a rendered configuration is 127.0.0.1, and nothing resolves names."""
    conf = parse_nginx(conf_text)
    http = conf.one("http")
    assert http.one("resolver") is None
    (server,) = http.all("server")
    assert [d.args[0].split(":")[0] for d in server.all("listen")] == [LOOPBACK]
    upstream_names = set()
    for upstream in http.all("upstream"):
        upstream_names.add(upstream.args[0])
        for s in upstream.all("server"):
            assert s.args[0].startswith(f"{LOOPBACK}:"), s.args
    for loc in server.all("location"):
        pp = loc.one("proxy_pass")
        if pp is not None:
            assert pp.args[0].removeprefix("http://") in upstream_names, pp.args


def start_nginx(name: str, conf_text: str, workdir: Path, port: int) -> FrontDoor:
    assert_loopback_only(conf_text)
    conf = workdir / "nginx.conf"
    conf.write_text(conf_text)
    base = [nginx_binary(), "-e", "stderr", "-p", str(workdir), "-c", str(conf)]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"nginx -t refuses the {name} configuration:\n{checked.stderr}"
    assert "test is successful" in checked.stderr
    stderr = (workdir / "stderr.log").open("w")
    process = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, f"nginx ({name}) exited: {(workdir / 'stderr.log').read_text()}"
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, f"nginx ({name}) does not listen on {port}"
            time.sleep(0.05)
    return FrontDoor(name, f"http://{LOOPBACK}:{port}", port, process, workdir)


def stop_nginx(door: FrontDoor) -> None:
    door.process.terminate()
    try:
        door.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        door.process.kill()
        door.process.wait(timeout=10)


@pytest.fixture(scope="module")
def upstreams():
    u = Upstreams()
    yield u
    u.close()


@pytest.fixture(scope="module")
def doors(upstreams, tmp_path_factory) -> dict[str, FrontDoor]:
    started = {}
    try:
        work = tmp_path_factory.mktemp("compose-proxy")
        port = free_port()
        started["compose"] = start_nginx(
            "compose", render_compose_conf(NGINX_CONF.read_text(), upstreams.ports, port, work), work, port)
        work = tmp_path_factory.mktemp("ingress")
        port = free_port()
        started["ingress"] = start_nginx("ingress", render_ingress_conf(upstreams.ports, port, work), work, port)
        yield started
    finally:
        for door in started.values():
            stop_nginx(door)


@pytest.fixture(scope="module")
def ops():
    return operations(build_service_apps())


def call(client: httpx.Client, method: str, path: str, body: bytes | None = None) -> httpx.Response:
    return client.request(method.upper(), path, content=body,
                          headers={"Content-Type": "application/json"} if body is not None else {})


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def declared_too_large(door: FrontDoor, path: str, length: int) -> tuple[int, bytes]:
    """A POST that declares `length` bytes and sends none: nginx must answer from the header."""
    with socket.create_connection((LOOPBACK, door.port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: front.test\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        data = b""
        # until the whole answer is in (nginx then lingers a few seconds before it closes)
        while not _complete(data) and (chunk := s.recv(65536)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---- the checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("door_name", ["compose", "ingress"])
def test_every_operation_reaches_its_service_through_one_port(doors, upstreams, ops, door_name):
    door = doors[door_name]
    sent = 0
    with httpx.Client(base_url=door.url, timeout=10) as client:
        for op in ops:
            if not op.template.startswith("/v1/"):
                continue
            for path in concrete_paths(op.template):
                mark = upstreams.mark()
                body = b"{}" if op.method in BODY_METHODS else None
                r = call(client, op.method, f"{path}?limit=3", body)
                where = f"{door_name}: {op.method.upper()} {path} ({op.service})"
                assert r.status_code == 200, f"{where}: {r.status_code} {r.text[:200]}"
                assert r.json()["service"] == op.service, where
                (seen,) = upstreams.since(mark)
                # the request arrives as sent: method, path and query untouched, body whole
                assert (seen.service, seen.method, seen.path) == (op.service, op.method.upper(), f"{path}?limit=3")
                assert seen.body_bytes == (2 if body else 0), where
                sent += 1
        for path in HEALTH:
            r = client.get(path)
            assert r.status_code == 200 and r.json()["service"] == "geo", f"{door_name}: {path}"
    assert sent > 300


@pytest.mark.parametrize("door_name", ["compose", "ingress"])
def test_paths_no_service_serves_never_leave_the_proxy(doors, upstreams, door_name):
    door = doors[door_name]
    with httpx.Client(base_url=door.url, timeout=10) as client:
        for path in table_paths():
            mark = upstreams.mark()
            r = client.get(path)
            owner = expected_owner(path)
            if owner is None:
                assert r.status_code == 404, f"{door_name}: {path}"
                assert upstreams.since(mark) == [], f"{door_name}: {path} reached a service"
                if door_name == "compose":
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.json()["status"] == 404
            else:
                assert r.status_code == 200 and r.json()["service"] == owner, f"{door_name}: {path}"


def body_routes(ops) -> dict[str, tuple[str, str, int]]:
    """For each Ingress (one body limit each), a body operation it routes: name -> (method, path, limit)."""
    locations = ingress_locations(load_ingresses())
    out = {}
    for op in ops:
        if op.method in BODY_METHODS and op.template.startswith("/v1/"):
            path = concrete_paths(op.template)[0]
            loc = next(loc for loc in locations if re.search("^" + loc.path, path, re.IGNORECASE))
            out.setdefault(loc.ingress["metadata"]["name"], (op.method, path, nginx_size(loc.annotation("proxy-body-size"))))
    return out


@pytest.mark.parametrize("door_name", ["compose", "ingress"])
def test_a_body_over_the_routes_limit_gets_413_and_never_reaches_a_service(doors, upstreams, ops, door_name):
    door = doors[door_name]
    routes = body_routes(ops)
    assert set(routes) == {"vicino-geo", "vicino-recommender", "vicino-push", "vicino-scheduler", "vicino-bulk-import"}
    with httpx.Client(base_url=door.url, timeout=30) as client:
        for ingress_name, (method, path, limit) in sorted(routes.items()):
            where = f"{door_name}: {method.upper()} {path} (limit {limit})"
            mark = upstreams.mark()
            status, body = declared_too_large(door, path, limit + 1)
            assert status == 413, where
            if door_name == "compose":
                problem = json.loads(body)
                assert problem["status"] == 413 and problem["title"] == "Payload too large", where
            assert upstreams.since(mark) == [], f"{where}: the refused body reached a service"
            # a legal body passes whole: the limit itself, or for the bulk routes twice nginx's
            # default 1 MiB (streamed to the service unbuffered)
            size = limit if limit <= 1 << 20 else 2 << 20
            payload = b"[" + b" " * (size - 2) + b"]"
            r = call(client, method, path, payload)
            assert r.status_code == 200 and r.json()["body_bytes"] == size, f"{where}: {r.status_code}"


def test_the_compose_proxy_keeps_upstream_connections_alive_and_sets_forwarded_headers(doors, upstreams):
    door = doors["compose"]
    mark = upstreams.mark()
    with httpx.Client(base_url=door.url, timeout=10) as client:
        for i in range(10):
            r = client.get(f"/v1/stores/s-{i}", headers={"X-Forwarded-For": "203.0.113.9",
                                                         "X-Forwarded-Proto": "https", "Host": "vicino.test:8000"})
            assert r.json()["service"] == "geo"
    seen = upstreams.since(mark)
    assert len(seen) == 10
    # ten requests on one client connection: one worker, which keeps its upstream connection
    assert len({s.peer_port for s in seen}) <= 2, "no keep-alive to the upstream"
    for s in seen:
        assert s.headers["x-forwarded-for"] == s.headers["x-real-ip"] == LOOPBACK, "a client's X-Forwarded-For believed"
        assert s.headers["x-forwarded-proto"] == "http" and s.headers["x-forwarded-host"] == "vicino.test"
        assert s.headers["host"] == "vicino.test:8000" and "connection" not in s.headers
    # the access log names the service, never the path
    log = (door.workdir / "access.log").read_text()
    assert " geo GET 200 " in log and "/v1/stores" not in log and "s-3" not in log


def test_nothing_listens_or_connects_beyond_loopback(doors, upstreams):
    with httpx.Client(timeout=10) as client:  # fresh upstream connections to look at
        for door in doors.values():
            for path in ("/v1/locations", "/v1/offers/o-1", "/v1/deliveries/d-1", "/v1/jobs"):
                assert client.get(door.url + path).status_code == 200
        for door in doors.values():
            master = psutil.Process(door.process.pid)
            processes = [master, *master.children(recursive=True)]
            assert len(processes) >= 2, "no nginx worker"
            sockets = [c for p in processes for c in p.net_connections(kind="inet")]
            assert any(c.status == psutil.CONN_LISTEN and c.laddr.port == door.port for c in sockets)
            assert any(c.raddr and c.raddr.port in upstreams.ports.values() for c in sockets), \
                f"{door.name}: no kept-alive upstream connection seen"
            for c in sockets:
                assert c.laddr.ip == LOOPBACK, f"{door.name}: {c}"
                assert not c.raddr or c.raddr.ip == LOOPBACK, f"{door.name}: {c}"
        for door in doors.values():
            assert door.process.poll() is None, door.stderr()
