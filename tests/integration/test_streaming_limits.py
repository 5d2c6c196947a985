"""Bodies are judged while they arrive, by a real served geo process (`vicino serve geo`): a
caller without a credential is refused before a byte of the body is read, a caller without the
bulk route's role meets the default limit, and a chunked body is never buffered whole. The
uploads go over a raw socket, chunk by chunk, and stop as soon as the server has answered."""
from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_TOKEN, circle_store
from tests.support import served_geo

UPLOAD_BYTES = 200 * 1024 * 1024
CHUNK = 1024 * 1024
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def geo(redis_server, tmp_path_factory):
    with served_geo(redis_server.url, tmp_path_factory.mktemp("geo-stream-logs")) as url:
        yield url


def serving_pid(url: str) -> int:
    """The served process (uvicorn runs in it: one worker), found by the port on its command line."""
    port = str(urlsplit(url).port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and b"geo" in argv and port.encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no process serves {url}")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since start) of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def chunked_upload(url: str, path: str, headers: dict, total: int, time_bound_s: float = 120):
    """Sends up to `total` bytes as a chunked body, 1 MiB a chunk, and stops as soon as the server
    answers. Returns (status, response headers, response body, bytes sent)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n" \
           "Transfer-Encoding: chunked\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    piece = b"%x\r\n" % CHUNK + b" " * CHUNK + b"\r\n"  # JSON whitespace
    sent = 0
    deadline = time.monotonic() + time_bound_s
    try:
        sock.sendall(head.encode())
        while sent < total and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server has answered while the body was still coming
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # it answered and closed: read what it said
            sent += CHUNK
        else:
            if sent >= total:
                sock.sendall(b"0\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = sock.recv(65536)
            assert data, f"connection closed without an answer after {sent} bytes"
            raw += data
        head_raw, _, body = raw.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(got.get("content-length", "0"))
        while len(body) < length:
            data = sock.recv(65536)
            if not data:
                break
            body += data
        return status, got, body, sent
    finally:
        sock.close()


def make_key(url: str, *roles: str) -> str:
    r = httpx.post(url + "/v1/keys", headers=ADMIN, json={"name": "stream-" + "-".join(roles), "roles": list(roles)})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def test_a_200_mb_upload_without_a_token_is_refused_before_its_body_and_memory_stays_flat(geo):
    pid = serving_pid(geo)
    assert httpx.get(geo + "/readyz").status_code == 200
    before = memory_kb(pid)
    status, headers, body, sent = chunked_upload(geo, "/v1/stores", {}, UPLOAD_BYTES)
    after = memory_kb(pid)
    assert status == 401, body
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["status"] == 401
    assert sent < UPLOAD_BYTES // 4, f"the answer came only after {sent} bytes"
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mb < 50, f"the process's peak memory grew by {grown_mb:.0f} MB for a refused upload"
    assert httpx.get(geo + "/healthz").status_code == 200  # and it still serves


def test_a_key_without_the_bulk_role_is_refused_while_it_streams(geo):
    analyst = make_key(geo, "analyst")
    pid = serving_pid(geo)
    before = memory_kb(pid)
    status, _, body, sent = chunked_upload(geo, "/v1/stores", {"Authorization": f"Bearer {analyst}"}, UPLOAD_BYTES)
    after = memory_kb(pid)
    assert status == 403, body  # the route refuses the role before it reads the body
    assert sent < UPLOAD_BYTES // 4, f"the answer came only after {sent} bytes"
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mb < 50, f"the process's peak memory grew by {grown_mb:.0f} MB for a refused upload"


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_past_the_limit(geo):
    """A device's location report, read by its route: cut with a 413 at the default limit (1 MiB),
    while the client is still sending, never buffered whole."""
    r = httpx.post(geo + "/v1/devices", headers=ADMIN, json={"device_id": "dev-stream", "customer_id": "cust-stream",
                                                             "platform": "android", "push_token": "tok-stream"})
    assert r.status_code == 201, r.text
    pid = serving_pid(geo)
    before = memory_kb(pid)
    status, headers, body, sent = chunked_upload(geo, "/v1/locations", {"Authorization": f"Bearer {r.json()['token']}"},
                                                 UPLOAD_BYTES)
    after = memory_kb(pid)
    assert status == 413, body
    assert headers["content-type"] == "application/problem+json"
    problem = orjson.loads(body)
    assert problem["title"] == "Payload too large" and str(1 << 20) in problem["detail"]
    assert sent < UPLOAD_BYTES // 4, f"the 413 came only after {sent} bytes"
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mb < 50, f"the process's peak memory grew by {grown_mb:.0f} MB for a refused upload"


def test_a_declared_length_over_the_limit_is_refused_before_the_body(geo):
    analyst = make_key(geo, "analyst")
    parts = urlsplit(geo)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/stores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {analyst}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n".encode())
        answer = sock.recv(65536)  # nothing of the body was sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_an_operator_still_streams_a_bulk_body_past_the_default_limit(geo):
    """The bulk limit stays open to the role it is for, chunked bodies included."""
    operator = make_key(geo, "operator")
    features = [circle_store(f"stream-{i}", 45.0 + i * 0.01, 9.0, 50) for i in range(20)]
    payload = orjson.dumps({"type": "FeatureCollection", "features": features}) + b" " * (3 << 20)

    def chunks():
        for start in range(0, len(payload), CHUNK):
            yield payload[start:start + CHUNK]

    r = httpx.post(geo + "/v1/stores", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {operator}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["created"] + r.json()["updated"] == 20
