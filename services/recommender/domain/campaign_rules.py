"""Campaign switches: rules marketing turns on and off without a deploy, read at eligibility time.

The document is small and replaced whole (`PUT /v1/rules`); every change bumps its revision so
that two people editing it at once cannot silently overwrite each other (`If-Match`). Pure: the
model and its defaults, which switch nothing off.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from vicino.services.kernel.ids import CLIENT_ID_PATTERN

StoreId = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
Brand = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
MAX_PAUSED = 100_000


def _sorted_unique(values: list[str]) -> list[str]:
    return sorted(set(values))


class CampaignRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    paused_store_ids: Annotated[list[StoreId], Field(max_length=MAX_PAUSED), AfterValidator(_sorted_unique)] = \
        Field(default_factory=list, description="no offer is shown at these stores")
    paused_brands: Annotated[list[Brand], Field(max_length=1000), AfterValidator(_sorted_unique)] = \
        Field(default_factory=list, description="no offer is shown at stores of these brands (case-insensitive)")
    suppress_closed_stores: bool = Field(False, description="no offer at a store that is closed now, by its "
                                         "opening_hours in its own time zone")
    suppress_low_stock: bool = Field(False, description="no click_and_collect or reservation offer at a store "
                                     "holding fewer than low_stock_threshold units of any of its items")
    low_stock_threshold: int = Field(3, ge=1, le=1_000_000)

    _paused_stores: frozenset[str] = PrivateAttr(frozenset())
    _paused_brands: frozenset[str] = PrivateAttr(frozenset())

    def model_post_init(self, _context) -> None:
        self._paused_stores = frozenset(self.paused_store_ids)
        self._paused_brands = frozenset(b.casefold() for b in self.paused_brands)

    def store_paused(self, store_id: str) -> bool:
        return store_id in self._paused_stores

    def brand_paused(self, brand: str) -> bool:
        return brand.casefold() in self._paused_brands


NO_RULES = CampaignRules()
