"""The push-job consumer's handler: a stream entry → a push job → its delivery. A malformed
entry is dead-lettered with the reason (never a crashed worker); an erased customer's job leaves
no trace."""
from __future__ import annotations

from pydantic import ValidationError

from services.kernel.contracts.push_jobs import PushJobV1
from services.kernel.stream_consumer import PoisonEntry

from .use_cases.deliver import PushDelivery


class PushJobHandler:
    def __init__(self, delivery: PushDelivery) -> None:
        self.delivery = delivery

    async def handle(self, stream: str, entry_id: str, fields: dict) -> None:
        try:
            job = PushJobV1.from_stream_fields(fields)
        except (ValidationError, TypeError, ValueError) as e:
            raise PoisonEntry(f"not a push job v1: {str(e)[:300]}") from None
        await self.delivery.handle(job)
