"""A consent change and every device's copy of it, on real Redis: consent (`{cust:<id>}`) and the
copies (one `{geo:NNN}` slot per device) cannot share one script on a Cluster, so the change is
versioned steps (geo's `DeviceRepository.set_consent`). These tests hold the two properties that
make the steps as good as one script: a withdrawal holds on the devices before it is recorded
(a crash between the steps is never looser than either consent), and a late step of an older
change never overwrites a newer one (concurrent changes end consistent)."""
from __future__ import annotations

import asyncio
import time

from vicino.services.geo.adapters.device_repository import DeviceRepository
from vicino.services.geo.adapters.redis_keys import DeviceKeys
from vicino.services.kernel.contracts.customer_state import consent_key, consent_log_key
from vicino.services.runtime.redis_client import open_async
from tests.conftest import circle_store, fix, register

GRANT = {"location": True, "marketing": True, "personalisation": True}
WITHDRAW = {"location": False, "marketing": False, "personalisation": False}
PHONES = [f"cs-phone-{i}" for i in range(6)]  # several devices, so several device slots


def _run(redis_url: str, steps):
    async def go():
        redis = open_async(redis_url)
        try:
            return await steps(DeviceRepository(redis, 16, 10_000))
        finally:
            await redis.aclose()
    return asyncio.run(go())


def _copies(redis_sync, phones) -> set[tuple[bytes, bytes]]:
    return {tuple(redis_sync.hmget(DeviceKeys(p, 16).registration, "location_consent", "consent_v")) for p in phones}


def test_every_device_copy_matches_the_consent_and_its_version(client, admin, redis_sync):
    for p in PHONES:
        register(client, p, "cs-cust")
    first = int(redis_sync.hget(consent_key("cs-cust"), "v"))
    for n, values in enumerate((WITHDRAW, GRANT, {**GRANT, "marketing": False}, WITHDRAW), 1):
        client.put("/v1/customers/cs-cust/consent", headers=admin, json=values).raise_for_status()
        location, v = redis_sync.hmget(consent_key("cs-cust"), "location", "v")
        assert int(v) == first + n
        assert _copies(redis_sync, PHONES) == {(location, v)}
        assert location == (b"1" if values["location"] else b"0")


def test_a_late_step_of_an_older_change_does_not_overwrite_a_newer_one(client, admin, redis_sync, redis_url):
    """Two changes racing: the grant (older) reaches its devices only after the withdrawal
    (newer) was applied everywhere. The newer wins on the consent and on every copy."""
    register(client, "cs-late", "cs-cust-late")
    older, _ = _run(redis_url, lambda repo: repo.next_consent_version("cs-cust-late"))
    client.put("/v1/customers/cs-cust-late/consent", headers=admin, json=WITHDRAW).raise_for_status()

    async def late_grant(repo):
        applied, members = await repo.apply_consent("cs-cust-late", older, GRANT, "admin", time.time())
        copied = [await repo.set_location_copy(d, True, older) for d in members]
        return applied, copied

    applied, copied = _run(redis_url, late_grant)
    assert (applied, copied) == (False, [False])
    assert redis_sync.hget(consent_key("cs-cust-late"), "location") == b"0"
    assert _copies(redis_sync, ["cs-late"]) == {(b"0", redis_sync.hget(consent_key("cs-cust-late"), "v"))}


def test_a_withdrawal_that_fails_before_it_is_recorded_already_holds_on_the_devices(client, admin, redis_sync):
    """The step that records the consent fails (its log key holds a value of the wrong type, so
    Redis refuses the script): the request fails and the consent still reads as granted, yet the
    device already processes no fix. The retried request finishes the change."""
    r = client.put("/v1/stores/cs-shop", headers=admin, json=circle_store("cs-shop", 45.60, 9.40, 60))
    assert r.status_code in (200, 201), r.text
    phone = register(client, "cs-cut", "cs-cust-cut")
    redis_sync.delete(consent_log_key("cs-cust-cut"))
    redis_sync.set(consent_log_key("cs-cust-cut"), "not a list")
    r = client.put("/v1/customers/cs-cust-cut/consent", headers=admin, json=WITHDRAW)
    assert r.status_code >= 500, r.text
    assert redis_sync.hget(consent_key("cs-cust-cut"), "location") == b"1"  # not recorded
    t0 = time.time() - 60
    r = client.post("/v1/locations", headers=phone, json={"device_id": "cs-cut", "fixes": [
        fix(45.60, 9.40, t0), fix(45.60, 9.40, t0 + 1)]})
    assert r.status_code == 200, r.text
    assert r.json()["location_consent"] is False and r.json()["events"] == []
    assert not redis_sync.exists(DeviceKeys("cs-cut", 16).state)
    redis_sync.delete(consent_log_key("cs-cust-cut"))
    client.put("/v1/customers/cs-cust-cut/consent", headers=admin, json=WITHDRAW).raise_for_status()
    assert client.get("/v1/customers/cs-cust-cut/consent", headers=admin).json()["location"] is False
