"""A campaign's push message (recommender/domain/messages.py): templates, the locale choice, the
locale's formatting, and the payload bound against the gateway's real APNs payload."""
from __future__ import annotations

import datetime
from decimal import Decimal

import orjson
import pytest
from babel import Locale, localedata
from babel.dates import format_date
from babel.numbers import format_currency, format_percent, get_currency_precision, list_currencies
from hypothesis import HealthCheck, given, settings, strategies as st

from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.push_gateway.domain.messages import apns_payload, notification_for
from vicino.services.recommender.domain import messages as m
from vicino.services.recommender.domain.messages import (
    APNS_MAX_PAYLOAD, FIELDS, MessageValues, TemplateError, canonical_locale, check_template,
    max_rendered_payload_bytes, payload_bytes, pick_locale, render)

# 2026-12-04 10:00 in Rome
DEC_4 = datetime.datetime(2026, 12, 4, 10, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))).timestamp()
COFFEE = MessageValues(store_name="Coop Centro", offer_title="Caffè 250 g", price=3.40, regular_price=4.00,
                       currency="EUR", valid_to=DEC_4)
EVERYTHING = "{store_name}|{offer_title}|{price}|{regular_price}|{discount_percent}|{valid_to}"


# --- formatting per locale ----------------------------------------------------------------------

def test_italian_and_english_prices_discounts_and_dates() -> None:
    assert render(EVERYTHING, "it", COFFEE) == "Coop Centro|Caffè 250 g|3,40\xa0€|4,00\xa0€|15%|4 dic 2026"
    assert render(EVERYTHING, "it-IT", COFFEE) == "Coop Centro|Caffè 250 g|3,40\xa0€|4,00\xa0€|15%|4 dic 2026"
    assert render(EVERYTHING, "en", COFFEE) == "Coop Centro|Caffè 250 g|€3.40|€4.00|15%|Dec 4, 2026"
    assert render(EVERYTHING, "en-GB", COFFEE) == "Coop Centro|Caffè 250 g|€3.40|€4.00|15%|4 Dec 2026"
    # French puts a (no-break) space before the percent sign: Babel's rule, not ours
    assert render("{discount_percent}", "fr", COFFEE) == "15\xa0%"


def test_literal_braces_and_repeated_fields() -> None:
    assert render("{{{price}}} {price}", "it", COFFEE) == "{3,40\xa0€} 3,40\xa0€"
    assert render("no fields at all", "en", COFFEE) == "no fields at all"


def test_missing_values_render_empty() -> None:
    bare = MessageValues("S", "T", price=None, regular_price=None, currency="EUR", valid_to=None)
    assert render("[{price}][{regular_price}][{discount_percent}][{valid_to}]", "it", bare) == "[][][][]"


@pytest.mark.parametrize("price, regular", [(4.0, 4.0), (5.0, 4.0), (3.999, 4.0), (3.0, None), (None, 4.0)])
def test_no_discount_to_show(price, regular) -> None:
    v = MessageValues("S", "T", price=price, regular_price=regular, currency="EUR", valid_to=None)
    assert render("{discount_percent}", "it", v) == ""


def test_discount_is_rounded() -> None:
    v = MessageValues("S", "T", price=2.0, regular_price=3.0, currency="EUR", valid_to=None)  # 33.3 %
    assert render("{discount_percent}", "en", v) == "33%"


def test_without_a_currency_prices_are_plain_numbers_with_two_decimals() -> None:
    v = MessageValues("S", "T", price=1234.5, regular_price=None, currency=None, valid_to=None)
    assert render("{price}", "it", v) == "1.234,50"
    assert render("{price}", "en", v) == "1,234.50"


def test_the_date_is_the_stores_day() -> None:
    late = datetime.datetime(2026, 12, 4, 23, 30, tzinfo=datetime.timezone.utc).timestamp()  # 5 Dec in Rome
    v = MessageValues("S", "T", None, None, None, valid_to=late)
    assert render("{valid_to}", "it", v) == "5 dic 2026"
    assert render("{valid_to}", "it", MessageValues("S", "T", None, None, None, late, timezone="UTC")) == "4 dic 2026"


def test_control_characters_in_names_become_spaces() -> None:
    v = MessageValues("Coop\nCentro", "Caff\x00è", None, None, None, None)
    assert render("{store_name}: {offer_title}", "it", v) == "Coop Centro: Caff è"


def test_a_bad_time_zone_or_locale_is_refused() -> None:
    with pytest.raises(ValueError, match="IANA"):
        MessageValues("S", "T", None, None, None, None, timezone="Europe/Atlantis")
    with pytest.raises(ValueError, match="not a locale"):
        render("{price}", "xx", COFFEE)


# --- templates ----------------------------------------------------------------------------------

def test_good_templates_pass() -> None:
    for text in ("", "{offer_title} da {store_name}", "{{literal}} {price}}}", "-{discount_percent} fino al {valid_to}",
                 "".join("{" + f + "}" for f in FIELDS)):
        check_template(text)


@pytest.mark.parametrize("text, says", [
    ("Sconto {prize}!", "unknown field {prize} at position 7; the fields are {store_name}, {offer_title}, {price}"),
    ("{ price }", "unknown field { price } at position 0"),
    ("a } b", "unbalanced brace at position 2: '}' without an opening '{'"),
    ("solo {price", "unbalanced brace at position 5: '{' is never closed"),
    ("{pr{ice}", "unbalanced brace at position 0: '{' opened again"),
    ("{}", "positional field {} at position 0"),
    ("x {0}", "positional field {0} at position 2"),
    ("{price.real}", "attribute or index access in {price.real} at position 0"),
    ("{store_name[0]}", "attribute or index access in {store_name[0]} at position 0"),
    ("{price!r}", "conversion in {price!r} at position 0"),
    ("{price:>10}", "format spec in {price:>10} at position 0"),
    ("{price:{valid_to}}", "format spec in {price:{valid_to} at position 0"),
])
def test_bad_templates_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(TemplateError) as e:
        check_template(text)
    assert str(e.value).startswith(says)
    with pytest.raises(TemplateError):  # render refuses the same, and max_rendered_payload_bytes
        render(text, "it", COFFEE)
    with pytest.raises(TemplateError):
        max_rendered_payload_bytes("ok", text, None, None)


def test_a_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


# --- locales ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag, canonical", [("it", "it"), ("it-IT", "it-IT"), ("it_it", "it-IT"), ("en_GB", "en-GB"),
                                            ("pt-br", "pt-BR"), ("zh-TW", "zh-Hant-TW"), ("es-419", "es-419"),
                                            ("en-US-u-fw-mon-mu-celsius", "en-US")])
def test_canonical_locale(tag: str, canonical: str) -> None:
    assert canonical_locale(tag) == canonical


@pytest.mark.parametrize("tag, says", [("", "empty"), ("xx", "not a locale Babel"), ("it-XX", "not a locale Babel"),
                                       ("it_IT.UTF-8", "not a BCP 47 tag"), ("it@euro", "not a BCP 47 tag"),
                                       ("x-private", "not a BCP 47 tag"), ("und", "undetermined"),
                                       ("e", "not a BCP 47 tag"), ("en-" + "a" * 90, "at most")])
def test_canonical_locale_refuses(tag: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        canonical_locale(tag)


AVAILABLE = ("it", "en-GB", "de-CH")


@pytest.mark.parametrize("wanted, chosen", [
    (["en-GB", "it"], "en-GB"),          # the device's locale first
    (["EN_gb", None], "en-GB"),          # exact, whatever the case and separator
    ([None, "de-CH"], "de-CH"),          # no device locale: the customer's
    (["fr-FR", "de-CH"], "de-CH"),       # the device's language has no template: the customer's
    (["xx-YY", "it"], "it"),             # an unparseable tag is skipped
    (["it-CH", "en-GB"], "it"),          # the device's language before the customer's exact match
    (["en", "it"], "en-GB"),             # by language: en -> en-GB when only en-GB exists
    (["de-AT"], "de-CH"),
    (["fr", None], "it"),                # nothing matches: the default
    ([], "it"),
    ([None, None], "it"),
])
def test_locale_choice(wanted, chosen) -> None:
    assert pick_locale(AVAILABLE, wanted, default="it") == chosen


def test_locale_choice_prefers_the_bare_language_then_the_same_script() -> None:
    assert pick_locale(["en-GB", "en", "en-AU"], ["en-US"], "x") == "en"
    assert pick_locale(["en-AU", "en-GB"], ["en-US"], "x") == "en-AU"   # the campaign's order among equals
    assert pick_locale(["zh-Hans-CN", "zh-Hant-HK"], ["zh-TW"], "x") == "zh-Hant-HK"
    assert pick_locale(["sr-Cyrl", "sr-Latn"], ["sr-Latn-RS"], "x") == "sr-Latn"


def test_locale_choice_returns_the_available_spelling() -> None:
    assert pick_locale(["it_IT"], ["it-it"], "x") == "it_IT"


# --- the payload bound --------------------------------------------------------------------------

def _gateway_payload(title: str, body: str, data: dict) -> tuple[bytes, dict]:
    job = PushJobV1(job_id="job_1", idempotency_key=f"c1:{data['store_id']}:{data['visit_id']}", customer_id="c1",
                    device_id="d1", platform="ios", push_token="a" * 64, title=title, body=body,
                    collapse_key=data["visit_id"], created_at=1.0, expires_at=2.0,
                    data=PushDataV1(**{k: v for k, v in data.items() if k in ("offer_id", "store_id", "visit_id",
                                                                                "decision_id")}))
    n = notification_for(job, "dlv000" + "0" * 24, "a" * 64)
    return apns_payload(n), n.data


def test_payload_bytes_is_the_gateways_apns_payload() -> None:
    title, body = "Caffè 250 g \"scontato\"", "Da Coop\nCentro: 3,40\xa0€ 😀"
    raw, data = _gateway_payload(title, body, {"offer_id": "o1", "store_id": "s1", "visit_id": "v1",
                                               "decision_id": "dec_1"})
    assert payload_bytes(title, body, data, None, None) == len(raw)


def test_deep_link_and_image_add_their_keys() -> None:
    data = {"store_id": "s1"}
    base = payload_bytes("t", "b", data, None, None)
    assert payload_bytes("t", "b", data, "app://o/1", None) == base + len(',"deep_link":"app://o/1"')
    assert payload_bytes("t", "b", data, None, "https://i/1.jpg") == \
        base + len(',"mutable-content":1') + len(',"image_url":"https://i/1.jpg"')


def test_a_4000_character_body_is_over_the_limit() -> None:
    assert max_rendered_payload_bytes("{offer_title}", "x" * 4000, None, None) > APNS_MAX_PAYLOAD
    # and a usual message is well under it
    assert max_rendered_payload_bytes("{offer_title}", "{store_name}: {offer_title} a {price} (-{discount_percent})",
                                      "app://offers/1", "https://cdn.example/o/1.jpg") <= APNS_MAX_PAYLOAD


def test_the_bound_counts_escapes_of_the_templates_own_text() -> None:
    plain = max_rendered_payload_bytes("t", "a" * 100, None, None)
    assert max_rendered_payload_bytes("t", "\n" * 100, None, None) == plain + 100      # "\n": 2 bytes
    assert max_rendered_payload_bytes("t", "\x01" * 100, None, None) == plain + 500    # "\u0001": 6 bytes
    assert max_rendered_payload_bytes("t", "€" * 100, None, None) == plain + 200       # 3 bytes of UTF-8


LOCALES = localedata.locale_identifiers()
CURRENCIES = sorted(list_currencies())
MAX_TEXT = st.text(max_size=200)  # any code point, control characters included
PIECES = st.lists(st.one_of(st.sampled_from(["{" + f + "}" for f in FIELDS]),
                            st.text(max_size=30).map(lambda s: s.replace("{", "{{").replace("}", "}}"))),
                  max_size=8).map("".join)
IDS = st.from_regex(CLIENT_ID_PATTERN, fullmatch=True)
PRICES = st.one_of(st.none(), st.floats(0.01, 1e9))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title_t=PIECES, body_t=PIECES, locale=st.sampled_from(LOCALES), store=MAX_TEXT, offer=MAX_TEXT,
       price=PRICES, regular=PRICES, currency=st.one_of(st.none(), st.sampled_from(CURRENCIES)),
       valid_to=st.one_of(st.none(), st.floats(0, 253_402_000_000)),
       zone=st.sampled_from(["Europe/Rome", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"]),
       ids=st.lists(IDS, min_size=5, max_size=5), test=st.booleans(),
       deep_link=st.one_of(st.none(), st.text(max_size=300)), image=st.one_of(st.none(), st.text(max_size=300)))
def test_a_rendered_payload_is_within_the_bound(title_t, body_t, locale, store, offer, price, regular, currency,
                                                valid_to, zone, ids, test, deep_link, image) -> None:
    v = MessageValues(store, offer, price, regular, currency, valid_to, timezone=zone)
    tag = locale.replace("_", "-")
    data = dict(zip(("offer_id", "store_id", "visit_id", "decision_id", "campaign_id"), ids),
                test="true" if test else "false", delivery_id="dlv000" + "0" * 24)
    sent = payload_bytes(render(title_t, tag, v), render(body_t, tag, v), data, deep_link, image)
    assert sent <= max_rendered_payload_bytes(title_t, body_t, deep_link, image)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(locale=st.sampled_from(LOCALES), price=PRICES, regular=PRICES,
       currency=st.one_of(st.none(), st.sampled_from(CURRENCIES)), valid_to=st.one_of(st.none(), st.floats(0, 4e9)))
def test_each_field_is_within_its_bound_and_the_names_and_ids_exactly_at_it(locale, price, regular, currency,
                                                                            valid_to) -> None:
    """One field at a time (a sum would let one field's slack hide another's shortfall), with the
    longest ids and names of 200 four-byte characters: those reach the bound exactly."""
    v = MessageValues("😀" * 200, "😀" * 200, price, regular, currency, valid_to)
    data = dict.fromkeys(("offer_id", "store_id", "visit_id", "decision_id", "campaign_id"), "x" * 128)
    data.update(test="false", delivery_id="dlv000" + "0" * 24)
    tag = locale.replace("_", "-")
    for field in FIELDS:
        template = "{" + field + "}"
        sent = payload_bytes("", render(template, tag, v), data, "app://o", "https://i")
        bound = max_rendered_payload_bytes("", template, "app://o", "https://i")
        assert sent <= bound, field
        if field in ("store_name", "offer_title"):
            assert sent == bound


def _json_bytes(s: str) -> int:
    return len(orjson.dumps(s)) - 2


def test_the_longest_renderings_cover_every_babel_locale() -> None:
    """The field bounds of messages._LONGEST_FIELD_BYTES, recomputed over every locale Babel has:
    prices up to offers.MAX_PRICE (1e9) in each locale's three longest currency symbols and the
    currencies with 3 or 4 decimals (the number's length does not depend on anything else), every
    discount length, every month of a 4-digit year (no CLDR medium date shows the weekday)."""
    precise = [c for c in CURRENCIES if get_currency_precision(c) > 2]
    longest = {"price": 0, "discount_percent": 0, "valid_to": 0}
    for lid in LOCALES:
        loc = Locale.parse(lid)
        assert "E" not in loc.date_formats["medium"].pattern, lid  # else the weekday would need covering
        symbols = loc.currency_symbols
        widest = sorted(CURRENCIES, key=lambda c: -_json_bytes(symbols.get(c, c)))[:3]
        prices = [format_currency(1e9, c, locale=loc) for c in widest + ["QQQ"]]
        prices += [format_currency(999_999_999.9999, c, locale=loc) for c in precise]
        prices.append(m._two_decimals(loc).apply(1e9, loc))
        longest["price"] = max(longest["price"], *map(_json_bytes, prices))
        longest["discount_percent"] = max(longest["discount_percent"], *(
            _json_bytes(format_percent(Decimal(d) / 100, locale=loc)) for d in (1, 10, 100)))
        longest["valid_to"] = max(longest["valid_to"], *(
            _json_bytes(format_date(datetime.date(9999, month, 28), format="medium", locale=loc))
            for month in range(1, 13)))
    bounds = m._LONGEST_FIELD_BYTES
    assert bounds["price"] >= longest["price"] and bounds["regular_price"] >= longest["price"]
    assert bounds["discount_percent"] >= longest["discount_percent"]
    assert bounds["valid_to"] >= longest["valid_to"]
    assert bounds["offer_title"] >= 4 * 200 and bounds["store_name"] >= 4 * 200
