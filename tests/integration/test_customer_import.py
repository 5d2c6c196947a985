"""Bringing existing customers in (issue 17): `POST /v1/customers:batch` on the recommender and
geo's `POST /v1/consents:batch`, against a real Redis and a real geo service, and
`vicino customers import` against served processes: identifiers that resolve, consent at geo
with its audit entry, locale and country in the profile, rejected items with their reasons."""
from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys

import httpx
import pytest

from testbed.processes import ROOT, served_service
from tests.conftest import ADMIN_TOKEN
from tests.support import assert_problem
from vicino.services.cli.customers import import_customers, read_customers
from vicino.services.recommender.adapters.redis_keys import CustomerKeys

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def batch(client, customers, headers=ADMIN) -> dict:
    r = client.post("/v1/customers:batch", headers=headers, json={"customers": customers})
    assert r.status_code == 200, r.text
    return r.json()


def make_key(geo_http, *roles: str) -> dict:
    r = geo_http.post("/v1/keys", json={"name": "crm", "roles": list(roles)})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def resolve(client, kind: str, value: str) -> str | None:
    r = client.get(f"/v1/identifiers/{kind}/{value}", headers=ADMIN)
    return r.json()["customer_id"] if r.status_code == 200 else None


# --- geo: consent in batches ----------------------------------------------------------------

def test_a_consent_batch_is_recorded_and_audited_item_by_item(geo_http):
    geo_http.put("/v1/customers/gb-1/consent", json={"location": True, "marketing": True,
                                                     "personalisation": True}).raise_for_status()
    items = [{"customer_id": "gb-1", "consent": {"marketing": False}, "source": "crm-import"},
             {"customer_id": "gb-2", "consent": {"location": True, "personalisation": True}},
             {"customer_id": "bad id", "consent": {"marketing": True}},
             {"customer_id": "gb-3", "consent": {}},
             {"customer_id": "gb-4", "consent": {"marketing": "maybe"}},
             {"customer_id": "gb-2", "consent": {"marketing": True}}]
    r = geo_http.post("/v1/consents:batch", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["ok"], body["rejected"]) == (2, 4)
    assert [x["status"] for x in body["results"]] == ["ok", "ok", "rejected", "rejected", "rejected", "rejected"]
    fields = [[e["field"] for e in x.get("errors") or []] for x in body["results"]]
    assert fields[2:] == [["customer_id"], ["consent"], ["consent.marketing"], ["customer_id"]]
    # a purpose left out keeps its value; none recorded before: False
    assert {k: body["results"][0]["consent"][k] for k in ("location", "marketing", "personalisation")} == \
        {"location": True, "marketing": False, "personalisation": True}
    assert body["results"][0]["consent"]["updated_at"].endswith("Z")
    one = geo_http.get("/v1/customers/gb-1/consent").json()
    assert (one["location"], one["marketing"], one["personalisation"]) == (True, False, True)
    # the same trail as a single change, newest first, with the batch's source
    assert [(h["by"], h["marketing"], h["source"]) for h in one["history"]] == [("admin", False, "crm-import"),
                                                                                ("admin", True, None)]
    two = geo_http.get("/v1/customers/gb-2/consent").json()
    assert (two["location"], two["marketing"], two["personalisation"]) == (True, False, True)
    assert len(two["history"]) == 1
    assert geo_http.get("/v1/customers/gb-3/consent").json()["history"] == []


def test_a_consent_batch_is_refused_whole_when_too_large_or_not_a_batch_and_needs_app_backend(geo_http):
    item = {"customer_id": "gb-x", "consent": {"marketing": True}}
    assert_problem(geo_http.post("/v1/consents:batch", json={"items": [item] * 1001}), 422, "1,001", "1,000")
    assert_problem(geo_http.post("/v1/consents:batch", json={"items": []}), 422, "items")
    assert_problem(geo_http.post("/v1/consents:batch", json=[item]), 422, "items")
    assert_problem(geo_http.post("/v1/consents:batch", json={"items": [item], "more": 1}), 422, "more")
    support = make_key(geo_http, "support")
    assert_problem(geo_http.post("/v1/consents:batch", headers=support, json={"items": [item]}), 403, "app_backend",
                   code="forbidden_role")
    app_backend = make_key(geo_http, "app_backend")
    r = geo_http.post("/v1/consents:batch", headers=app_backend, json={"items": [item]})
    assert r.status_code == 200 and r.json()["ok"] == 1, r.text
    assert geo_http.get("/v1/customers/gb-x/consent").json()["history"][0]["by"].startswith("key:")
    assert geo_http.get("/v1/consents:batch").status_code == 405


# --- the recommender: customers in batches --------------------------------------------------

def test_a_customer_batch_links_sets_consent_and_keeps_locale_item_by_item(rec_client, geo_http, redis_sync):
    batch(rec_client, [{"customer_id": "cb-taken", "identifiers": [{"kind": "loyalty_card", "value": "CARD-9"}]}])
    out = batch(rec_client, [
        {"customer_id": "cb-1", "identifiers": [{"kind": "email", "value": "Anna@Example.it"},
                                                {"kind": "phone", "value": "+39 02 1234 5678"},
                                                {"kind": "loyalty_card", "value": "CARD-1"}],
         "consent": {"marketing": True, "personalisation": True}, "locale": "it_it", "country": "it"},
        {"customer_id": "cb-2", "locale": "xx-YY"},
        {"customer_id": "cb-3", "consent": {"marketing": "yes"}},
        {"customer_id": "cb-4", "identifiers": [{"kind": "loyalty_card", "value": "CARD-4"},
                                                {"kind": "loyalty_card", "value": "CARD-9"}]},
        {"identifiers": [{"kind": "loyalty_card", "value": "CARD-5"}]},
        {"customer_id": "cb-taken", "locale": "en", "country": "GB"},
        {"customer_id": "cb-6", "identifiers": [{"kind": "loyalty_card", "value": "CARD-1"}]},
    ])
    assert [(x["index"], x["customer_id"], x["status"]) for x in out["results"]] == [
        (0, "cb-1", "created"), (1, "cb-2", "rejected"), (2, "cb-3", "rejected"), (3, "cb-4", "rejected"),
        (4, None, "rejected"), (5, "cb-taken", "updated"), (6, "cb-6", "rejected")]
    assert (out["created"], out["updated"], out["rejected"]) == (1, 1, 5)
    errors = {x["index"]: x["errors"] for x in out["results"] if x["status"] == "rejected"}
    assert errors[1][0]["field"] == "locale" and "xx-YY" in errors[1][0]["message"]
    assert errors[2][0]["field"] == "consent.marketing"
    assert errors[3] == [{"field": "identifiers.1", "message": errors[3][0]["message"]}]
    assert "another customer" in errors[3][0]["message"] and "not merged" in errors[3][0]["message"]
    assert errors[4][0]["field"] == "customer_id"
    assert "earlier in this batch" in errors[6][0]["message"]
    # identifiers resolve; a rejected item linked nothing and merged no one
    digest = hashlib.sha256(b"anna@example.it").hexdigest()
    assert resolve(rec_client, "email_sha256", digest) == "cb-1"
    assert resolve(rec_client, "phone", "+390212345678") == "cb-1"
    assert resolve(rec_client, "loyalty_card", "CARD-1") == "cb-1"
    assert resolve(rec_client, "loyalty_card", "CARD-4") is None
    assert resolve(rec_client, "loyalty_card", "CARD-9") == "cb-taken"
    assert redis_sync.get(CustomerKeys("cb-4", 16).merged_into) is None
    # consent at geo, with its audit entry
    consent = geo_http.get("/v1/customers/cb-1/consent").json()
    assert (consent["location"], consent["marketing"], consent["personalisation"]) == (False, True, True)
    assert [(h["by"], h["source"]) for h in consent["history"]] == [("key:svc-recommender", "customer-batch")]
    assert geo_http.get("/v1/customers/cb-3/consent").json()["history"] == []
    # locale and country, canonical, in the profile; nothing of the rejected ones
    profile = rec_client.get("/v1/customers/cb-1", headers=ADMIN).json()
    assert (profile["locale"], profile["country"]) == ("it-IT", "IT")
    assert profile["consent"]["marketing"] is True
    assert sorted(i["kind"] for i in profile["identifiers"]) == ["email_sha256", "loyalty_card", "phone_sha256"]
    assert (rec_client.get("/v1/customers/cb-taken", headers=ADMIN).json()["locale"]) == "en"
    assert_problem(rec_client.get("/v1/customers/cb-2", headers=ADMIN), 404)
    # the same batch again: nothing new, every one updated
    again = batch(rec_client, [{"customer_id": "cb-1", "identifiers": [{"kind": "loyalty_card", "value": "CARD-1"}],
                                "locale": "it-IT"}])
    assert again["results"][0]["status"] == "updated"


def test_a_customer_batch_is_refused_whole_when_too_large_and_needs_app_backend(rec_client, geo_http):
    one = {"customer_id": "cz-1"}
    assert_problem(rec_client.post("/v1/customers:batch", headers=ADMIN, json={"customers": [one] * 1001}), 422,
                   "1,001", "1,000")
    assert_problem(rec_client.post("/v1/customers:batch", headers=ADMIN, json={"customers": []}), 422, "customers")
    assert_problem(rec_client.post("/v1/customers:batch", headers=ADMIN, json={"nope": []}), 422, "customers")
    for roles in (("operator",), ("support",), ("analyst",)):
        assert_problem(rec_client.post("/v1/customers:batch", headers=make_key(geo_http, *roles),
                                       json={"customers": [one]}), 403, "app_backend", code="forbidden_role")
    assert batch(rec_client, [one], headers=make_key(geo_http, "app_backend"))["created"] == 1


def test_a_merge_keeps_the_survivors_attributes_and_fills_the_rest(rec_client):
    batch(rec_client, [{"customer_id": "m-a", "identifiers": [{"kind": "cookie", "value": "ck-a"}], "locale": "it"},
                       {"customer_id": "m-b", "identifiers": [{"kind": "cookie", "value": "ck-b"}], "locale": "en-GB",
                        "country": "GB"}])
    r = rec_client.post("/v1/customers/m-a/identifiers", headers=ADMIN,
                        json={"kind": "cookie", "value": "ck-b", "verified": True})
    assert r.status_code == 201 and r.json()["merged"] == ["m-b"], r.text
    profile = rec_client.get("/v1/customers/m-b", headers=ADMIN).json()
    assert (profile["customer_id"], profile["locale"], profile["country"]) == ("m-a", "it", "GB")


def test_erasure_removes_the_attributes(rec_client, redis_sync):
    batch(rec_client, [{"customer_id": "er-1", "locale": "it-IT", "country": "IT"}])
    key = CustomerKeys("er-1", 16).attributes
    assert redis_sync.hgetall(key)[b"locale"] == b"it-IT"
    assert rec_client.delete("/v1/customers/er-1", headers=ADMIN).status_code == 200
    assert not redis_sync.exists(key)


# --- `vicino customers import`, against served processes ------------------------------------

CSV = """customer_id,email,phone,loyalty_card,consent_location,consent_marketing,consent_personalisation,locale,country
imp-1,imp1@example.it,+39 333 1111111,L-1,yes,true,1,it-IT,IT
imp-2,,,L-2,,no,,en,GB
imp-3,,,L-3,,,,klingon-XX,
imp-4,,,,,perhaps,,,
imp-5,,,L-1,,,,,
,,,L-6,,,,,
imp-7,imp7@example.it,,,0,0,0,,
imp-8,,,L-OLD,,,,,
"""


@pytest.fixture
def served_recommender(redis_url, geo_url, tmp_path):
    with served_service("recommender", redis_url, tmp_path, env={"VICINO_GEO_URL": geo_url,
                                                                 "VICINO_HISTORY_DIR": str(tmp_path / "history")}) as url:
        yield url


def test_the_cli_imports_a_csv_and_reports_every_rejected_row(served_recommender, geo_http, tmp_path):
    with httpx.Client(base_url=served_recommender, headers=ADMIN, timeout=30) as rec:
        batch(rec, [{"customer_id": "someone-else", "identifiers": [{"kind": "loyalty_card", "value": "L-OLD"}]}])
    path = tmp_path / "crm.csv"
    path.write_text(CSV)
    rejects = tmp_path / "rejects.csv"
    run = subprocess.run([sys.executable, "-m", "vicino.services.cli", "customers", "import", str(path),
                          "--url", served_recommender, "--token", ADMIN_TOKEN, "--batch", "3",
                          "--rejects", str(rejects)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "8 rows: 3 created, 0 updated, 5 rejected" in run.stdout, run.stdout
    lines = rejects.read_text().splitlines()
    assert lines[0] == "line,customer_id,reason"
    by_line = {int(x.split(",")[0]): x for x in lines[1:]}
    assert sorted(by_line) == [4, 5, 6, 7, 9]
    assert "locale:" in by_line[4] and "klingon-XX" in by_line[4]
    assert "consent_marketing" in by_line[5] and "perhaps" in by_line[5]
    # the first row of an identifier wins, whatever order the batches in flight arrive in
    assert "loyalty_card: the same loyalty_card as line 2 (imp-1)" in by_line[6]
    assert "customer_id is empty" in by_line[7]
    assert "loyalty_card: this loyalty_card is linked to another customer; not merged" in by_line[9]
    assert "line 6 (imp-5): loyalty_card:" in run.stdout
    with httpx.Client(base_url=served_recommender, headers=ADMIN, timeout=30) as rec:
        assert resolve(rec, "loyalty_card", "L-1") == "imp-1"
        assert resolve(rec, "phone", "+393331111111") == "imp-1"
        assert resolve(rec, "loyalty_card", "L-3") is None
        profile = rec.get("/v1/customers/imp-2").json()
        assert (profile["locale"], profile["country"]) == ("en", "GB")
    consent = geo_http.get("/v1/customers/imp-1/consent").json()
    assert (consent["location"], consent["marketing"], consent["personalisation"]) == (True, True, True)
    assert consent["history"][0]["source"] == "customer-batch"
    two = geo_http.get("/v1/customers/imp-2/consent").json()
    assert (two["marketing"], len(two["history"])) == (False, 1)


def test_the_cli_refuses_unknown_columns_before_sending_anything(served_recommender, tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("customer_id,email,favourite_colour,shoe_size\nu-1,u1@example.it,blue,42\n")
    run = subprocess.run([sys.executable, "-m", "vicino.services.cli", "customers", "import", str(path),
                          "--url", served_recommender, "--token", ADMIN_TOKEN],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "favourite_colour, shoe_size" in run.stderr and "nothing was sent" in run.stderr
    with httpx.Client(base_url=served_recommender, headers=ADMIN, timeout=30) as rec:
        assert rec.get("/v1/customers/u-1").status_code == 404


def test_the_import_reads_parquet_alike(served_recommender, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "crm.parquet"
    pq.write_table(pa.table({"customer_id": ["pq-1", "pq-2", None], "loyalty_card": ["P-1", None, "P-3"],
                             "consent_marketing": [True, None, False], "locale": ["de-CH", "fr", None]}), path)
    read = read_customers(path)
    assert [r.customer for r in read.rows] == [
        {"customer_id": "pq-1", "identifiers": [{"kind": "loyalty_card", "value": "P-1"}],
         "consent": {"marketing": True}, "locale": "de-CH"},
        {"customer_id": "pq-2", "locale": "fr"}]
    assert read.unreadable == [(3, "", "customer_id is empty")] and read.where_name == "row"

    async def go():
        async with httpx.AsyncClient(base_url=served_recommender, headers=ADMIN, timeout=60) as client:
            return await import_customers(client, read.rows, batch=1)

    report = asyncio.run(go())
    assert (report.created, report.updated, report.rejected) == (2, 0, [])
