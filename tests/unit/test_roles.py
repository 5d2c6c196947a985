"""The pure rules of who may do what (`kernel/roles.py`, `kernel/auth.require_roles`)."""
from __future__ import annotations

import pytest

from vicino.services.kernel.auth import ADMIN, DeviceClaims, Principal, require_roles
from vicino.services.kernel.problems import Forbidden
from vicino.services.kernel.roles import (ROLES, UnknownRole, allows, check_roles, new_key, secret_hash, service_key,
                                          split_key)


def key(*roles: str) -> Principal:
    return Principal(admin="admin" in roles, roles=frozenset(roles), key_id="k1")


DEVICE = Principal(admin=False, device=DeviceClaims("d1", "c1", "t1", 2e9))


def test_a_key_opens_a_route_with_any_of_its_roles_and_admin_opens_all():
    assert allows(frozenset({"analyst"}), frozenset({"operator", "analyst"}))
    assert not allows(frozenset({"support"}), frozenset({"operator", "analyst"}))
    assert allows(frozenset({"admin"}), frozenset({"support"}))
    for role in ROLES:
        assert require_roles(key(role), frozenset({role})) == key(role)
        assert require_roles(ADMIN, frozenset({role})) is ADMIN


def test_refusals_name_the_role_needed_and_what_the_caller_holds():
    with pytest.raises(Forbidden, match="needs the role admin or operator; this key holds analyst, support"):
        require_roles(key("analyst", "support"), frozenset({"operator"}))
    with pytest.raises(Forbidden, match="a device token may not call it"):
        require_roles(DEVICE, frozenset({"operator"}))
    assert require_roles(DEVICE, frozenset({"operator"}), devices=True) is DEVICE


def test_roles_are_checked():
    assert check_roles(["analyst", "analyst", "support"]) == frozenset({"analyst", "support"})
    with pytest.raises(UnknownRole, match="root"):
        check_roles(["analyst", "root"])
    with pytest.raises(UnknownRole, match="at least one"):
        check_roles([])


def test_keys_split_back_and_only_their_keyed_hash_identifies_them():
    key_id, secret, shown = new_key()
    assert split_key(shown) == (key_id, secret)
    for bad in ("", "vk_", "vk_AB_" + "x" * 40, "vk_abc_short", f"vk_{key_id}_{secret}\n", "v1.abc.def"):
        assert split_key(bad) is None, bad
    h = secret_hash("s" * 32, key_id, secret)
    assert h == secret_hash("s" * 32, key_id, secret) and secret not in h
    assert h != secret_hash("t" * 32, key_id, secret)  # keyed: a copy of Redis alone tests no guess
    assert new_key()[1] != secret


def test_a_service_key_is_the_same_on_every_replica_and_differs_by_service_and_secret():
    assert service_key("s" * 32, "push") == service_key("s" * 32, "push")
    assert service_key("s" * 32, "push")[1] != service_key("s" * 32, "recommender")[1]
    assert service_key("s" * 32, "push")[1] != service_key("t" * 32, "push")[1]
    key_id, shown = service_key("s" * 32, "push")
    assert key_id == "svc-push" and split_key(shown)[0] == key_id
