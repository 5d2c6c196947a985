"""A customer as a CRM describes it, judged before anything is stored (domain.customer_records,
domain.locales) and read from a CRM file (cli.customers): canonical locales and countries, the
reasons a row or item is refused, the identifier columns."""
from __future__ import annotations

import hashlib

import pytest

from vicino.services.cli.customers import (CustomerFileError, ReadCustomers, Row, _check_columns,
                                           _one_owner_per_identifier, _reason, customer_of)
from vicino.services.recommender.domain.customer_records import CustomerRecord, batch_items, judge_customer
from vicino.services.recommender.domain.locales import LocaleError, canonical_country, canonical_locale


@pytest.mark.parametrize("tag, canonical", [("it-IT", "it-IT"), ("it_it", "it-IT"), ("EN-gb", "en-GB"), ("it", "it"),
                                            ("zh-Hant-TW", "zh-Hant-TW"), ("sr-Latn", "sr-Latn"), ("es-419", "es-419"),
                                            ("it-IT-u-ca-gregory", "it-IT")])
def test_locales_are_kept_in_the_kernels_canonical_bcp47_form(tag, canonical):
    assert canonical_locale(tag) == canonical


@pytest.mark.parametrize("tag", ["", "x", "xx", "klingon-XX", "it IT", "fr--FR", "a" * 40, "it-ITA", "und"])
def test_a_tag_cldr_does_not_know_is_refused(tag):
    with pytest.raises(LocaleError):
        canonical_locale(tag)


def test_countries_are_iso_alpha2_upper_case():
    assert canonical_country("it") == "IT" and canonical_country(" gb ") == "GB"
    for bad in ("", "ITA", "ZZ", "EU", "UN", "I1", "QQ"):
        with pytest.raises(LocaleError):
            canonical_country(bad)


def test_a_valid_customer_becomes_a_record_in_stored_forms():
    record = judge_customer({"customer_id": "c-1", "identifiers": [
        {"kind": "email", "value": "Ann@Example.it"}, {"kind": "loyalty_card", "value": "L-1"},
        {"kind": "email", "value": "ann@example.it"}],
        "consent": {"marketing": True, "location": False}, "locale": "it_it", "country": "it"})
    digest = hashlib.sha256(b"ann@example.it").hexdigest()
    assert record == CustomerRecord("c-1", (f"email_sha256:{digest}", "loyalty_card:L-1"),
                                    {"marketing": True, "location": False}, {"locale": "it-IT", "country": "IT"})
    assert judge_customer({"customer_id": "c-2"}) == CustomerRecord("c-2", (), {}, {})


def test_every_reason_a_customer_is_refused_is_named_by_its_field():
    def fields(raw) -> list[str]:
        judged = judge_customer(raw)
        assert isinstance(judged, list), judged
        return [e["field"] for e in judged]

    assert fields("c-1") == [""]
    assert fields({}) == ["customer_id"]
    assert fields({"customer_id": "bad id"}) == ["customer_id"]
    assert fields({"customer_id": "c", "consent": {"marketing": "yes"}}) == ["consent.marketing"]
    assert fields({"customer_id": "c", "consent": {"marketing": 1}}) == ["consent.marketing"]  # JSON booleans only
    assert fields({"customer_id": "c", "consent": {"sms": True}}) == ["consent.sms"]
    assert fields({"customer_id": "c", "nickname": "x"}) == ["nickname"]
    assert fields({"customer_id": "c", "identifiers": [{"kind": "fax", "value": "1"}, {"kind": "phone", "value": "12"}],
                   "locale": "xx", "country": "ZZ", "consent": {}}) == ["identifiers.0", "identifiers.1", "locale",
                                                                          "country", "consent"]


def test_a_batch_body_is_refused_whole_only_for_its_shape_or_size():
    assert batch_items({"customers": [{}] * 1000}) == [{}] * 1000
    for body in ({"customers": []}, {"customers": [{}] * 1001}, [{}], {"customers": {}}, {"customers": [{}], "x": 1}):
        with pytest.raises(ValueError):
            batch_items(body)


def test_a_crm_row_becomes_an_item_with_its_identifier_columns():
    body, columns = customer_of({"customer_id": " c-1 ", "email": "a@b.it", "phone": "", "loyalty_card": "L-1",
                                 "consent_location": "YES", "consent_marketing": "0", "consent_personalisation": "",
                                 "locale": "it-IT", "country": ""})
    assert body == {"customer_id": "c-1", "identifiers": [{"kind": "email", "value": "a@b.it"},
                                                          {"kind": "loyalty_card", "value": "L-1"}],
                    "consent": {"location": True, "marketing": False}, "locale": "it-IT"}
    assert columns == ["email", "loyalty_card"]
    assert customer_of({"customer_id": "c", "consent_marketing": True})[0]["consent"] == {"marketing": True}  # Parquet
    for cells, why in (({"customer_id": ""}, "customer_id is empty"),
                       ({"customer_id": "c", "consent_marketing": "perhaps"}, "consent_marketing 'perhaps'")):
        with pytest.raises(ValueError, match=why):
            customer_of(cells)


def test_unknown_columns_are_refused_by_name():
    _check_columns(["customer_id", "email", "locale"])
    with pytest.raises(CustomerFileError, match="shoe_size, colour"):
        _check_columns(["customer_id", "shoe_size", "colour"])
    with pytest.raises(CustomerFileError, match="no customer_id"):
        _check_columns(["email"])


def test_the_first_row_of_an_identifier_wins_and_the_services_fields_become_columns():
    def row(where, customer_id, **idents):
        return Row(where, {"customer_id": customer_id,
                           "identifiers": [{"kind": k, "value": v} for k, v in idents.items()]}, list(idents))

    read = ReadCustomers(rows=[row(2, "a", email="X@y.it"), row(3, "b", email="x@Y.it"), row(4, "a", email="x@y.it"),
                               row(5, "c", phone="bad")])
    _one_owner_per_identifier(read)
    assert [r.where for r in read.rows] == [2, 4, 5]  # the same customer twice is the service's to judge
    assert read.unreadable == [(3, "b", "email: the same email as line 2 (a); an identifier belongs to one customer")]
    r = row(9, "c", email="a@b.it", loyalty_card="L")
    assert _reason([{"field": "identifiers.1", "message": "taken"}, {"field": "consent.marketing", "message": "no"},
                    {"field": "locale", "message": "bad"}], r) == "loyalty_card: taken; consent_marketing: no; locale: bad"
