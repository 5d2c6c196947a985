"""Which provider serves which platform: FCM for Android and APNs for iOS when configured; any
other platform, or one whose provider is not configured, falls back to the webhook if set, else
to the log."""
from __future__ import annotations

NATIVE = {"android": "fcm", "ios": "apns"}
PLATFORMS = ("android", "ios", "web")


def route(platform: str, configured: frozenset[str]) -> str:
    native = NATIVE.get(platform)
    if native in configured:
        return native
    return "webhook" if "webhook" in configured else "log"


def routing_table(configured: frozenset[str]) -> dict[str, str]:
    return {p: route(p, configured) for p in PLATFORMS}
