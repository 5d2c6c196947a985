"""Reads what the geo service publishes (vicino.services.kernel.contracts.customer_state): consent,
a customer's devices and a device's registration. Read-only: geo alone writes these keys."""
from __future__ import annotations

from vicino.services.kernel.contracts import customer_state as published


def _text(raw: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


class PublishedCustomerState:
    def __init__(self, redis, event_shards: int) -> None:
        self._r = redis
        self._shards = event_shards

    async def registration(self, device_id: str) -> dict[str, str] | None:
        raw = _text(await self._r.hgetall(published.device_registration_key(device_id, self._shards)))
        return raw if "customer_id" in raw else None

    async def is_current(self, device_id: str, customer_id: str, token_id: str, now: float) -> bool:
        reg = await self.registration(device_id)
        return (reg is not None and reg.get("customer_id") == customer_id
                and published.accepts_device_token(reg, token_id, now))

    async def customer_of_device(self, device_id: str) -> str | None:
        reg = await self.registration(device_id)
        return reg["customer_id"] if reg else None

    async def consent(self, customer_id: str) -> dict:
        return published.decode_consent(await self._r.hgetall(published.consent_key(customer_id)))

    async def consents(self, purposes: tuple[str, ...], *customer_ids: str) -> bool:
        """True when every one of `customer_ids` (the event's id and its survivor after a merge:
        geo keeps consent per id) consents to every purpose, as geo holds it now."""
        for customer_id in dict.fromkeys(customer_ids):
            consent = await self.consent(customer_id)
            if not all(consent[p] for p in purposes):
                return False
        return True

    async def has_consent_record(self, customer_id: str) -> bool:
        return bool(await self._r.exists(published.consent_key(customer_id)))

    async def devices(self, customer_id: str) -> list[dict]:
        """The customer's registered devices, without their push tokens."""
        ids = sorted(m.decode() if isinstance(m, bytes) else m
                     for m in await self._r.smembers(published.customer_devices_key(customer_id)))
        out = []
        for device_id in ids:
            reg = await self.registration(device_id)
            if reg is not None and reg["customer_id"] == customer_id:
                out.append({"device_id": device_id, "platform": reg.get("platform"),
                            "timezone": reg.get("timezone") or None,
                            "registered_at": float(reg["registered_at"]) if reg.get("registered_at") else None,
                            "location_consent": reg.get("location_consent") == "1"})
        return out
