"""A local stand-in for Firebase Cloud Messaging's HTTP v1 API plus Google's OAuth2 token endpoint
(plain HTTP on 127.0.0.1), for the push gateway's tests, benchmark and load tests. Not Google's code.

Errors follow firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode and Google's API error
format; `/_control/*` is the stand-in's own scripting API (see `_core.FakeServer.control`)."""
from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import orjson
import uvicorn

from ._core import OK, FakeServer, Reply, print_ready, with_delay
from .keys import FCM_SCOPE, JWT_BEARER, ServiceAccount, load_public_key

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
JSON_TYPE = "application/json; charset=UTF-8"
MAX_MESSAGE_BYTES = 4096
MAX_TTL_S = 28 * 24 * 3600
CLOCK_SKEW_S = 300  # how far off Google tolerates a JWT's iat/exp to be
SEND_SCOPES = frozenset({FCM_SCOPE, "https://www.googleapis.com/auth/cloud-platform"})
SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
# registration tokens are URL-safe base64 with ':' separating the instance id
TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9_\-:.]+")

NOT_FOUND_HTML = (b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
                  b"  <title>Error 404 (Not Found)!!1</title>\n"
                  b"  <p><b>404.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
                  b"  <p>The requested URL was not found on this server.  <ins>That\xe2\x80\x99s all we know.</ins>\n")
SERVER_ERROR_HTML = (b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
                     b"  <title>Error 500 (Server Error)!!1</title>\n"
                     b"  <p><b>500.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
                     b"  <p>There was an error. Please try again later.  <ins>That\xe2\x80\x99s all we know.</ins>\n")


# --- replies, in Google's error format ---------------------------------------------------------

def google_error(code: int, status: str, message: str, details: list | None = None,
                 headers: dict[str, str] | None = None) -> Reply:
    error: dict = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return Reply(code, {"error": error}, dict(headers or {}))


def _fcm(code: str) -> dict:
    return {"@type": FCM_ERROR, "errorCode": code}


def _bad_request(description: str, field: str | None = None) -> dict:
    violation = {"field": field, "description": description} if field else {"description": description}
    return {"@type": BAD_REQUEST, "fieldViolations": [violation]}


def _error_info(reason: str) -> dict:
    return {"@type": ERROR_INFO, "reason": reason, "domain": "googleapis.com",
            "metadata": {"method": "google.firebase.fcm.v1.FcmService.SendMessage", "service": "fcm.googleapis.com"}}


def ok() -> Reply:
    return OK


def unregistered() -> Reply:
    return google_error(404, "NOT_FOUND", "Requested entity was not found.", [_fcm("UNREGISTERED")])


def invalid_token() -> Reply:
    msg = "The registration token is not a valid FCM registration token"
    return google_error(400, "INVALID_ARGUMENT", msg,
                        [_fcm("INVALID_ARGUMENT"), _bad_request(msg, "message.token")])


def invalid_argument(message: str = "Request contains an invalid argument.", field: str | None = None) -> Reply:
    details = [_fcm("INVALID_ARGUMENT")]
    if field:
        details.append(_bad_request(message, field))
    return google_error(400, "INVALID_ARGUMENT", message, details)


def _parse_error(message: str, field: str | None = None) -> Reply:
    # rejected by Google's JSON-to-proto layer, before FCM sees it: no FcmError detail
    return google_error(400, "INVALID_ARGUMENT", message, [_bad_request(message, field)])


def quota_exceeded(retry_after: int | None = None) -> Reply:
    return google_error(429, "RESOURCE_EXHAUSTED",
                        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' "
                        "of service 'fcm.googleapis.com'.", [_fcm("QUOTA_EXCEEDED")],
                        {"retry-after": str(retry_after)} if retry_after is not None else None)


def unavailable(retry_after: int | None = None) -> Reply:
    return google_error(503, "UNAVAILABLE", "The service is currently unavailable.", [_fcm("UNAVAILABLE")],
                        {"retry-after": str(retry_after)} if retry_after is not None else None)


def internal() -> Reply:
    return google_error(500, "INTERNAL", "Internal error encountered.", [_fcm("INTERNAL")])


def unauthenticated(reason: str = "ACCESS_TOKEN_TYPE_UNSUPPORTED") -> Reply:
    """401 for a bad/expired/revoked access token (`CREDENTIALS_MISSING` when there was none)."""
    if reason == "CREDENTIALS_MISSING":
        msg = "Request is missing required authentication credential."
    else:
        msg = "Request had invalid authentication credentials."
    msg += (" Expected OAuth 2 access token, login cookie or other valid authentication credential. "
            "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
    return google_error(401, "UNAUTHENTICATED", msg, [_error_info(reason)],
                        {"www-authenticate": 'Bearer realm="https://accounts.google.com/"'})


def permission_denied(message: str, reason: str | None = None) -> Reply:
    return google_error(403, "PERMISSION_DENIED", message, [_error_info(reason)] if reason else None)


def sender_id_mismatch() -> Reply:
    return google_error(403, "PERMISSION_DENIED", "SenderId mismatch", [_fcm("SENDER_ID_MISMATCH")])


def third_party_auth_error() -> Reply:
    return google_error(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
                        [_fcm("THIRD_PARTY_AUTH_ERROR")])


def slow(delay_s: float, then: Reply | None = None) -> Reply:
    return with_delay(then or OK, delay_s)


def malformed(status: int = 200) -> Reply:
    """A body that is not JSON: a truncated one on 200, Google's front-end HTML page otherwise."""
    if status == 200:
        return Reply(200, b'{\n  "name": "projects/', {"content-type": JSON_TYPE}, kind="malformed")
    return Reply(status, SERVER_ERROR_HTML, {"content-type": "text/html; charset=UTF-8"}, kind="malformed")


def drop() -> Reply:
    """Close the connection without answering."""
    return Reply(0, kind="drop")


def registration_token(seed: str | int | None = None) -> str:
    """A token shaped like the ones the Firebase SDK hands out (instance id ':' APA91b...)."""
    rnd = secrets.token_urlsafe(120) if seed is None else (str(seed).encode().hex() * 160)
    return f"{rnd[:22]}:APA91b{rnd[22:156]}"


# --- request validation, as the v1 API's JSON parser and FCM do --------------------------------

def _names(*snake: str) -> dict[str, str]:
    """Proto3 JSON accepts the field name and its lowerCamelCase form."""
    out = {}
    for name in snake:
        head, *rest = name.split("_")
        out[name] = name
        out[head + "".join(p.title() for p in rest)] = name
    return out


TOP_FIELDS = _names("message", "validate_only")
MESSAGE_FIELDS = _names("name", "data", "notification", "android", "webpush", "apns", "fcm_options",
                        "token", "topic", "condition")
NOTIFICATION_FIELDS = _names("title", "body", "image")
ANDROID_FIELDS = _names("collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification",
                        "fcm_options", "direct_boot_ok", "bandwidth_constrained_ok", "restricted_satellite_ok")
APNS_FIELDS = _names("headers", "payload", "fcm_options", "live_activity_token")
WEBPUSH_FIELDS = _names("headers", "data", "notification", "fcm_options")
FCM_OPTIONS_FIELDS = _names("analytics_label", "image")
TTL = re.compile(r"(\d+)(\.\d{1,9})?s")


class _Invalid(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _value_repr(v) -> str:
    return orjson.dumps(v).decode()


def _object(value, where: str, fields: dict[str, str], type_name: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Invalid(_parse_error(f"Invalid value at '{where}' ({type_name}), {_value_repr(value)}", where))
    out = {}
    for k, v in value.items():
        canonical = fields.get(k)
        if canonical is None:
            at = f" at '{where}'" if where else ""
            raise _Invalid(_parse_error(f'Invalid JSON payload received. Unknown name "{k}"{at}: Cannot find field.',
                                        where or None))
        out[canonical] = v
    return out


def _string(value, where: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(_parse_error(f"Invalid value at '{where}' (TYPE_STRING), {_value_repr(value)}", where))
    return value


def _string_map(value, where: str) -> None:
    if not isinstance(value, dict):
        raise _Invalid(_parse_error(f"Invalid value at '{where}' (map), {_value_repr(value)}", where))
    for i, v in enumerate(value.values()):
        if not isinstance(v, str):
            at = f"{where}[{i}].value"
            raise _Invalid(_parse_error(f"Invalid value at '{at}' (TYPE_STRING), {_value_repr(v)}", at))


def _data(value, where: str) -> None:
    _string_map(value, where)
    for k in value:
        if k in ("from", "gcm", "message_type") or k.startswith("google"):
            raise _Invalid(invalid_argument(f"Invalid data payload key: {k}", where))


def payload_size(message: dict) -> int:
    """What FCM's documentation says its 4096-byte limit counts: the payload's keys and values."""
    data = message.get("data") or {}
    notification = message.get("notification") or {}
    return (sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
            + sum(len(str(v).encode()) for v in notification.values()))


def validate_send_request(doc, size_rule: str = "message") -> tuple[str | None, bool]:
    """Returns (registration token, validate_only) or raises _Invalid with Google's answer.
    `size_rule`: what must fit in 4096 bytes, the serialized `message` or only its payload."""
    if not isinstance(doc, dict):
        raise _Invalid(_parse_error("Invalid JSON payload received. Expected an object."))
    top = _object(doc, "", TOP_FIELDS, "")
    validate_only = top.get("validate_only", False)
    if not isinstance(validate_only, bool):
        raise _Invalid(_parse_error(f"Invalid value at 'validate_only' (TYPE_BOOL), {_value_repr(validate_only)}",
                                    "validate_only"))
    if "message" not in top or top["message"] is None:
        raise _Invalid(invalid_argument("Recipient of the message is not set.", "message"))
    m = _object(top["message"], "message", MESSAGE_FIELDS, "type.googleapis.com/google.firebase.fcm.v1.Message")
    targets = [t for t in ("token", "topic", "condition") if t in m]
    for t in targets:
        _string(m[t], f"message.{t}")
    if len(targets) > 1:
        raise _Invalid(_parse_error(f"Invalid JSON payload received. Oneof field 'target' is already set. "
                                    f"Cannot set '{targets[1]}'", "message"))
    if not targets:
        raise _Invalid(invalid_argument("Recipient of the message is not set.", "message"))
    token = m.get("token")
    if "name" in m:
        _string(m["name"], "message.name")
    if "data" in m:
        _data(m["data"], "message.data")
    if "notification" in m:
        n = _object(m["notification"], "message.notification", NOTIFICATION_FIELDS,
                    "type.googleapis.com/google.firebase.fcm.v1.Notification")
        for k, v in n.items():
            _string(v, f"message.notification.{k}")
    if "fcm_options" in m:
        for k, v in _object(m["fcm_options"], "message.fcm_options", FCM_OPTIONS_FIELDS, "FcmOptions").items():
            _string(v, f"message.fcm_options.{k}")
    if "android" in m:
        a = _object(m["android"], "message.android", ANDROID_FIELDS,
                    "type.googleapis.com/google.firebase.fcm.v1.AndroidConfig")
        for k in ("collapse_key", "restricted_package_name"):
            if k in a:
                _string(a[k], f"message.android.{k}")
        if "priority" in a and (not isinstance(a["priority"], str) or a["priority"].upper() not in ("NORMAL", "HIGH")):
            raise _Invalid(_parse_error(
                "Invalid value at 'message.android.priority' "
                f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {_value_repr(a['priority'])}",
                "message.android.priority"))
        if "ttl" in a:
            ttl = a["ttl"]
            match = TTL.fullmatch(ttl) if isinstance(ttl, str) else None
            if match is None:
                raise _Invalid(_parse_error("Invalid value at 'message.android.ttl' "
                                            f"(type.googleapis.com/google.protobuf.Duration), {_value_repr(ttl)}",
                                            "message.android.ttl"))
            if int(match.group(1)) > MAX_TTL_S:
                raise _Invalid(invalid_argument(f"TTL must be between 0 and {MAX_TTL_S} seconds (4 weeks)",
                                                "message.android.ttl"))
        if "data" in a:
            _data(a["data"], "message.android.data")
        for k in ("notification", "fcm_options"):
            if k in a and not isinstance(a[k], dict):
                raise _Invalid(_parse_error(f"Invalid value at 'message.android.{k}', {_value_repr(a[k])}",
                                            f"message.android.{k}"))
    if "apns" in m:
        ap = _object(m["apns"], "message.apns", APNS_FIELDS, "type.googleapis.com/google.firebase.fcm.v1.ApnsConfig")
        if "headers" in ap:
            _string_map(ap["headers"], "message.apns.headers")
        if "payload" in ap and not isinstance(ap["payload"], dict):
            raise _Invalid(_parse_error(f"Invalid value at 'message.apns.payload' "
                                        f"(type.googleapis.com/google.protobuf.Struct), {_value_repr(ap['payload'])}",
                                        "message.apns.payload"))
    if "webpush" in m:
        w = _object(m["webpush"], "message.webpush", WEBPUSH_FIELDS,
                    "type.googleapis.com/google.firebase.fcm.v1.WebpushConfig")
        for k in ("headers", "data"):
            if k in w:
                _string_map(w[k], f"message.webpush.{k}")
    if token is not None and not TOKEN_SYNTAX.fullmatch(token):
        raise _Invalid(invalid_token())
    size = len(orjson.dumps(top["message"])) if size_rule == "message" else payload_size(m)
    if size > MAX_MESSAGE_BYTES:
        raise _Invalid(invalid_argument("Message is too big"))
    return token, validate_only


# --- the server ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Account:
    client_email: str
    project_id: str
    public_key: object
    private_key_id: str | None


@dataclass(frozen=True)
class _Assertion:
    account: _Account
    scopes: frozenset
    iat: int
    exp: int


@dataclass(slots=True)
class _Grant:
    account: _Account
    scopes: frozenset
    expires_at: float


class FcmLikeServer(FakeServer):
    """FCM HTTP v1 + the OAuth2 token endpoint. `POST /token`, `POST /v1/projects/{p}/messages:send`."""

    name = "fcm_like"

    def __init__(self, *, project_id: str = "vicino-test", service_account: ServiceAccount | str | Path | None = None,
                 public_key=None, client_email: str | None = None, private_key_id: str | None = None,
                 access_token_ttl_s: int = 3599, audiences: tuple[str, ...] = (), size_rule: str = "message",
                 host: str = "127.0.0.1", port: int = 0, max_records: int | None = None) -> None:
        super().__init__(host=host, port=port, max_records=max_records)
        if size_rule not in ("message", "payload"):
            raise ValueError("size_rule is 'message' (the serialized message) or 'payload' (data + notification)")
        self.project_id = project_id
        self.size_rule = size_rule
        self.access_token_ttl_s = access_token_ttl_s
        self.audiences = set(audiences)
        self.grants = 0               # access tokens issued
        self.token_delay_s = 0.0      # the token endpoint answers this much later
        self.token_requests = 0       # all calls of the token endpoint, granted or not
        self._accounts: dict[str, _Account] = {}
        self._assertions: dict[str, _Assertion | tuple[str, str]] = {}
        self._access: dict[str, _Grant] = {}
        self._uvicorn: uvicorn.Server | None = None
        if service_account is not None:
            self.add_service_account(service_account)
        if public_key is not None:
            if not client_email:
                raise ValueError("a public key needs its client_email")
            self.add_service_account(public_key=public_key, client_email=client_email, private_key_id=private_key_id)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def send_url(self) -> str:
        return f"{self.url}/v1/projects/{self.project_id}/messages:send"

    def add_service_account(self, service_account: ServiceAccount | str | Path | None = None, *, public_key=None,
                            client_email: str | None = None, project_id: str | None = None,
                            private_key_id: str | None = None) -> None:
        """Trust a service account: a `ServiceAccount`, a key file, or its public key and email."""
        if isinstance(service_account, ServiceAccount):
            acc = _Account(service_account.client_email, service_account.project_id, service_account.public_key,
                           service_account.private_key_id)
        elif service_account is not None:
            info = orjson.loads(Path(service_account).read_bytes())
            acc = _Account(info["client_email"], info["project_id"], load_public_key(info["private_key"]),
                           info.get("private_key_id"))
        else:
            acc = _Account(client_email, project_id or self.project_id, load_public_key(public_key), private_key_id)
        self._accounts = {**self._accounts, acc.client_email: acc}
        self._assertions = {}  # a cached "account not found" may no longer hold

    def revoke_access_tokens(self) -> None:
        """Every issued access token becomes unknown (401), as after a key is disabled."""
        self._access = {}

    def expire_access_tokens(self) -> None:
        """Every issued access token is past its expiry (401 ACCESS_TOKEN_EXPIRED)."""
        for g in list(self._access.values()):
            g.expires_at = 0.0

    def _reset_extra(self) -> None:
        self.grants = self.token_requests = 0
        self.token_delay_s = 0.0

    def stats(self) -> dict:
        return {**super().stats(), "grants": self.grants, "token_requests": self.token_requests,
                "access_tokens": len(self._access)}

    def _control_extra(self, method, path, data):
        if method == "POST" and path == "/_control/revoke":
            self.revoke_access_tokens()
            return 200, orjson.dumps({"ok": True})
        if method == "POST" and path == "/_control/expire":
            self.expire_access_tokens()
            return 200, orjson.dumps({"ok": True})
        if method == "POST" and path == "/_control/service_account":
            self.add_service_account(public_key=data["public_key_pem"], client_email=data["client_email"],
                                     project_id=data.get("project_id"), private_key_id=data.get("private_key_id"))
            return 200, orjson.dumps({"ok": True})
        return None

    # --- ASGI ---
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path.startswith("/v1/"):
            await self._messages_send(scope, path, method, body, send)
        elif path == "/token":
            await self._token(method, body, send)
        elif path.startswith("/_control/"):
            status, out = self.control(method, path, scope["query_string"].decode("latin-1"), body)
            await _respond(send, status, out, JSON_TYPE)
        else:
            await _respond(send, 404, NOT_FOUND_HTML, "text/html; charset=UTF-8")

    async def _token(self, method: str, body: bytes, send) -> None:
        self.token_requests += 1
        if self.token_delay_s > 0:  # a slow token endpoint (set by tests)
            await asyncio.sleep(self.token_delay_s)
        if method != "POST":
            return await _oauth_error(send, "invalid_request", f"Invalid HTTP method: {method}", 405)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        grant_type = (form.get("grant_type") or [""])[0]
        if not grant_type:
            return await _oauth_error(send, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER:
            return await _oauth_error(send, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = (form.get("assertion") or [""])[0]
        if not assertion:
            return await _oauth_error(send, "invalid_request", "Missing required parameter: assertion")
        verified = self._assertions.get(assertion)
        if verified is None:  # verify each distinct assertion once; the clock is checked every time
            verified = self._verify_assertion(assertion)
            if len(self._assertions) > 10_000:
                self._assertions = {}
            self._assertions[assertion] = verified
        if isinstance(verified, tuple):
            return await _oauth_error(send, *verified)
        now = time.time()
        if not (verified.exp - verified.iat <= 3600 and verified.iat <= now + CLOCK_SKEW_S
                and verified.exp >= now - CLOCK_SKEW_S and verified.exp > verified.iat):
            return await _oauth_error(send, "invalid_grant",
                                      "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                                      "timeframe. Check your iat and exp values in the JWT claim.")
        access_token = "ya29.c." + secrets.token_urlsafe(96)
        self._access[access_token] = _Grant(verified.account, verified.scopes, now + self.access_token_ttl_s)
        self.grants += 1
        await _respond(send, 200, orjson.dumps({"access_token": access_token, "expires_in": self.access_token_ttl_s,
                                                "token_type": "Bearer"}), "application/json; charset=utf-8",
                       {"cache-control": "no-cache, no-store, max-age=0, must-revalidate", "pragma": "no-cache"})

    def _verify_assertion(self, assertion: str) -> _Assertion | tuple[str, str]:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "invalid_grant", "Bad Request"
        account = self._accounts.get(claims.get("iss"))
        if account is None:
            return "invalid_grant", "Invalid grant: account not found"
        kid = header.get("kid")
        if header.get("alg") != "RS256" or (kid and account.private_key_id and kid != account.private_key_id):
            return "invalid_grant", "Invalid JWT Signature."
        try:
            jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                       options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False})
        except jwt.InvalidSignatureError:
            return "invalid_grant", "Invalid JWT Signature."
        except jwt.PyJWTError:
            return "invalid_grant", "Bad Request"
        if claims.get("aud") not in ({self.token_url} | self.audiences):
            return "invalid_grant", "Invalid JWT: Failed audience check."
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
            return ("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                                     "timeframe. Check your iat and exp values in the JWT claim.")
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            return "invalid_scope", "Invalid OAuth scope or ID token audience provided."
        return _Assertion(account, frozenset(scope.split()), int(iat), int(exp))

    def _authorize(self, authorization: str | None, project: str) -> Reply | None:
        if not authorization:
            return unauthenticated("CREDENTIALS_MISSING")
        scheme, _, token = authorization.partition(" ")
        grant = self._access.get(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            return unauthenticated()
        if time.time() >= grant.expires_at:
            return unauthenticated("ACCESS_TOKEN_EXPIRED")
        if not grant.scopes & SEND_SCOPES:
            return permission_denied("Request had insufficient authentication scopes.",
                                     "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
        if project != grant.account.project_id:
            return permission_denied("Permission 'cloudmessaging.messages.create' denied on resource "
                                     f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                                     "(or it may not exist).", "IAM_PERMISSION_DENIED")
        return None

    async def _messages_send(self, scope, path: str, method: str, body: bytes, send) -> None:
        received_at = time.time()
        match = SEND_PATH.fullmatch(path)
        if match is None or method != "POST":
            return await _respond(send, 404, NOT_FOUND_HTML, "text/html; charset=UTF-8")
        project = match.group(1)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            doc, bad_json = None, e
        else:
            bad_json = None
        message = doc.get("message") if isinstance(doc, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        token = token if isinstance(token, str) else None
        reply = self._authorize(headers.get("authorization"), project)
        validate_only = False
        if reply is None:
            if bad_json is not None:
                reply = _parse_error(f"Invalid JSON payload received. {str(bad_json).split(':')[0]}.")
            else:
                try:
                    token, validate_only = validate_send_request(doc, self.size_rule)
                except _Invalid as e:
                    reply = e.reply
        if reply is None:
            reply = self._next_reply(token) or OK
            if reply.is_success:
                msg_id = "fake_message_id" if validate_only else f"0:{time.time_ns() // 1000}%{secrets.token_hex(8)}"
                reply = with_delay(Reply(200, {"name": f"projects/{project}/messages/{msg_id}"}), reply.delay_s)
        self._record(path=path, headers=headers, json=doc, token=token, received_at=received_at,
                     status=None if reply.kind == "drop" else reply.status, method=method, kind=reply.kind)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)
        if reply.kind in ("drop", "reset"):  # HTTP/1.1 has no stream to reset: both hang up
            return _drop(send, abort=reply.kind == "reset")
        await _respond(send, reply.status, reply.body_bytes(), _content_type(reply), reply.headers)

    # --- running ---
    async def serve(self, sock, ready) -> None:
        config = uvicorn.Config(self, http="httptools", ws="none", lifespan="off", log_level="warning",
                                access_log=False, log_config=None, proxy_headers=False, server_header=False,
                                timeout_keep_alive=75, timeout_graceful_shutdown=1, backlog=2048)
        server = uvicorn.Server(config)
        self._uvicorn = server

        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.002)
            ready()

        announcer = asyncio.ensure_future(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            announcer.cancel()

    def _request_stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            self._uvicorn.force_exit = True  # don't wait for clients' idle keep-alive connections


def _content_type(reply: Reply) -> str | None:
    if "content-type" in reply.headers:
        return None
    return JSON_TYPE if isinstance(reply.body, (dict, list)) else "text/plain; charset=UTF-8"


async def _respond(send, status: int, body: bytes, content_type: str | None,
                   extra: dict[str, str] | None = None) -> None:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if extra:
        headers += [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in extra.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _oauth_error(send, error: str, description: str, status: int = 400) -> None:
    await _respond(send, status, orjson.dumps({"error": error, "error_description": description}),
                   "application/json; charset=utf-8")


def _drop(send, abort: bool = False) -> None:
    # ASGI cannot express "hang up without answering": reach uvicorn's transport for the request
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("drop() needs uvicorn's HTTP/1.1 protocol")
    cycle.disconnected = True  # so uvicorn neither answers 500 nor logs "returned without response"
    if abort:
        transport.abort()
    else:
        transport.close()


def start_in_thread(**config) -> FcmLikeServer:
    """Start an `FcmLikeServer(**config)` on a free port in a background thread."""
    return FcmLikeServer(**config).start_in_thread()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testbed.push_servers.fcm_like", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--project-id", default="vicino-test")
    p.add_argument("--service-account", help="a service-account key file to trust (instead of the next three)")
    p.add_argument("--service-account-public-key", help="PEM file: the service account's public (or private) key")
    p.add_argument("--client-email")
    p.add_argument("--private-key-id")
    p.add_argument("--access-token-ttl", type=int, default=3599)
    p.add_argument("--audience", action="append", default=[], help="also accept this JWT aud (repeatable)")
    p.add_argument("--size-rule", choices=("message", "payload"), default="message",
                   help="what the 4096-byte limit counts: the serialized message, or data + notification")
    p.add_argument("--max-records", type=int)
    a = p.parse_args(argv)
    if a.service_account_public_key and not a.client_email:
        p.error("--service-account-public-key needs --client-email")
    server = FcmLikeServer(project_id=a.project_id, service_account=a.service_account,
                           public_key=Path(a.service_account_public_key) if a.service_account_public_key else None,
                           client_email=a.client_email, private_key_id=a.private_key_id,
                           access_token_ttl_s=a.access_token_ttl, audiences=tuple(a.audience),
                           size_rule=a.size_rule, host=a.host, port=a.port, max_records=a.max_records)
    server.run_forever(print_ready)


if __name__ == "__main__":
    main()
