"""Identity resolution rules: how identifiers are written, who survives a merge, whose consent wins.

Merges form a union-find whose root is the smallest customer id of the group, so the result of
any sequence of links is the same whatever their order.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from vicino.services.kernel.contracts.customer_state import CONSENT_FIELDS

IDENTIFIER_KINDS = ("device", "loyalty_card", "email_sha256", "phone_sha256", "cookie")
# A raw e-mail address or phone number is accepted on the way in and kept only as its SHA-256.
_INPUT_KINDS = IDENTIFIER_KINDS + ("email", "phone")
_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PHONE_PUNCTUATION = re.compile(r"[\s().-]")


class IdentifierError(ValueError):
    pass


@dataclass(frozen=True)
class Moved:
    """A write refused because the customer was merged away: `customer_id` is the one it went to
    (store under it instead)."""

    customer_id: str


def normalise_identifier(kind: str, value: str) -> str:
    """"kind:value" in its one stored form, or IdentifierError saying what is wrong."""
    if kind not in _INPUT_KINDS:
        raise IdentifierError(f"identifier kind {kind!r} is not one of {', '.join(_INPUT_KINDS)}")
    if not isinstance(value, str) or not value.strip():
        raise IdentifierError("identifier value is empty")
    value = value.strip()
    if kind == "email":
        if "@" not in value or len(value) > 320:
            raise IdentifierError("an email identifier must look like an e-mail address")
        return "email_sha256:" + hashlib.sha256(value.lower().encode()).hexdigest()
    if kind == "phone":
        number = _PHONE_PUNCTUATION.sub("", value)
        if number.startswith("00"):
            number = "+" + number[2:]
        if not _E164.match(number):
            raise IdentifierError("a phone identifier is an international number: + and 7-15 digits (E.164; "
                                  "spaces, dots, dashes and brackets are ignored)")
        return "phone_sha256:" + hashlib.sha256(number.encode()).hexdigest()
    if kind in ("email_sha256", "phone_sha256"):
        value = value.lower()
        if not _SHA256.match(value):
            raise IdentifierError(f"an {kind} identifier is 64 hexadecimal characters (SHA-256 of the "
                                  + ("lower-cased address)" if kind == "email_sha256" else "number in E.164 form)"))
        return f"{kind}:{value}"
    if not _VALUE.match(value):
        raise IdentifierError("identifier values are 1-128 characters: letters, digits and . _ : @ + = -")
    return f"{kind}:{value}"


def split_identifier(identifier: str) -> tuple[str, str]:
    kind, _, value = identifier.partition(":")
    return kind, value


def survivor(a: str, b: str) -> str:
    """The customer id that a merge of `a` and `b` keeps: the smaller one, so merges commute."""
    return min(a, b)


def stricter_consent(a: dict, b: dict) -> dict:
    """A purpose is consented only if both records consent to it."""
    return {f: bool(a.get(f)) and bool(b.get(f)) for f in CONSENT_FIELDS}
