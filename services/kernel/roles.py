"""Who may do what: the roles an API key holds and what a route accepts (pure, no I/O).

An API key is `vk_<key_id>_<secret>`. Only a keyed hash of the secret is stored (the key store
lives in the runtime); the secret is shown once, when the key is made. A key holds one or more
roles; `admin` may do everything. The bootstrap `VICINO_ADMIN_TOKEN` is an admin too.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

ROLES: dict[str, str] = {
    "admin": "everything, API keys included",
    "operator": "stores, offers, stock, rules, campaigns, jobs",
    "analyst": "read: KPIs, jobs, the model, offers, stores",
    "app_backend": "what a retailer's app server does: register devices, set consent, link identifiers, "
                   "post interactions",
    "support": "read a customer's profile, history, deliveries and decisions; erase a customer",
}
KEY_PREFIX = "vk_"
KEY_ID_PATTERN = r"^[a-z0-9-]{3,40}$"
_KEY_RE = re.compile(r"vk_([a-z0-9-]{3,40})_([A-Za-z0-9_-]{20,200})")  # fullmatch: `$` would pass a final newline


class UnknownRole(ValueError):
    pass


def check_roles(roles) -> frozenset[str]:
    """The roles as a set; `UnknownRole` names any that is not one of `ROLES`."""
    wanted = frozenset(roles)
    unknown = sorted(wanted - set(ROLES))
    if unknown:
        raise UnknownRole(f"unknown role(s) {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
    if not wanted:
        raise UnknownRole("a key needs at least one role")
    return wanted


def allows(held: frozenset[str], accepted: frozenset[str]) -> bool:
    """A key's roles open a route that accepts `accepted` (admin opens every route)."""
    return "admin" in held or bool(held & accepted)


def new_key(key_id: str | None = None) -> tuple[str, str, str]:
    """(key_id, secret, the key as shown to its holder)."""
    key_id = key_id or secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def split_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of something shaped like an API key, else None."""
    m = _KEY_RE.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def secret_hash(signing_secret: str, key_id: str, secret: str) -> str:
    """What is stored of a key: HMAC-SHA256 keyed with the deployment's secret, so a copy of
    Redis alone does not let anyone test guesses."""
    mac = hmac.new(("vicino-api-key:" + signing_secret).encode(), f"{key_id}:{secret}".encode(), hashlib.sha256)
    return mac.hexdigest()


def service_key(signing_secret: str, service: str) -> tuple[str, str]:
    """A service's own key, derived from the secret every replica shares, so that each replica of
    a service holds the same key without distributing one: (key_id, the key)."""
    key_id = f"svc-{service}"
    secret = hmac.new(("vicino-service-key:" + signing_secret).encode(), service.encode(), hashlib.sha256).hexdigest()
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    name: str
    roles: frozenset[str]
    created_at: float
    hash: str
    revoked_at: float | None = None

    def public(self) -> dict:
        return {"key_id": self.key_id, "name": self.name, "roles": sorted(self.roles), "created_at": self.created_at,
                "revoked_at": self.revoked_at}
