"""An opened push: recorded on the delivery (once), then in the customer's history as an
`offer_open` interaction on the push channel, which closes the loop for the model and the KPIs.
The interaction's event id is derived from the delivery, so a retried open is counted once.
A campaign's test send is opened on the delivery only: its offer was never decided for that
customer, so it stays out of their history (and out of the model and the KPIs)."""
from __future__ import annotations

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.problems import Conflict, NotFound

from ..adapters.delivery_repository import DeliveryRepository
from ..adapters.service_clients import RecommenderInteractions
from ..domain.delivery import DeliveryRecord, opened

MAX_ROUNDS = 5


class DeliveryOpens:
    def __init__(self, repo: DeliveryRepository, recommender: RecommenderInteractions, clock: Clock) -> None:
        self.repo = repo
        self.recommender = recommender
        self.clock = clock

    async def open(self, rec: DeliveryRecord) -> DeliveryRecord:
        for _ in range(MAX_ROUNDS):
            if rec.status != "sent":
                raise Conflict(f"delivery {rec.delivery_id} was not sent (status {rec.status}); it cannot be opened")
            if rec.opened_at is None:
                now = self.clock.now()
                after = opened(rec, now)
                out = await self.repo.save(rec, after, now, receipt="opened")
                if out == "gone":
                    raise NotFound(f"delivery {rec.delivery_id} is gone")
                if out == "stale":
                    rec = await self.repo.get(rec.delivery_id) or rec
                    continue
                rec = after
            if rec.test:
                return rec
            # recorded first, then told to the recommender: a 503 here is retried by the app, and
            # the event id makes the retry a duplicate, not a second open
            await self.recommender.record({
                "event_id": f"open-{rec.delivery_id}", "customer_id": rec.customer_id, "channel": "push",
                "type": "offer_open", "offer_id": rec.offer_id, "store_id": rec.store_id, "ts": rec.opened_at})
            return rec
        raise Conflict(f"delivery {rec.delivery_id} kept changing; retry")
