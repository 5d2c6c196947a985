"""A campaign's test send never moves a KPI figure: its receipts (`test: true`, as the push gateway
writes them) sit in the same receipt streams as the customers' pushes, and the KPI reader leaves
them out. The known history of test_kpis_api is recorded, the figures read, then test receipts
are added that would count if read (a test push sent and opened under a decision that was sent
and not opened, and one under no decision), and every figure must be the same."""
from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1, receipts_stream_key
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.recommender.adapters.kpi_sources import KpiSources
from vicino.services.recommender.app import create_app
from vicino.services.runtime.redis_client import open_async
from tests.integration.test_kpis_api import ADMIN, D, FROM, TO, H, T, seed_history


def test_receipt(n: int, customer: str, decision_id: str, status: str, at: float) -> DeliveryReceiptV1:
    return DeliveryReceiptV1(delivery_id=f"dl-test-{n}", customer_id=customer, device_id=f"{customer}-phone",
                             store_id="s2", offer_id="o1", visit_id=f"v-test-{n}", decision_id=decision_id,
                             campaign_id="spring", test=True, status=status, ts=at)


test_receipt.__test__ = False  # a helper, not a test


@pytest.fixture
def seeded(rec_settings, redis_sync):
    settings = rec_settings.model_copy(update={"attribution_window_h": 24.0})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        seed_history(redis_sync, settings.customer_shards, settings.history_dir, c)
        yield c, settings


def kpis(c) -> dict:
    r = c.get("/v1/kpis", headers=ADMIN, params={"from": FROM, "to": TO})
    assert r.status_code == 200, r.text
    return r.json()


def test_test_sends_receipts_move_no_kpi_figure(seeded, redis_sync, redis_url):
    c, settings = seeded
    before = kpis(c)
    assert before["deliveries"]["sent"] > 0  # the history has real deliveries to compare with
    sent_not_opened = D[1]  # d2: sent, never opened
    extra = [test_receipt(1, sent_not_opened.customer_id, sent_not_opened.decision_id, "queued", T + H + 5),
             test_receipt(1, sent_not_opened.customer_id, sent_not_opened.decision_id, "sent", T + H + 6),
             test_receipt(1, sent_not_opened.customer_id, sent_not_opened.decision_id, "opened", T + H + 60),
             test_receipt(2, "t9", "test-no-decision", "sent", T + 2 * H),
             test_receipt(3, D[0].customer_id, D[0].decision_id, "token_invalid", T + 3 * H)]
    for i, r in enumerate(extra):
        redis_sync.xadd(receipts_stream_key(customer_shard(r.customer_id, settings.customer_shards)),
                        r.to_stream_fields(), id=f"{int(r.ts * 1000)}-{100 + i}")

    async def read():
        client = open_async(redis_url)
        try:
            sources = KpiSources(client, settings.customer_shards, settings.history_dir, 3600.0)
            return await sources.receipts(T - 10 * H, T + 14 * H)
        finally:
            await client.aclose()

    read_back = asyncio.run(read())
    assert read_back and not any(r.test for r in read_back)
    assert not {r.delivery_id for r in read_back} & {r.delivery_id for r in extra}
    assert kpis(c) == before
