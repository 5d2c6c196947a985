"""A campaign's push message: templates with named fields, the template chosen for the device's
language, fields formatted for that locale (Babel: "3,40 €" in Italian, "€3.40" in English), and
the bound on the provider payload a template can produce. Pure: no I/O.

A template is Python `str.format` syntax reduced to what a marketer needs and nothing that reaches
into objects: `{offer_title}` and the other FIELDS, `{{` and `}}` for literal braces; no positional
fields, attribute or index access, conversions or format specs (the locale does the formatting).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Collection, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency, format_percent

from vicino.services.kernel.locales import canonical_locale

__all__ = ["FIELDS", "APNS_MAX_PAYLOAD", "TemplateError", "MessageValues", "check_template", "canonical_locale",
           "pick_locale", "render", "payload_bytes", "max_rendered_payload_bytes"]

FIELDS = ("store_name", "offer_title", "price", "regular_price", "discount_percent", "valid_to")
APNS_MAX_PAYLOAD = 4096  # bytes of the APNs JSON payload; FCM's notification limit is the same 4 KiB

_FIELD_LIST = ", ".join("{" + f + "}" for f in FIELDS)

# The longest rendering of each field, in bytes of the JSON string (escapes counted), for the bound.
# Text: at most 200 characters (offers.Offer.title; geo's store `properties.name`, checked in
# services/geo/domain/geojson_codec.py `_properties`), 4 bytes each at most in UTF-8 (render turns
# control characters, which JSON would escape to 6, into spaces; `"` and `\` escape to 2).
# Prices, percent, date: the longest Babel renders in ANY of its locales (the bound is asked
# without a locale) for prices up to offers.MAX_PRICE = 1e9 in any currency, discounts 1-100 %, and
# dates up to year 9999 (tests/unit/test_messages.py recomputes them over every locale Babel has:
# a Babel upgrade that lengthens one fails that test, not a push).
MAX_TEXT_CHARS = 200
_LONGEST_FIELD_BYTES = {
    "store_name": MAX_TEXT_CHARS * 4,
    "offer_title": MAX_TEXT_CHARS * 4,
    "price": 34,             # Persian, CFA francs: "\u200eفرانک\u202fCFA\xa01,000,000,000"
    "regular_price": 34,
    "discount_percent": 9,   # Anii (blo): "%\xa01\u202f00"
    "valid_to": 59,          # Dzongkha (dz): "སྤྱི་ལོ་2026 ཟླ་༡༠ ཚེས་28"
}

# control characters (JSON escapes them to 6 bytes, and a notification shows none) -> spaces
_CONTROL_TO_SPACE = {c: " " for c in (*range(0x20), 0x7F)}


class TemplateError(ValueError):
    """A template that cannot be rendered: the message says what is wrong and where."""


@lru_cache(maxsize=1024)
def _parse(text: str) -> tuple[tuple[str, str | None], ...]:
    """The template as (literal text, field or None) pieces; raises TemplateError."""
    pieces: list[tuple[str, str | None]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise TemplateError(f"unbalanced brace at position {i}: '}}' without an opening '{{' "
                                "(write '}}' for a literal brace)")
        if c != "{":
            j = min((k for k in (text.find("{", i), text.find("}", i)) if k >= 0), default=n)
            literal.append(text[i:j])
            i = j
            continue
        if text.startswith("{{", i):
            literal.append("{")
            i += 2
            continue
        close = text.find("}", i + 1)
        if close < 0:
            raise TemplateError(f"unbalanced brace at position {i}: '{{' is never closed "
                                "(write '{{' for a literal brace)")
        _check_field(text[i + 1:close], i)
        pieces.append(("".join(literal), text[i + 1:close]))
        literal = []
        i = close + 1
    if literal:
        pieces.append(("".join(literal), None))
    return tuple(pieces)


def _check_field(inner: str, at: int) -> None:
    where = f"at position {at}"
    m = re.search(r"[!:]", inner)  # as str.format reads it: the name ends at a conversion or a spec
    name, sep = (inner[:m.start()], m.group()) if m else (inner, "")
    shown = "{" + inner + "}"
    if "{" in name:
        raise TemplateError(f"unbalanced brace {where}: '{{' opened again before '}}' "
                            "(write '{{' for a literal brace)")
    if name == "" or name.strip().isdigit():
        raise TemplateError(f"positional field {shown} {where}: name the field, one of {_FIELD_LIST}")
    if "." in name or "[" in name:
        raise TemplateError(f"attribute or index access in {shown} {where}: a field is a bare name, "
                            f"one of {_FIELD_LIST}")
    if name not in FIELDS:
        raise TemplateError(f"unknown field {{{name}}} {where}; the fields are {_FIELD_LIST}")
    if sep == "!":
        raise TemplateError(f"conversion in {shown} {where}: write {{{name}}} alone (no '!r', '!s')")
    if sep == ":":
        raise TemplateError(f"format spec in {shown} {where}: write {{{name}}} alone; the locale formats "
                            "prices, percents and dates")


def check_template(text: str) -> None:
    """Raises TemplateError naming what is wrong: an unknown field, an unbalanced brace, a
    positional field, attribute or index access, a conversion or a format spec."""
    if not isinstance(text, str):
        raise TemplateError(f"a template is a string, not {type(text).__name__}")
    _parse(text)


# locales ---------------------------------------------------------------------------------------

@lru_cache(maxsize=512)
def _babel_locale(tag: str) -> Locale:
    return Locale.parse(canonical_locale(tag).replace("-", "_"))


def _parsed_or_none(tag: str | None) -> Locale | None:
    if not tag:
        return None
    try:
        return _babel_locale(tag)
    except ValueError:
        return None


def pick_locale(available: Collection[str], wanted: Sequence[str | None], default: str) -> str:
    """The template locale (one of `available`, as spelt there) to use for a device: the first of
    `wanted` (the device's locale, then the customer's; None and unparseable tags skipped) that
    matches an available locale exactly (canonical forms, so case and `_` do not matter), else by
    language ("it-CH" -> "it"; "en" -> "en-GB"): the bare language first, then one of the same
    script, then the first in `available`'s order. No match for any: `default`."""
    parsed = [(a, _parsed_or_none(a)) for a in available]
    parsed = [(a, loc) for a, loc in parsed if loc is not None]
    for tag in wanted:
        want = _parsed_or_none(tag)
        if want is None:
            continue
        for a, loc in parsed:
            if loc == want:
                return a
        same_language = [(a, loc) for a, loc in parsed if loc.language == want.language]
        if same_language:
            # min keeps the first of equals: among them, `available`'s order decides
            return min(same_language, key=lambda p: (
                p[1].script is not None and want.script is not None and p[1].script != want.script,
                p[1].territory is not None))[0]
    return default


# rendering -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MessageValues:
    """What the fields are rendered from (the offer, the store, the visit)."""

    store_name: str
    offer_title: str
    price: float | None
    regular_price: float | None
    currency: str | None          # ISO 4217; None: prices as plain numbers with 2 decimals
    valid_to: float | None        # epoch s
    timezone: str = "Europe/Rome"  # valid_to is shown as a date in this zone (the store's)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None


def _finite(x: float | None) -> bool:
    return x is not None and not isinstance(x, bool) and math.isfinite(x)


@lru_cache(maxsize=512)
def _two_decimals(loc: Locale):
    """The locale's decimal pattern with exactly two fraction digits."""
    pattern = copy.copy(loc.decimal_formats[None])
    pattern.frac_prec = (2, 2)
    return pattern


# Babel's formatting costs 30-200 µs a call, and a decision renders the same few offers' prices
# and dates again and again: the results are cached (bounded; they depend on their arguments only)
@lru_cache(maxsize=4096)
def _money(value: float | None, currency: str | None, loc: Locale) -> str:
    if not _finite(value):
        return ""
    if currency:
        return format_currency(value, currency, locale=loc)
    return _two_decimals(loc).apply(value, loc)


def _discount(values: MessageValues, loc: Locale) -> str:
    price, regular = values.price, values.regular_price
    if not (_finite(price) and _finite(regular)) or regular <= 0 or price >= regular:
        return ""
    percent = round(100 * (1 - price / regular))
    if percent < 1:  # "0% off" is not a discount to announce
        return ""
    return _percent(percent, loc)


@lru_cache(maxsize=1024)
def _percent(percent: int, loc: Locale) -> str:
    return format_percent(Decimal(percent) / 100, locale=loc)


@lru_cache(maxsize=4096)
def _medium_date(day, loc: Locale) -> str:
    return format_date(day, format="medium", locale=loc)


def _date(t: float | None, timezone: str, loc: Locale) -> str:
    if not _finite(t):
        return ""
    try:
        day = datetime.fromtimestamp(t, ZoneInfo(timezone)).date()
    except (OverflowError, OSError, ValueError):  # beyond what a date can hold: nothing to show
        return ""
    return _medium_date(day, loc)


def _field(name: str, values: MessageValues, loc: Locale) -> str:
    if name == "store_name":
        return values.store_name.translate(_CONTROL_TO_SPACE)
    if name == "offer_title":
        return values.offer_title.translate(_CONTROL_TO_SPACE)
    if name == "price":
        return _money(values.price, values.currency and values.currency.upper(), loc)
    if name == "regular_price":
        return _money(values.regular_price, values.currency and values.currency.upper(), loc)
    if name == "discount_percent":
        return _discount(values, loc)
    return _date(values.valid_to, values.timezone, loc)  # valid_to


def render(template: str, locale: str, values: MessageValues) -> str:
    """The template with its fields filled for `locale` (a tag canonical_locale accepts, else
    ValueError). Prices with the currency's symbol where the locale puts it; a missing price, an
    unknown discount (or none: the price not below the regular price) or a missing date render as
    "". Raises TemplateError for a bad template."""
    pieces = _parse(template)
    loc = _babel_locale(locale)
    cache: dict[str, str] = {}
    out = []
    for literal, name in pieces:
        out.append(literal)
        if name is not None:
            if name not in cache:
                cache[name] = _field(name, values, loc)
            out.append(cache[name])
    return "".join(out)


# the provider payload ----------------------------------------------------------------------------

def payload_bytes(title: str, body: str, data: Mapping[str, str], deep_link: str | None,
                  image_url: str | None) -> int:
    """Bytes of the APNs payload the push gateway would send for this message: its `apns_payload`
    (services/push_gateway/domain/messages.py: aps.alert.title/body, sound, thread-id = the store,
    then the data keys), plus `mutable-content` (the notification service extension fetches the
    image) and `deep_link`, `image_url` as top-level keys when present. Compact JSON, UTF-8
    (orjson, as the gateway)."""
    aps: dict = {"alert": {"title": title, "body": body}, "sound": "default",
                 "thread-id": data.get("store_id", "")}
    if image_url:
        aps["mutable-content"] = 1
    payload: dict = {"aps": aps, **data}
    if deep_link:
        payload["deep_link"] = deep_link
    if image_url:
        payload["image_url"] = image_url
    return len(orjson.dumps(payload))


# Client ids are at most 128 characters of [A-Za-z0-9._:@-] (kernel.ids.CLIENT_ID_PATTERN), none of
# which JSON escapes; the delivery id is `dlv` + shard + digest, 30 (kernel.contracts.deliveries).
_MAX_CLIENT_ID = "x" * 128
_LONGEST_DATA = {"offer_id": _MAX_CLIENT_ID, "store_id": _MAX_CLIENT_ID, "visit_id": _MAX_CLIENT_ID,
                 "decision_id": _MAX_CLIENT_ID, "campaign_id": _MAX_CLIENT_ID, "test": "false",
                 "delivery_id": "x" * 30}


def _longest_rendering(template: str) -> str:
    """The template with each field replaced by ASCII of its longest rendering's byte length:
    ASCII letters are one byte each and need no escape, so the JSON length is the bound's."""
    return "".join(literal + ("x" * _LONGEST_FIELD_BYTES[name] if name else "")
                   for literal, name in _parse(template))


def max_rendered_payload_bytes(title_template: str, body_template: str, deep_link: str | None,
                               image_url: str | None) -> int:
    """An upper bound on payload_bytes of any rendering of these templates, in any locale, with the
    longest ids: compare it with APNS_MAX_PAYLOAD. Raises TemplateError for a bad template."""
    return payload_bytes(_longest_rendering(title_template), _longest_rendering(body_template),
                         _LONGEST_DATA, deep_link, image_url)
