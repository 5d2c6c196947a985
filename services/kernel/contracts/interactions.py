"""Customer interactions across channels, as written by the recommender's data layer to its
interaction streams and exported from there to the Parquet log that training reads.

A customer's hot history, deduplication state and their shard's interaction stream share one
hash tag, so that "first time we see this event id → keep it and log it" is one atomic script:
an acknowledged interaction is always in the stream, and a retried one never twice.
"""
from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "vicino.interaction"
SCHEMA_VERSION = 1

CHANNELS = ("web", "app", "store", "email", "call_center", "social", "push")
# New types go at the end: training encodes a type as its index here.
TYPES = ("view", "add_to_cart", "purchase", "return", "reservation", "click_and_collect", "offer_open",
         "offer_redeem", "support_contact", "survey", "support_reply")
Channel = Literal["web", "app", "store", "email", "call_center", "social", "push"]
InteractionType = Literal["view", "add_to_cart", "purchase", "return", "reservation", "click_and_collect",
                          "offer_open", "offer_redeem", "support_contact", "survey", "support_reply"]
# Which interaction types are about an item, and which about an offer.
ITEM_TYPES = frozenset({"view", "add_to_cart", "purchase", "return", "reservation", "click_and_collect"})
OFFER_TYPES = frozenset({"offer_open", "offer_redeem"})
# A `survey` is a 0-10 answer ("how likely are you to recommend us?") that the retailer posts; a
# `support_reply` is the care channel's answer to the `support_contact` named by `reply_to`,
# given on one of these channels.
SURVEY_SCORES = range(0, 11)
SUPPORT_REPLY_CHANNELS = ("call_center", "email", "social", "app")


def customer_shard(customer_id: str, shards: int) -> int:
    return zlib.crc32(customer_id.encode()) % shards


def customer_shard_tag(shard: int) -> str:
    """Hash tag shared by a shard's customers' keys and the shard's interaction stream."""
    return f"{{cs:{shard:03d}}}"


def merged_into_key(customer_id: str, shards: int) -> str:
    """string: the customer this one was merged into (written by the recommender's identity
    merges; published: other services follow it to the surviving customer, never write it)."""
    return f"vicino:{customer_shard_tag(customer_shard(customer_id, shards))}:customer:{customer_id}:merged_into"


def interactions_stream_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:interactions:v{SCHEMA_VERSION}"


class InteractionV1(BaseModel):
    """One accepted interaction, resolved to its customer (the canonical id at ingestion)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.interaction"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    event_id: str
    customer_id: str
    channel: Channel
    type: InteractionType
    item_id: str | None = None
    offer_id: str | None = None
    store_id: str | None = None
    quantity: float | None = None
    value: float | None = None
    currency: str | None = None
    country: str | None = None
    score: int | None = Field(None, description="a survey's 0-10 score (survey only)")
    reply_to: str | None = Field(None, description="the event_id of the support_contact a support_reply answers "
                                 "(support_reply only)")
    ts: float = Field(description="when it happened, epoch seconds")
    received_at: float = Field(description="when Vicino accepted it, epoch seconds")

    def to_stream_fields(self) -> dict[str, str]:
        return {"kind": "interaction", "v": str(SCHEMA_VERSION), "data": self.model_dump_json(by_alias=True)}


class CustomerMergedV1(BaseModel):
    """Two customers turned out to be one person: `merged` is now an alias of `into`. Training
    applies these to the Parquet log, whose older rows still name the merged id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.customer_merged"] = Field("vicino.customer_merged", alias="schema")
    version: Literal[1] = 1
    merged: str
    into: str
    ts: float

    def to_stream_fields(self) -> dict[str, str]:
        return {"kind": "merge", "v": "1", "data": self.model_dump_json(by_alias=True)}


def parse_stream_entry(fields: dict) -> InteractionV1 | CustomerMergedV1:
    """An entry of an interaction stream, whatever its kind; raises ValueError on garbage."""
    g = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    kind = g.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "interaction":
        return InteractionV1.model_validate_json(g["data"])
    if kind == "merge":
        return CustomerMergedV1.model_validate_json(g["data"])
    raise ValueError(f"unknown interaction stream entry kind {kind!r}")
