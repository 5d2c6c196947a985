"""Push deliveries: the push gateway's record of what became of each push job, and the receipts
stream that the KPIs (issue 6) read.

Writer: the push gateway only. Readers: the recommender's erasure (it deletes a customer's
deliveries by these key names), the KPIs (receipts). Every key lives in the customer's `{cs:NNN}`
tag, beside the shard's push-job stream, so that "record the outcome, log the receipt,
dead-letter the job" is one atomic script.

Keys (customer part `vicino:{cs:NNN}:customer:<id>:`):
- `deliveries`        hash delivery_id -> the delivery record (JSON, with its status history)
- `deliveries:index`  zset delivery_id -> created_at (newest first listing; retention trimming)
Per shard: `vicino:{cs:NNN}:push:delivery_owners` hash delivery_id -> customer_id (a delivery id
is all the app knows) and `…:delivery_owners:created` zset delivery_id -> created_at (entries past
the retention leave both, whether or not their customer comes back), `vicino:{cs:NNN}:push:receipts:v1` stream of `DeliveryReceiptV1`, and
`vicino:{cs:NNN}:push:jobs:v1:dead` the jobs that can never be sent.
"""
from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .interactions import customer_shard, customer_shard_tag
from .push_jobs import push_jobs_stream_key

SCHEMA = "vicino.delivery_receipt"
SCHEMA_VERSION = 1

STATUSES = ("queued", "sent", "failed", "expired", "token_invalid", "suppressed", "opened")
ReceiptStatus = Literal["queued", "sent", "failed", "expired", "token_invalid", "suppressed", "opened"]


def delivery_id_for(idempotency_key: str, shard: int) -> str:
    """One delivery per idempotency key (customer:store:visit), whichever worker sees the job
    first, so the id is derived from the key. The shard is in the id so that any replica finds
    the delivery's owner; the rest is a digest, so the id reveals no customer, store or visit."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
    return f"dlv{shard:03d}{digest}"


def shard_of_delivery(delivery_id: str) -> int | None:
    if len(delivery_id) != 30 or not delivery_id.startswith("dlv") or not delivery_id[3:6].isdigit():
        return None
    return int(delivery_id[3:6])


def customer_deliveries_key(customer_id: str, shards: int) -> str:
    return f"vicino:{customer_shard_tag(customer_shard(customer_id, shards))}:customer:{customer_id}:deliveries"


def customer_deliveries_index_key(customer_id: str, shards: int) -> str:
    return customer_deliveries_key(customer_id, shards) + ":index"


def delivery_owners_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:push:delivery_owners"


def delivery_owners_created_key(shard: int) -> str:
    """zset delivery_id -> created_at of the owners hash above: what expires its entries."""
    return delivery_owners_key(shard) + ":created"


def receipts_stream_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:push:receipts:v{SCHEMA_VERSION}"


def dead_jobs_stream_key(shard: int) -> str:
    return push_jobs_stream_key(shard) + ":dead"  # = streams.dead_letter_of


class DeliveryReceiptV1(BaseModel):
    """One change of a delivery's status (and the app's open of it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.delivery_receipt"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    delivery_id: str
    customer_id: str
    device_id: str
    store_id: str
    offer_id: str
    visit_id: str
    decision_id: str
    campaign_id: str | None = Field(None, description="the campaign of the push job")
    test: bool = Field(False, description="a campaign's test send: never counted in the KPIs")
    status: ReceiptStatus
    reason: str | None = Field(None, description="why, for every status but queued, sent and opened")
    provider: str | None = None
    attempts: int = 0
    ts: float = Field(description="when the status changed, epoch s")

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "data": self.model_dump_json(by_alias=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "DeliveryReceiptV1":
        return cls.model_validate_json(fields.get("data") or fields.get(b"data"))
