"""A store as the geo service sees it: a fence plus the switches that allow visits to start."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from opening_hours import OpeningHours

from .fences import Fence


@dataclass(slots=True, eq=False)
class Store:
    store_id: str
    fence: Fence
    name: str = ""
    brand: str = ""
    dwell_s: float | None = None
    opening_hours: str | None = None
    timezone: str = "Europe/Rome"
    enabled: bool = True
    feature: dict = field(default_factory=dict, repr=False)  # the normalised GeoJSON as stored
    _hours: OpeningHours | None = field(default=None, repr=False)
    _tz: ZoneInfo | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)
        self._hours = OpeningHours(self.opening_hours) if self.opening_hours else None

    def is_open(self, ts: float) -> bool:
        if self._hours is None:
            return True
        local = datetime.fromtimestamp(ts, self._tz).replace(tzinfo=None)
        return bool(self._hours.is_open(local))

    def accepts_visits(self, ts: float) -> bool:
        """Disabled or closed stores start no visit and fire no dwell (exits still happen)."""
        return self.enabled and self.is_open(ts)
