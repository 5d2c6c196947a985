"""The push-job consumer's handler: a stream entry → a push job → its delivery. A malformed
entry is dead-lettered with the reason (never a crashed worker); an erased customer's job leaves
no trace."""
from __future__ import annotations

from vicino.services.kernel.contracts.push_jobs import PushJobV1
from vicino.services.runtime.stream_consumer import decode_entry

from .use_cases.deliver import PushDelivery


class PushJobHandler:
    def __init__(self, delivery: PushDelivery) -> None:
        self.delivery = delivery

    async def handle(self, stream: str, entry_id: str, fields: dict) -> None:
        job = decode_entry(PushJobV1.from_stream_fields, fields, "push job v1")
        await self.delivery.handle(job)
