"""Device registration (token issue, refresh and rotation), push tokens and consent, with their
effect on visits."""
from __future__ import annotations

from dataclasses import dataclass

from vicino.services.kernel.auth import DeviceClaims, TokenSigner, revoked_token
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.customer_state import push_token_digest
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.contracts.push_tokens import push_token_problem
from vicino.services.kernel.ids import new_id
from vicino.services.kernel.problems import TOKEN_ALREADY_REFRESHED, Conflict, InvalidInput, NotFound, Unauthorized
from vicino.services.kernel.times import rfc3339

from ..adapters.device_repository import DeviceRepository, Registration
from ..domain.transitions import DeviceState, close_all


@dataclass(frozen=True, slots=True)
class IssuedToken:
    registration: Registration
    token: str
    expires_at: float
    rotated: bool


@dataclass(frozen=True, slots=True)
class RefreshedToken:
    token: str
    expires_at: float
    previous_valid_until: float  # the token it replaced works until then (its grace, or its own expiry)


class DeviceDirectory:
    def __init__(self, repo: DeviceRepository, signer: TokenSigner, clock: Clock, token_ttl_s: float,
                 token_grace_s: float = 0.0) -> None:
        self.repo = repo
        self.signer = signer
        self.clock = clock
        self.token_ttl_s = token_ttl_s
        self.token_grace_s = token_grace_s

    async def register(self, device_id: str, customer_id: str, platform: str, push_token: str,
                       timezone: str, locale: str | None = None) -> IssuedToken:
        """`locale`: canonical BCP 47 (kernel.locales.canonical_locale), or None."""
        now = self.clock.now()
        location, version = await self.repo.consent_version(customer_id)
        reg = Registration(device_id, customer_id, platform, push_token, timezone, new_id("tok"), now, location,
                           locale=locale or "")
        previous = await self.repo.register(reg, version)
        # A consent change that ran between our read and our joining the customer's device set
        # could not update this device's copy: read once more, now that we are in the set (any
        # later change will find us there and update the copy itself; versions keep the newer).
        latest = await self.repo.consent_version(customer_id)
        if latest != (location, version):
            await self.repo.set_location_copy(device_id, *latest)
        if previous is not None and previous.customer_id != customer_id:
            # The phone changed hands: the old owner's visits end (exit events under the old
            # owner, so consumers close them) and must not continue under the new one.
            # (registering leaves the visit state alone, and the old token can no longer save it)
            snap = await self.repo.snapshot(device_id)
            await self._close_visits(device_id, previous.customer_id, snap.state, now, "device_reassigned")
        expires = now + self.token_ttl_s
        token = self.signer.issue(DeviceClaims(device_id, customer_id, reg.token_id, expires))
        return IssuedToken(reg, token, expires, previous is not None)

    async def refresh_token(self, claims: DeviceClaims) -> RefreshedToken:
        """A fresh token for a device that presents its current one (signed and unexpired: checked
        where it was authenticated). The presented token keeps working for the grace period, for
        the requests in flight; it may not refresh again, nor may any other but the newest: a token
        that was lost or copied can never start a second chain (a device that lost the newer
        token registers again)."""
        now = self.clock.now()
        token_id = new_id("tok")
        grace_until = min(now + self.token_grace_s, claims.expires_at)
        why = await self.repo.refresh_token(claims.device_id, claims.token_id, claims.customer_id, token_id,
                                            grace_until, now)
        if why is not None and why[0] == "previous":
            raise Unauthorized(f"this device token was already refreshed: only the newest token may be refreshed "
                               f"(this one keeps working for other calls until {rfc3339(why[1])}); if the app lost "
                               f"the newer token, register the device again", code=TOKEN_ALREADY_REFRESHED)
        if why is not None:
            raise revoked_token()
        expires = now + self.token_ttl_s
        token = self.signer.issue(DeviceClaims(claims.device_id, claims.customer_id, token_id, expires))
        return RefreshedToken(token, expires, grace_until)

    async def update_push_token(self, reg: Registration, push_token: str) -> float:
        """The app's fresh push token (FCM or APNs rotated it), checked for the device's platform;
        the device token is left as it is. Returns when it was recorded."""
        problem = push_token_problem(reg.platform, push_token)
        if problem is not None:
            message = f"not a {reg.platform} push token: {problem}"
            raise InvalidInput(f"push_token: {message}", errors=[{"field": "push_token", "message": message}])
        now = self.clock.now()
        if not await self.repo.set_push_token(reg.device_id, reg.token_id, push_token, now):
            raise Conflict("the device was registered again, refreshed its token or was removed while its push "
                           "token was being updated; nothing was changed, retry")
        return now

    async def update_locale(self, reg: Registration, locale: str | None) -> float:
        """The device's language changed (the user switched the phone's language): `locale` is
        canonical BCP 47 (checked at the edge), None to forget it. The device token is left as it
        is. Returns when it was recorded."""
        now = self.clock.now()
        if not await self.repo.set_locale(reg.device_id, reg.token_id, locale or "", now):
            raise Conflict("the device was registered again, refreshed its token or was removed while its locale "
                           "was being updated; nothing was changed, retry")
        return now

    async def unregister(self, device_id: str) -> None:
        """A lost or retired phone: its open visits end, its state and registration go, and every
        token issued to it stops working."""
        snap = await self.repo.snapshot(device_id)
        if snap.registration is None:
            raise NotFound(f"device {device_id!r} is not registered")
        await self._close_visits(device_id, snap.registration.customer_id, snap.state, self.clock.now(),
                                 "device_removed")
        await self.repo.unregister(snap.registration)

    async def revoke_push_token(self, device_id: str, push_token_sha256: str, reason: str) -> bool:
        """A push provider declared the device's token dead: the device keeps its registration
        (and its visits) but gets no push until the app registers a fresh token. Only the token
        that was refused goes (named by its SHA-256: the gateway keeps no tokens); a newer one stays."""
        reg = await self.repo.get(device_id)
        if reg is None:
            raise NotFound(f"device {device_id!r} is not registered")
        if not reg.push_token or push_token_digest(reg.push_token) != push_token_sha256:
            return False
        return await self.repo.clear_push_token(device_id, reg.push_token, self.clock.now(), reason)

    async def erase_customer(self, customer_id: str) -> dict:
        """Erasure: the customer's devices, visit state, consent and its audit trail, and their
        events still in the streams, go without a trace (no exit events: those would be new
        records of the customer)."""
        removed = 0
        devices = set(await self.repo.customer_devices(customer_id))
        for device_id in devices:
            reg = await self.repo.get(device_id)
            await self.repo.delete_state(device_id)
            if reg is not None and reg.customer_id == customer_id:
                await self.repo.unregister(reg)
                removed += 1
        dropped = await self.repo.drop_events_of(customer_id, devices)
        await self.repo.forget_customer(customer_id)
        return {"customer_id": customer_id, "devices_removed": removed, "events_dropped": dropped}

    async def set_consent(self, customer_id: str, values: dict[str, bool], actor: str) -> dict:
        now = self.clock.now()
        devices = await self.repo.set_consent(customer_id, values, actor, now)
        if not values["location"]:
            # Without consent we keep no location-derived state: close open visits and forget them.
            for device_id in devices:
                snap = await self.repo.snapshot(device_id)
                await self._close_visits(device_id, customer_id, snap.state, now, "consent_withdrawn")
        return await self.repo.consent(customer_id)

    async def set_consents(self, changes: list[tuple[str, dict[str, bool], str | None]], actor: str) -> list[dict]:
        """Many customers' consent at once (a CRM import), each change recorded and audited as
        `set_consent` records it, with its effect on visits; `changes`: (customer_id, the
        purposes it sets, source). Returns each customer's consent as recorded."""
        now = self.clock.now()
        out = []
        for (customer_id, _, _), (current, devices) in zip(changes, await self.repo.set_consents(changes, actor, now)):
            if not current["location"]:
                for device_id in devices:
                    snap = await self.repo.snapshot(device_id)
                    await self._close_visits(device_id, customer_id, snap.state, now, "consent_withdrawn")
            out.append(current)
        return out

    async def _close_visits(self, device_id: str, customer_id: str, raw_state: dict | None, now: float,
                            reason: str) -> None:
        if raw_state:
            exits = close_all(DeviceState.from_json(raw_state), now, reason)
            await self.repo.append_events(device_id, [
                GeofenceEventV1(event_id=new_id("gev"), type="exit", device_id=device_id, customer_id=customer_id,
                                store_id=t.store_id, visit_id=t.visit_id, ts=t.ts, emitted_at=now,
                                dwell_s=t.dwell_s, exit_reason=reason)
                for t in exits])
        await self.repo.delete_state(device_id)
