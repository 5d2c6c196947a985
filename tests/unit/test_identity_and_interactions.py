"""Pure rules of the data layer: identifier forms, merge survivor and consent, item verdicts."""
from __future__ import annotations

import hashlib
import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vicino.services.recommender.domain.identity import (IdentifierError, normalise_identifier, stricter_consent,
                                                  survivor)
from vicino.services.recommender.domain.interactions import Draft, Rejection, judge

ids = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@given(st.lists(ids, min_size=1, max_size=6, unique=True))
def test_the_survivor_of_any_merge_order_is_the_same(customers):
    results = set()
    for order in itertools.islice(itertools.permutations(customers), 24):
        root = order[0]
        for c in order[1:]:
            root = survivor(root, c)
        results.add(root)
    assert results == {min(customers)}


consents = st.fixed_dictionaries({"location": st.booleans(), "marketing": st.booleans(),
                                  "personalisation": st.booleans()})


@given(consents, consents)
def test_the_stricter_consent_never_grants_what_either_refused(a, b):
    s = stricter_consent(a, b)
    assert s == stricter_consent(b, a)
    for purpose, granted in s.items():
        assert granted == (a[purpose] and b[purpose])


def test_identifier_forms():
    digest = hashlib.sha256(b"x@y.org").hexdigest()
    assert normalise_identifier("email", " X@Y.org ") == "email_sha256:" + digest
    assert normalise_identifier("email_sha256", digest.upper()) == "email_sha256:" + digest
    assert normalise_identifier("loyalty_card", "L-1") == "loyalty_card:L-1"
    # a phone number in E.164, whatever its punctuation or international prefix, kept as its SHA-256
    phone = "phone_sha256:" + hashlib.sha256(b"+390212345678").hexdigest()
    for written in ("+39 02 1234 5678", "+39 (02) 12.34-56.78", "0039 02 12345678"):
        assert normalise_identifier("phone", written) == phone
    assert normalise_identifier("phone_sha256", phone.split(":")[1].upper()) == phone
    for kind, value in (("fax", "1"), ("email", "nope"), ("email_sha256", "12"), ("cookie", "a b"),
                        ("cookie", ""), ("device", "x" * 200), ("phone", "02 1234 5678"), ("phone", "+0 123456789"),
                        ("phone", "+39 12"), ("phone", "+39 1234567890123456"), ("phone_sha256", "ab")):
        with pytest.raises(IdentifierError):
            normalise_identifier(kind, value)


NOW = time.time()


def item(**kw) -> dict:
    return {"event_id": "e", "customer_id": "c", "channel": "web", "type": "view", "item_id": "i", "ts": NOW, **kw}


def test_a_valid_item_becomes_a_draft_with_epoch_seconds():
    d = judge(0, item(ts="2026-11-26T10:00:00+01:00", type="purchase", quantity=2, value=3.5), NOW + 1e9, 300)
    assert isinstance(d, Draft)
    assert d.fields["ts"] == pytest.approx(1795683600.0) and d.fields["quantity"] == 2
    by_identifier = judge(0, item(customer_id=None, identifier={"kind": "cookie", "value": "ck"}), NOW, 300)
    assert by_identifier.identifier == "cookie:ck" and by_identifier.customer_id is None


@pytest.mark.parametrize("raw, reason", [
    (item(channel="pigeon"), "invalid"),
    (item(type="wish"), "invalid"),
    (item(customer_id=None), "missing_customer"),
    (item(identifier={"kind": "cookie", "value": "x"}), "ambiguous_customer"),
    (item(quantity=0), "invalid"),
    (item(type="return", quantity=-1), "invalid"),
    (item(type="offer_open", item_id=None), "missing_offer_id"),
    (item(type="purchase", item_id=None), "missing_item_id"),
    (item(ts=NOW + 3600), "ts_in_future"),
    (item(ts=1_700_000_000_000), "invalid"),   # milliseconds sent as seconds: not a time (kernel.times)
    (item(ts=100), "invalid"),
    (item(event_id="has space"), "invalid"),
    (item(currency="euro"), "invalid"),
    ([1, 2], "invalid"),
])
def test_each_bad_item_gets_its_reason(raw, reason):
    verdict = judge(3, raw, NOW, 300)
    assert isinstance(verdict, Rejection) and verdict.reason == reason and verdict.index == 3
    assert verdict.detail


def test_support_contacts_need_no_item():
    assert isinstance(judge(0, item(type="support_contact", item_id=None, channel="call_center"), NOW, 300), Draft)


def test_a_survey_carries_its_score_and_a_reply_the_contact_it_answers():
    survey = judge(0, item(type="survey", item_id=None, channel="email", score=0), NOW, 300)
    assert isinstance(survey, Draft) and survey.fields["score"] == 0 and survey.fields["reply_to"] is None
    assert judge(0, item(type="survey", item_id=None, channel="store", score=10), NOW, 300).fields["score"] == 10
    reply = judge(0, item(type="support_reply", item_id=None, channel="social", reply_to="contact-1"), NOW, 300)
    assert isinstance(reply, Draft) and reply.fields["reply_to"] == "contact-1" and reply.fields["score"] is None


@pytest.mark.parametrize("raw, reason, named", [
    (item(type="survey", item_id=None), "missing_score", "score"),
    (item(type="survey", item_id=None, score=11), "invalid", "score"),
    (item(type="survey", item_id=None, score=-1), "invalid", "score"),
    (item(type="survey", item_id=None, score=7.5), "invalid", "score"),
    (item(type="survey", item_id=None, score="9"), "invalid", "score"),
    (item(type="survey", item_id=None, score=True), "invalid", "score"),
    (item(type="purchase", score=9), "invalid", "score"),
    (item(type="support_contact", item_id=None, score=3), "invalid", "score"),
    (item(type="support_reply", item_id=None, channel="email"), "missing_reply_to", "reply_to"),
    (item(type="support_reply", item_id=None, channel="email", reply_to="has space"), "invalid", "reply_to"),
    (item(type="support_contact", item_id=None, reply_to="c1"), "invalid", "reply_to"),
    (item(type="support_reply", item_id=None, channel="store", reply_to="c1"), "invalid", "channel"),
    (item(type="support_reply", item_id=None, channel="push", reply_to="c1"), "invalid", "channel"),
])
def test_score_and_reply_to_belong_to_their_types(raw, reason, named):
    verdict = judge(0, raw, NOW, 300)
    assert isinstance(verdict, Rejection) and verdict.reason == reason, verdict
    assert named in verdict.detail
