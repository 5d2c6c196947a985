"""An offer of the catalogue: what it sells, at which one price, when, where and through which
channels and fulfilment. Pure: validation and the derived canonical price, no I/O.

One price for every channel: an offer carries `price` and an optional lower `promo_price`, and
its canonical price (the promo price when there is one) is what every channel shows. Channels
only decide whether the offer is shown at all, never what it costs.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationInfo,
                      WithJsonSchema, field_validator)

from vicino.services.kernel.contracts.interactions import Channel
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import INSTANT_OUT_SCHEMA, InstantIn

FULFILMENTS = ("in_store", "click_and_collect", "reservation", "online")
Fulfilment = Literal["in_store", "click_and_collect", "reservation", "online"]
# Fields the service computes and shows on reads: a client may send a record it read back (they
# are dropped) but can never set them.
READ_ONLY_FIELDS = ("canonical_price", "updated_at", "available_on_channel")
MAX_PRICE = 1e9
MAX_ITEMS_PER_OFFER = 100
MAX_STORES_PER_OFFER = 100_000

ClientId = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
Brand = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


# Strict numbers: true or "9.99" as a price is a client mistake, not something to coerce.
Price = Annotated[float, Field(strict=True, gt=0, le=MAX_PRICE, allow_inf_nan=False)]


def _unique(values: list) -> list:
    """A repeated id means nothing more than one; keep the first occurrence's order."""
    return list(dict.fromkeys(values))


def _ids(max_length: int):
    return Annotated[list[ClientId], Field(min_length=1, max_length=max_length), AfterValidator(_unique)]


Brands = Annotated[list[Brand], Field(min_length=1, max_length=1000), AfterValidator(_unique)]
Channels = Annotated[list[Channel], Field(min_length=1), AfterValidator(_unique)]


class Offer(BaseModel):
    """One offer as stored and served. `store_ids`, `brands` and `channels` left null mean
    "every store", "any brand", "every channel"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer_id: ClientId
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    body: Annotated[str, StringConstraints(max_length=2000)] = ""
    item_ids: _ids(MAX_ITEMS_PER_OFFER)
    category: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    price: Price = Field(description="regular unit price")
    promo_price: Price | None = Field(None, description="the offer's price; at most `price`")
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(description="ISO 4217 code")
    valid_from: InstantIn  # RFC 3339 with an offset, or epoch seconds; stored as epoch seconds
    valid_to: InstantIn = Field(description="exclusive end; RFC 3339 with an offset, or epoch seconds")
    store_ids: _ids(MAX_STORES_PER_OFFER) | None = None
    brands: Brands | None = Field(None, description="store brands the offer is limited to")
    min_stock: int | None = Field(None, strict=True, ge=1, le=1_000_000_000, description="units of each item a store "
                                  "must hold for the offer to be shown there")
    channels: Channels | None = None
    priority: int = Field(0, strict=True, ge=-1000, le=1000, description="higher first")
    fulfilment: Fulfilment = "in_store"
    # epoch seconds inside; documented as the API shows it (RFC 3339), and dropped from a body that sends it back
    updated_at: Annotated[float | None, WithJsonSchema({"anyOf": [INSTANT_OUT_SCHEMA, {"type": "null"}],
                                                        "readOnly": True, "description": "set by the service"})] = None

    # Lookup sets for the eligibility checks, built once per offer rather than once per store.
    _stores: frozenset[str] | None = PrivateAttr(None)
    _brands: frozenset[str] | None = PrivateAttr(None)
    _channels: frozenset[str] | None = PrivateAttr(None)

    # Field validators rather than a model validator so that the error names the field; each
    # runs after the field it compares with (declaration order), which is absent when invalid.
    @field_validator("promo_price")
    @classmethod
    def _promo_not_above_price(cls, v: float | None, info: ValidationInfo) -> float | None:
        price = info.data.get("price")
        if v is not None and price is not None and v > price:
            raise ValueError(f"promo_price {v:g} is above price {price:g}")
        return v

    @field_validator("valid_to")
    @classmethod
    def _ends_after_start(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("valid_from")
        if start is not None and v <= start:
            raise ValueError("valid_to must be after valid_from")
        return v

    def model_post_init(self, _context: Any) -> None:
        self._stores = None if self.store_ids is None else frozenset(self.store_ids)
        self._brands = None if self.brands is None else frozenset(b.casefold() for b in self.brands)
        self._channels = None if self.channels is None else frozenset(self.channels)

    @property
    def canonical_price(self) -> float:
        """The one price of this offer, whatever the channel."""
        return self.price if self.promo_price is None else self.promo_price

    def on_channel(self, channel: str) -> bool:
        return self._channels is None or channel in self._channels

    def covers_store(self, store_id: str) -> bool:
        return self._stores is None or store_id in self._stores

    def covers_brand(self, brand: str) -> bool:
        return self._brands is None or brand.casefold() in self._brands

    def active_at(self, ts: float) -> bool:
        return self.valid_from <= ts < self.valid_to

    def to_public(self) -> dict:
        """The stored record plus what is derived from it (times in epoch seconds: the API formats them)."""
        return {**self.model_dump(mode="json"), "canonical_price": self.canonical_price}


def ranking_key(offer: Offer) -> tuple:
    """Higher priority first, then the cheaper canonical price, then the id (a stable order)."""
    return (-offer.priority, offer.canonical_price, offer.offer_id)
