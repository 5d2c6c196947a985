"""What a push token may look like, per platform: checked where a device registers (geo) and again
where a token enters a provider's URL (the APNs path), so that nothing but a token ever does.

- ios: an APNs device token, hex. 32 bytes (64 hex digits) today; Apple says not to rely on the
  length, so up to 100 bytes are taken.
- android: an FCM registration token: opaque, of letters, digits, `_`, `-` and `:` (Google does not
  document a length; its SDKs hand out ~150-char tokens; 4096 bounds it).
- web: the retailer's own identifier, passed on in the webhook's JSON body: printable ASCII, no
  spaces or control characters.
"""
from __future__ import annotations

import re

MAX_PUSH_TOKEN_CHARS = 4096
APNS_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
_PATTERNS = {
    "ios": (APNS_TOKEN, "an APNs device token is 64 to 200 hex digits (an even number)"),
    "android": (re.compile(r"[A-Za-z0-9_:\-]{1,%d}" % MAX_PUSH_TOKEN_CHARS),
                "an FCM registration token is made of letters, digits, '_', '-' and ':'"),
    "web": (re.compile(r"[\x21-\x7e]{1,%d}" % MAX_PUSH_TOKEN_CHARS),
            "a web push token is printable ASCII without spaces"),
}


def push_token_problem(platform: str, token: str) -> str | None:
    """Why `token` cannot be a push token of `platform`, or None when it can."""
    rule = _PATTERNS.get(platform)
    if rule is None:
        return f"unknown platform {platform!r}"
    pattern, shape = rule
    return None if pattern.fullmatch(token) else shape


def is_apns_device_token(token: str) -> bool:
    return APNS_TOKEN.fullmatch(token) is not None
