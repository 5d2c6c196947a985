"""The recommender's queue of push jobs outside any decision (a campaign's test send), against a
real Redis and the real push gateway worker sending to the local FCM stand-in: the job is
delivered, what FCM receives names the campaign and the test, and the receipts say `test: true`
with the campaign. Plus the stream's last-resort cap, counted like a decision's."""
from __future__ import annotations

import asyncio
import time

from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key
from vicino.services.kernel.contracts.streams import trimmed_unconsumed_key
from vicino.services.kernel.ids import new_id
from vicino.services.recommender.adapters.push_jobs import PushJobQueue
from vicino.services.runtime.redis_client import open_async
from tests.integration.test_push_gateway import receipts, register, settled
from tests.integration.test_push_providers import gateway
from tests.push_provider_fixtures import fcm, fcm_server, material  # noqa: F401
from testbed.push_servers import fcm_like

SHARDS = 16  # the gateway's and the recommender's default customer_shards


def test_job(customer_id: str, device_id: str, token: str, campaign_id: str = "spring-it") -> PushJobV1:
    visit_id = new_id("tst")  # a test send's own id: no visit of the customer
    now = time.time()
    return PushJobV1(job_id=new_id("job"), idempotency_key=idempotency_key(customer_id, "store-1", visit_id),
                     customer_id=customer_id, device_id=device_id, platform="android", push_token=token,
                     title="[TEST] Caffè a 3,40 €", body="Solo oggi da Vicino", deep_link="vicino://offers/offer-1",
                     image_url="https://cdn.example.com/offer-1.jpg",
                     data=PushDataV1(offer_id="offer-1", store_id="store-1", visit_id=visit_id,
                                     decision_id=new_id("test"), campaign_id=campaign_id, test=True),
                     collapse_key=visit_id, created_at=now, expires_at=now + 300)


test_job.__test__ = False  # a helper


def queue(redis_url: str, jobs: list[PushJobV1], **kw) -> list[str]:
    async def main():
        client = open_async(redis_url)
        try:
            q = PushJobQueue(client, SHARDS, **kw)
            return [await q.queue(j) for j in jobs]
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_queued_test_send_reaches_fcm_through_the_gateway_marked_as_a_test(redis_url, redis_sync, geo_http,
                                                                             geo_url, material, fcm):
    token = fcm_like.registration_token(31)
    register(geo_http, "tq-dev", "tq-cust", platform="android", push_token=token)
    job = test_job("tq-cust", "tq-dev", token)
    with gateway(redis_url, geo_url, material, fcm=fcm) as client:
        (entry,) = queue(redis_url, [job])
        d = settled(client, job)
    assert entry and (d["status"], d["provider"], d["campaign_id"], d["test"]) == ("sent", "fcm", "spring-it", True)
    (sent,) = [r for r in fcm.received if r.path.endswith("messages:send")]
    m = sent.json["message"]
    assert m["data"]["campaign_id"] == "spring-it" and m["data"]["test"] == "1"
    assert m["data"]["deep_link"] == "vicino://offers/offer-1"
    assert m["notification"] == {"title": "[TEST] Caffè a 3,40 €", "body": "Solo oggi da Vicino",
                                 "image": "https://cdn.example.com/offer-1.jpg"}
    got = [(r.status, r.campaign_id, r.test) for r in receipts(redis_sync, "tq-cust")]
    assert got == [("queued", "spring-it", True), ("sent", "spring-it", True)]


def test_the_stream_cap_trims_and_counts_what_it_trims(redis_url, redis_sync):
    jobs = [test_job("cap-cust", "cap-dev", "tok") for _ in range(400)]
    ids = queue(redis_url, jobs, maxlen=100)
    stream = PushJobQueue(redis_sync, SHARDS).stream_of("cap-cust")
    assert len(set(ids)) == 400
    length = redis_sync.xlen(stream)
    trimmed = int(redis_sync.get(trimmed_unconsumed_key(stream)) or 0)
    assert 100 <= length < 400 and trimmed == 400 - length  # approximate trimming: whole nodes
    last = PushJobV1.from_stream_fields(redis_sync.xrevrange(stream, count=1)[0][1])
    assert last == jobs[-1]
