"""A local stand-in for the Apple Push Notification service provider API: HTTP/2 over TLS (ALPN h2)
on 127.0.0.1 with token (JWT) authentication, for the push gateway's tests, benchmark and load
tests. Not Apple's code. Reasons and statuses follow Apple's "Handling notification responses from
APNs"; `/_control/*` (also HTTP/2, same port) is the stand-in's own scripting API."""
from __future__ import annotations

import argparse
import asyncio
import functools
import re
import secrets
import signal
import ssl
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import hpack.hpack
import jwt
import orjson
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset,
                       WindowUpdated)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings

from ._core import OK, FakeServer, Reply, print_ready, with_delay
from .keys import ApnsKey, Tls, load_public_key

DEVICE_PATH = "/3/device/"
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
TOKEN_MAX_AGE_S = 3600
CLOCK_SKEW_S = 60
PUSH_TYPES = frozenset({"alert", "background", "controls", "location", "voip", "complication", "fileprovider",
                        "mdm", "liveactivity", "pushtotalk", "widgets"})
PRIORITIES = frozenset({"10", "5", "1"})
UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# today's tokens are 32 bytes; Apple warns they may grow, so accept longer even-length hex
DEVICE_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
CHECKED_ONCE = ("authorization", "apns-id", "apns-topic", "apns-push-type", "apns-priority", "apns-expiration",
                "apns-collapse-id")


# --- replies ------------------------------------------------------------------------------------

def apns_error(status: int, reason: str, headers: dict[str, str] | None = None, **extra) -> Reply:
    return Reply(status, {"reason": reason, **extra}, dict(headers or {}))


def ok() -> Reply:
    return OK


def bad_device_token() -> Reply:
    return apns_error(400, "BadDeviceToken")


def device_token_not_for_topic() -> Reply:
    return apns_error(400, "DeviceTokenNotForTopic")


def unregistered(timestamp_ms: int | None = None) -> Reply:
    """410: the token stopped being valid for the topic at `timestamp_ms` (default: now)."""
    return apns_error(410, "Unregistered", timestamp=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)


def expired_token() -> Reply:
    return apns_error(410, "ExpiredToken")


def too_many_requests(retry_after: int | None = None) -> Reply:
    return apns_error(429, "TooManyRequests", {"retry-after": str(retry_after)} if retry_after is not None else None)


def internal() -> Reply:
    return apns_error(500, "InternalServerError")


def unavailable() -> Reply:
    return apns_error(503, "ServiceUnavailable")


def shutdown() -> Reply:
    return apns_error(503, "Shutdown")


def expired_provider_token() -> Reply:
    return apns_error(403, "ExpiredProviderToken")


def invalid_provider_token() -> Reply:
    return apns_error(403, "InvalidProviderToken")


def slow(delay_s: float, then: Reply | None = None) -> Reply:
    return with_delay(then or OK, delay_s)


def malformed(status: int = 500) -> Reply:
    """An answer whose body is not JSON (as a proxy in front of the service might give)."""
    return Reply(status, b"upstream connect error or disconnect/reset before headers",
                 {"content-type": "text/plain"}, kind="malformed")


def reset(error_code: int = ErrorCodes.INTERNAL_ERROR) -> Reply:
    """RST_STREAM on this request's stream; the connection stays up."""
    return Reply(0, kind="reset", error_code=int(error_code))


def drop(goaway: bool = False, reason: str | None = None) -> Reply:
    """Lose the whole connection: abruptly, or after a GOAWAY (with `{"reason": ...}` as debug data,
    as APNs does) that leaves this request unprocessed."""
    return Reply(0, {"reason": reason} if reason else None, kind="drop",
                 error_code=int(ErrorCodes.NO_ERROR) if goaway or reason else None)


def device_token(seed: str | int | None = None) -> str:
    """A well-formed 32-byte device token (hex)."""
    if seed is None:
        return secrets.token_hex(32)
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{seed}:a").hex + uuid.uuid5(uuid.NAMESPACE_OID, f"{seed}:b").hex


def _memoize_hpack_huffman() -> None:
    """hpack decodes Huffman strings in pure Python, and clients never index `authorization`
    (RFC 7541 7.1.3), so the same provider token is decoded on every request: half the server's
    time. Huffman decoding is a pure function of its bytes; remember recent results."""
    if not hasattr(hpack.hpack.decode_huffman, "cache_info"):
        hpack.hpack.decode_huffman = functools.lru_cache(maxsize=8192)(hpack.hpack.decode_huffman)


# --- provider-token verification ----------------------------------------------------------------

@dataclass(frozen=True)
class _Key:
    key_id: str
    team_id: str
    public_key: object


@dataclass(frozen=True)
class _Verified:
    key: _Key
    iat: int


class _Stream:
    __slots__ = ("headers", "body")

    def __init__(self, headers) -> None:
        self.headers = headers
        self.body = b""


class ApnsLikeServer(FakeServer):
    """`POST /3/device/{token}` over HTTP/2 + TLS, token-based provider authentication only."""

    scheme = "https"
    name = "apns_like"

    def __init__(self, *, tls: Tls | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                 apns_key: ApnsKey | None = None, key_id: str | None = None, team_id: str | None = None,
                 public_key=None, topic: str | Iterable[str] = "com.vicino.app", host: str = "127.0.0.1",
                 port: int = 0, max_records: int | None = None, max_concurrent_streams: int = 1000,
                 strict_device_tokens: bool = True, min_token_refresh_s: float = 0.0) -> None:
        super().__init__(host=host, port=port, max_records=max_records)
        if tls is not None:
            cert, key = tls.cert, tls.key
        if cert is None or key is None:
            raise ValueError("APNs is TLS only: give tls= or cert= and key=")
        self.cert, self.key = Path(cert), Path(key)
        self.topics = {topic} if isinstance(topic, str) else set(topic)
        self.max_concurrent_streams = max_concurrent_streams
        self.strict_device_tokens = strict_device_tokens
        # Apple refuses a new provider token for a key within 20 minutes of the previous one
        # (TooManyProviderTokenUpdates); 0 leaves it off, as tests mint tokens freely
        self.min_token_refresh_s = min_token_refresh_s
        self.connections_accepted = 0      # TLS handshakes completed (since the last reset)
        self.max_open_streams = 0          # most streams open at once on one connection
        self.max_open_streams_total = 0    # ... and over all connections
        self.provider_tokens_seen = 0
        self._open_total = 0
        self._connection_serial = 0        # names connections in the record; never reset
        self._keys: dict[str, _Key] = {}
        self._tokens: dict[str, _Verified | tuple[int, str]] = {}
        self._last_new_token: dict[str, float] = {}
        self._connections: set[_H2Protocol] = set()
        self._stop_event: asyncio.Event | None = None
        _memoize_hpack_huffman()
        if apns_key is not None:
            self.add_key(apns_key)
        if public_key is not None:
            if not (key_id and team_id):
                raise ValueError("a public key needs its key_id and team_id")
            self.add_key(key_id=key_id, team_id=team_id, public_key=public_key)

    def add_key(self, apns_key: ApnsKey | None = None, *, key_id: str | None = None, team_id: str | None = None,
                public_key=None) -> None:
        if apns_key is not None:
            k = _Key(apns_key.key_id, apns_key.team_id, apns_key.public_key)
        else:
            k = _Key(key_id, team_id, load_public_key(public_key))
        self._keys = {**self._keys, k.key_id: k}
        self._tokens = {}

    def _reset_extra(self) -> None:
        self.connections_accepted = 0
        self.max_open_streams = self.max_open_streams_total = 0
        self.provider_tokens_seen = 0

    def stats(self) -> dict:
        return {**super().stats(), "connections_accepted": self.connections_accepted,
                "connections_open": len(self._connections), "max_open_streams": self.max_open_streams,
                "max_open_streams_total": self.max_open_streams_total,
                "provider_tokens_seen": self.provider_tokens_seen}

    # --- the rules ---
    def _provider_token(self, authorization: str | None) -> Reply | None:
        if not authorization:
            return apns_error(403, "MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return apns_error(403, "MissingProviderToken")
        verified = self._tokens.get(token)
        if verified is None:  # verify each distinct token once; its age is checked on every request
            verified = self._verify(token)
            if len(self._tokens) > 10_000:
                self._tokens = {}
            self._tokens[token] = verified
        if isinstance(verified, tuple):
            return apns_error(*verified)
        age = time.time() - verified.iat
        if age > TOKEN_MAX_AGE_S:
            return apns_error(403, "ExpiredProviderToken")
        if age < -CLOCK_SKEW_S:
            return apns_error(403, "InvalidProviderToken")
        return None

    def _verify(self, token: str) -> _Verified | tuple[int, str]:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        key = self._keys.get(header.get("kid"))
        if key is None or header.get("alg") != "ES256" or claims.get("iss") != key.team_id:
            return 403, "InvalidProviderToken"
        try:
            jwt.decode(token, key.public_key, algorithms=["ES256"],
                       options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False})
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)):
            return 403, "InvalidProviderToken"
        self.provider_tokens_seen += 1
        now = time.time()
        last = self._last_new_token.get(key.key_id)
        self._last_new_token[key.key_id] = now
        if self.min_token_refresh_s and last is not None and now - last < self.min_token_refresh_s:
            return 429, "TooManyProviderTokenUpdates"
        return _Verified(key, int(iat))

    def evaluate(self, method: bytes, path: str, headers: dict[str, str], body: bytes,
                 duplicated: bool, collapse_id_bytes: int) -> tuple[Reply | None, str | None, object]:
        """Apple's checks, in order. Returns (error reply or None, device token, parsed JSON body)."""
        if method != b"POST":
            return apns_error(405, "MethodNotAllowed"), None, None
        if not path.startswith(DEVICE_PATH):
            return apns_error(404, "BadPath"), None, None
        token = path[len(DEVICE_PATH):] or None
        doc = None
        if body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
        if token is None:
            return apns_error(400, "MissingDeviceToken"), None, doc
        if duplicated:
            return apns_error(400, "DuplicateHeaders"), token, doc
        error = self._provider_token(headers.get("authorization"))
        if error is not None:
            return error, token, doc
        topic = headers.get("apns-topic")
        if not topic:
            return apns_error(400, "MissingTopic"), token, doc
        if topic not in self.topics:
            return apns_error(400, "TopicDisallowed"), token, doc
        push_type = headers.get("apns-push-type")
        if push_type not in PUSH_TYPES:
            return apns_error(400, "InvalidPushType"), token, doc
        apns_id = headers.get("apns-id")
        if apns_id is not None and not UUID_FORM.fullmatch(apns_id):
            return apns_error(400, "BadMessageId"), token, doc
        priority = headers.get("apns-priority")
        if priority is not None and priority not in PRIORITIES:
            return apns_error(400, "BadPriority"), token, doc
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return apns_error(400, "BadExpirationDate"), token, doc
        if collapse_id_bytes > MAX_COLLAPSE_ID:
            return apns_error(400, "BadCollapseId"), token, doc
        if self.strict_device_tokens and not DEVICE_TOKEN.fullmatch(token):
            return apns_error(400, "BadDeviceToken"), token, doc
        if not body:
            return apns_error(400, "PayloadEmpty"), token, doc
        if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            return apns_error(413, "PayloadTooLarge"), token, doc
        if not isinstance(doc, dict) or not isinstance(doc.get("aps"), dict):
            # Apple names no reason for a body that is not a JSON dictionary with "aps"
            return apns_error(400, "PayloadEmpty"), token, doc
        return None, token, doc

    # --- running ---
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def serve(self, sock, ready) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await loop.create_server(lambda: _H2Protocol(self), sock=sock, ssl=self.ssl_context(),
                                          backlog=2048, ssl_handshake_timeout=10)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop_event.set)
        ready()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for conn in list(self._connections):
                conn.goaway()
            await asyncio.sleep(0.01)  # let the GOAWAYs out
            if in_main:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def _request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()


class _H2Protocol(asyncio.Protocol):
    """One client connection: h2's state machine, fed from asyncio."""

    def __init__(self, server: ApnsLikeServer) -> None:
        self.server = server
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[int, memoryview] = {}
        self.open = 0
        self.closed = False
        self.transport = None
        self.number = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            transport.close()  # APNs speaks HTTP/2 only
            return
        s = self.server
        s.connections_accepted += 1
        s._connection_serial += 1
        self.number = s._connection_serial
        s._connections.add(self)
        # h2's per-header validation costs as much as the rest of a request; clients here are
        # HTTP/2 libraries, and the checks APNs makes on headers are made in evaluate()
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                               validate_outbound_headers=False, normalize_outbound_headers=False,
                                               validate_inbound_headers=False, normalize_inbound_headers=False))
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536})
        self.h2.initiate_connection()
        # a roomy connection window: up to 1000 streams of 4 KiB each may be in flight
        self.h2.increment_flow_control_window(2**24 - 65535)
        transport.write(self.h2.data_to_send())

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server._connections.discard(self)
        self.server._open_total -= self.open
        self.open = 0
        self.streams.clear()
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self._flush()
            self.transport.close()
            return
        ended = []
        for ev in events:
            kind = type(ev)
            if kind is DataReceived:
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.body += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif kind is RequestReceived:
                self.streams[ev.stream_id] = _Stream(ev.headers)
                self._opened()
            elif kind is StreamEnded:
                ended.append(ev.stream_id)
            elif kind is StreamReset:
                self.pending.pop(ev.stream_id, None)
                if self.streams.pop(ev.stream_id, None) is not None:
                    self._closed_one()
            elif kind is WindowUpdated:
                self._pump(ev.stream_id)
            elif kind is ConnectionTerminated:
                self._flush()
                self.transport.close()
                return
        # answer after the whole read: streams that arrived together count as open together
        for stream_id in ended:
            try:
                self._request(stream_id)
            except Exception:  # a bug in the stand-in: say so, and answer as APNs would
                traceback.print_exc()
                self._answer(stream_id, internal(), str(uuid.uuid4()))
        self._flush()

    def _opened(self) -> None:
        s = self.server
        self.open += 1
        s._open_total += 1
        if self.open > s.max_open_streams:
            s.max_open_streams = self.open
        if s._open_total > s.max_open_streams_total:
            s.max_open_streams_total = s._open_total

    def _closed_one(self) -> None:
        self.open -= 1
        self.server._open_total -= 1

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def _request(self, stream_id: int) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        received_at = time.time()
        method = path = b""
        headers: dict[str, str] = {}
        duplicated = False
        collapse_id_bytes = 0
        for k, v in st.headers:
            if k[:1] == b":":
                if k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                continue
            name = k.decode("latin-1").lower()
            if name in headers and name in CHECKED_ONCE:
                duplicated = True
            if name == "apns-collapse-id":
                collapse_id_bytes = len(v)
            headers[name] = v.decode("utf-8", "replace")
        path_s = path.decode("utf-8", "replace")
        if path_s.startswith("/_control/"):
            route, _, query = path_s.partition("?")
            status, out = self.server.control(method.decode("latin-1"), route, query, st.body)
            self._answer(stream_id, Reply(status, out, {"content-type": "application/json"}), None)
            return
        s = self.server
        reply, token, doc = s.evaluate(method, path_s, headers, st.body, duplicated, collapse_id_bytes)
        if reply is None:
            reply = s._next_reply(token) or OK
        apns_id = headers.get("apns-id")
        if apns_id is None or not UUID_FORM.fullmatch(apns_id):
            apns_id = str(uuid.uuid4())
        cut = reply.kind in ("drop", "reset")
        s._record(path=path_s, headers=headers, json=doc, token=token, received_at=received_at,
                  status=None if cut else reply.status, method=method.decode("latin-1"), kind=reply.kind,
                  connection=self.number)
        if reply.delay_s > 0:
            asyncio.get_running_loop().call_later(reply.delay_s, self._answer_later, stream_id, reply, apns_id)
        else:
            self._answer(stream_id, reply, apns_id)

    def _answer_later(self, stream_id: int, reply: Reply, apns_id: str) -> None:
        self._answer(stream_id, reply, apns_id)
        self._flush()

    def _answer(self, stream_id: int, reply: Reply, apns_id: str | None) -> None:
        if self.closed or stream_id not in self.streams:
            return  # the client reset the stream, or the connection is gone
        try:
            if reply.kind == "reset":
                self.h2.reset_stream(stream_id, reply.error_code or ErrorCodes.INTERNAL_ERROR)
                self._done(stream_id)
                return
            if reply.kind == "drop":
                self._drop(stream_id, reply)
                return
            body = reply.body_bytes()
            headers = [(b":status", str(reply.status).encode())]
            if apns_id is not None:
                headers.append((b"apns-id", apns_id.encode()))
            if body and "content-type" not in reply.headers:
                headers.append((b"content-type", b"application/json"))
            for k, v in reply.headers.items():
                headers.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
            if body:
                headers.append((b"content-length", str(len(body)).encode()))
                self.h2.send_headers(stream_id, headers)
                self.pending[stream_id] = memoryview(body)
                self._pump_one(stream_id)
            else:
                self.h2.send_headers(stream_id, headers, end_stream=True)
                self._done(stream_id)
        except H2Error:
            self._done(stream_id)

    def _done(self, stream_id: int) -> None:
        self.pending.pop(stream_id, None)
        if self.streams.pop(stream_id, None) is not None:
            self._closed_one()

    def _pump(self, stream_id: int) -> None:
        for sid in ([stream_id] if stream_id else list(self.pending)):
            self._pump_one(sid)

    def _pump_one(self, stream_id: int) -> None:
        data = self.pending.get(stream_id)
        if data is None:
            return
        try:
            while data:
                n = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(data))
                if n <= 0:
                    self.pending[stream_id] = data
                    return  # until the client's WINDOW_UPDATE
                self.h2.send_data(stream_id, bytes(data[:n]), end_stream=n == len(data))
                data = data[n:]
        except H2Error:
            pass
        self._done(stream_id)

    def _drop(self, stream_id: int, reply: Reply) -> None:
        if reply.error_code is not None:
            self.h2.close_connection(error_code=reply.error_code, additional_data=reply.body_bytes() or None,
                                     last_stream_id=max(0, stream_id - 2))
            self._flush()
            self.transport.close()
        else:
            self.transport.abort()
        self.closed = True

    def goaway(self) -> None:
        if self.closed:
            return
        try:
            self.h2.close_connection(error_code=ErrorCodes.NO_ERROR)
            self._flush()
        except H2Error:
            pass
        self.transport.close()


def start_in_thread(**config) -> ApnsLikeServer:
    """Start an `ApnsLikeServer(**config)` on a free port in a background thread."""
    return ApnsLikeServer(**config).start_in_thread()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testbed.push_servers.apns_like", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--key-id", required=True)
    p.add_argument("--team-id", required=True)
    p.add_argument("--topic", action="append", required=True, help="an allowed apns-topic (repeatable)")
    p.add_argument("--public-key", required=True, help="PEM file: the .p8 key's public half (or the .p8 itself)")
    p.add_argument("--max-records", type=int)
    p.add_argument("--any-device-token", action="store_true", help="accept device tokens that are not hex")
    p.add_argument("--min-token-refresh", type=float, default=0.0,
                   help="refuse a new provider token sooner than this many seconds after the last (Apple: 1200)")
    a = p.parse_args(argv)
    server = ApnsLikeServer(cert=a.cert, key=a.key, key_id=a.key_id, team_id=a.team_id,
                            public_key=Path(a.public_key), topic=a.topic, host=a.host, port=a.port,
                            max_records=a.max_records, strict_device_tokens=not a.any_device_token,
                            min_token_refresh_s=a.min_token_refresh)
    server.run_forever(print_ready)


if __name__ == "__main__":
    main()
