"""State the geo service owns and publishes for other services to read (never write):
a customer's consent and devices, and a device's registration.

Writers: the geo service only (its HTTP API is how others change consent or remove devices).
Readers: the recommender (consent for personalisation and marketing; a device token is checked
against the registration's token ids with `accepts_device_token`; the profile lists devices; the
locale picks a campaign message's language) and
the push gateway (the push token, and the same token check).
"""
from __future__ import annotations

import hashlib

from .geofence_events import device_shard, shard_tag

CONSENT_FIELDS = ("location", "marketing", "personalisation")


def customer_state_tag(customer_id: str) -> str:
    """Hash tag of one customer's published state (consent, devices): `{cust:<id>}`."""
    return f"{{cust:{customer_id}}}"


def consent_key(customer_id: str) -> str:
    """hash: location, marketing, personalisation ("1"/"0"), updated_at, v (the version of the
    change applied), seq (the last version handed out)"""
    return f"vicino:{customer_state_tag(customer_id)}:consent"


def consent_log_key(customer_id: str) -> str:
    """list: every consent change, who and when (JSON), newest first"""
    return f"vicino:{customer_state_tag(customer_id)}:consent:log"


def consent_audit_key(customer_id: str) -> str:
    """stream: the consent changes recorded before the list above replaced it (a one-entry stream
    costs Redis ~4.7 KB, a list entry ~100 B); still read and erased, never written"""
    return f"vicino:{customer_state_tag(customer_id)}:consent:audit"


def customer_devices_key(customer_id: str) -> str:
    """set of device ids"""
    return f"vicino:{customer_state_tag(customer_id)}:devices"


def device_registration_key(device_id: str, shards: int) -> str:
    """hash: customer_id, platform, push_token, timezone, locale (the device's language, BCP 47 in
    kernel.locales' canonical form, `it-IT`; empty or absent when the app sent none), token_id,
    registered_at, location_consent, consent_v (the version of the consent change the copy comes
    from); after a token refresh also prev_token_id and prev_token_until (the token it replaced,
    and the end of its grace, epoch seconds) and token_refreshed_at; after a push token update
    push_token_updated_at; after a locale update locale_updated_at"""
    return f"vicino:{shard_tag(device_shard(device_id, shards))}:device:{device_id}:registration"


def token_accepted(current: str, previous: str, previous_until: float, presented: str, now: float) -> bool:
    """Whether a (validly signed, unexpired) device token with the token id `presented` still opens
    its device's routes: it is the registration's current one, or the one a refresh replaced,
    until the end of its grace period. (Refreshing takes the current token alone: the geo service
    checks that where it refreshes.)"""
    if not presented:
        return False
    return presented == current or (presented == previous and now < previous_until)


def accepts_device_token(registration: dict, token_id: str, now: float) -> bool:
    """`token_accepted` on a registration hash read as text."""
    try:
        until = float(registration.get("prev_token_until") or 0)
    except ValueError:
        until = 0.0
    return token_accepted(registration.get("token_id") or "", registration.get("prev_token_id") or "", until,
                          token_id, now)


def decode_consent(raw: dict) -> dict:
    g = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in raw.items()}
    out: dict = {f: g.get(f) == "1" for f in CONSENT_FIELDS}
    out["updated_at"] = float(g["updated_at"]) if "updated_at" in g else None
    return out


def push_token_digest(push_token: str) -> str:
    """How a push token is named outside the registration (the gateway's records, its request to
    remove a dead token): SHA-256, hex."""
    return hashlib.sha256(push_token.encode()).hexdigest()
