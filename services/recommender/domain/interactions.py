"""What an incoming interaction must look like, and why one is refused. Pure: no I/O.

Each item of a batch is judged on its own, so one bad item never costs the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vicino.services.kernel.contracts.interactions import (ITEM_TYPES, OFFER_TYPES, SUPPORT_REPLY_CHANNELS, Channel,
                                                          InteractionType)
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import InstantIn

from .identity import IdentifierError, normalise_identifier

_TS_MIN = datetime(1990, 1, 1).timestamp()


class IdentifierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    value: str


class InteractionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=CLIENT_ID_PATTERN, description="the sender's id for this event; a retry "
                          "with the same id is recognised and not counted twice")
    customer_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN)
    identifier: IdentifierIn | None = Field(None, description="any identifier linked to the customer, "
                                            "instead of customer_id")
    channel: Channel
    type: InteractionType
    item_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN)
    offer_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN)
    store_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN)
    quantity: float | None = Field(None, gt=0, le=1e6, description="positive; a return is type=return")
    value: float | None = Field(None, ge=0, le=1e9)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    country: str | None = Field(None, max_length=64)
    score: int | None = Field(None, ge=0, le=10, strict=True, description="a survey's score, an integer 0-10 "
                              "(9-10 promoter, 7-8 passive, 0-6 detractor): required for a survey, refused otherwise")
    reply_to: str | None = Field(None, pattern=CLIENT_ID_PATTERN, description="the event_id of the customer's "
                                 "support_contact that a support_reply answers: required for a support_reply, "
                                 "refused otherwise")
    ts: InstantIn = Field(description="when it happened: RFC 3339 with an offset, or epoch seconds")


@dataclass(frozen=True, slots=True)
class Draft:
    """A valid interaction, not yet resolved to its customer."""
    index: int
    event_id: str
    customer_id: str | None
    identifier: str | None     # normalised "kind:value"
    fields: dict               # channel, type, item_id, ... ts


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    event_id: str | None
    reason: str
    detail: str

    def as_dict(self) -> dict:
        return {"index": self.index, "event_id": self.event_id, "reason": self.reason, "detail": self.detail}


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "item"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def judge(index: int, raw: object, now: float, max_future_s: float) -> Draft | Rejection:
    """Validates one item of a batch."""
    event_id = raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
    if not isinstance(raw, dict):
        return Rejection(index, None, "invalid", "an interaction is a JSON object")
    try:
        item = InteractionIn.model_validate(raw)
    except ValidationError as e:
        return Rejection(index, event_id, "invalid", _describe(e))
    if (item.customer_id is None) == (item.identifier is None):
        return Rejection(index, event_id, "missing_customer" if item.customer_id is None else "ambiguous_customer",
                         "name the customer with exactly one of customer_id or identifier")
    identifier = None
    if item.identifier is not None:
        try:
            identifier = normalise_identifier(item.identifier.kind, item.identifier.value)
        except IdentifierError as e:
            return Rejection(index, event_id, "invalid", f"identifier: {e}")
    if item.type in ITEM_TYPES and item.item_id is None:
        return Rejection(index, event_id, "missing_item_id", f"a {item.type} interaction names its item_id")
    if item.type in OFFER_TYPES and item.offer_id is None:
        return Rejection(index, event_id, "missing_offer_id", f"an {item.type} interaction names its offer_id")
    if item.type == "survey" and item.score is None:
        return Rejection(index, event_id, "missing_score", "a survey interaction carries its score (an integer 0-10)")
    if item.type != "survey" and item.score is not None:
        return Rejection(index, event_id, "invalid", f"score: only a survey carries a score, not a {item.type}")
    if item.type == "support_reply" and item.reply_to is None:
        return Rejection(index, event_id, "missing_reply_to",
                         "a support_reply names the event_id of the support_contact it answers in reply_to")
    if item.type != "support_reply" and item.reply_to is not None:
        return Rejection(index, event_id, "invalid", f"reply_to: only a support_reply answers a contact, not a "
                                                     f"{item.type}")
    if item.type == "support_reply" and item.channel not in SUPPORT_REPLY_CHANNELS:
        return Rejection(index, event_id, "invalid", f"channel: a support_reply is given on "
                                                     f"{', '.join(SUPPORT_REPLY_CHANNELS)}, not {item.channel}")
    ts = float(item.ts)
    if ts > now + max_future_s:
        return Rejection(index, event_id, "ts_in_future", f"ts is {ts - now:.0f} s ahead of the server clock")
    if ts < _TS_MIN:
        return Rejection(index, event_id, "invalid", "ts is before 1990: epoch milliseconds sent as seconds?")
    fields = item.model_dump(exclude={"event_id", "customer_id", "identifier"})
    fields["ts"] = ts
    return Draft(index, item.event_id, item.customer_id, identifier, fields)
