"""Region sync: the regions a phone hands to its OS's region monitoring, for the point it sends.

The point is the phone's position: it is processed only with the customer's location consent
(the device's copy of it, as for a location report), and neither stored nor logged."""
from __future__ import annotations

from vicino.services.kernel.problems import Conflict

from ..adapters.device_repository import Registration
from ..domain.regions import FenceOutlines, RegionPlan, plan_regions
from .index_sync import IndexSync


class RegionSync:
    def __init__(self, sync: IndexSync, outlines: FenceOutlines | None = None) -> None:
        self.sync = sync
        self.outlines = outlines or FenceOutlines()

    def plan(self, reg: Registration, lat: float, lon: float, limit: int) -> RegionPlan:
        if not reg.location_consent:
            raise Conflict("the customer has not consented to location processing, and regions are computed from "
                           "the phone's position: ask for location consent (PUT /v1/customers/{customer_id}/consent) "
                           "first; nothing was processed")
        # Bounded work on the event loop: the index reads the stores near the point and measures
        # exactly only until `limit` + 1 answers are sure (see StoreIndex.nearby).
        return plan_regions(self.sync.index, self.outlines, lat, lon, limit)
