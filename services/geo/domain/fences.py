"""Geofences: a circle (centre + radius) or a polygonal area, with exact tests in metres.

`contains` decides entering; `distance_outside_m` decides leaving (the exit buffer), and
`distance_many_m` is the vectorised form the H3 covering uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .geodesy import LocalPlane, haversine_m, haversine_many_m


@dataclass(frozen=True, slots=True, eq=False)
class CircleFence:
    lat: float
    lon: float
    radius_m: float

    kind = "circle"

    @property
    def centre(self) -> tuple[float, float]:
        return self.lat, self.lon

    @property
    def bounding_radius_m(self) -> float:
        return self.radius_m

    def contains(self, lat: float, lon: float) -> bool:
        return haversine_m(self.lat, self.lon, lat, lon) <= self.radius_m

    def distance_outside_m(self, lat: float, lon: float) -> float:
        """Metres from the fence edge; zero or negative inside."""
        return haversine_m(self.lat, self.lon, lat, lon) - self.radius_m

    def distance_many_m(self, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
        return np.maximum(haversine_many_m(self.lat, self.lon, lats, lons) - self.radius_m, 0.0)

    def local_shape(self) -> tuple[LocalPlane, BaseGeometry]:
        plane = LocalPlane(self.lat, self.lon)
        # circumscribed 128-gon: it contains the whole circle, so overlap tests never miss
        return plane, shapely.buffer(shapely.Point(0.0, 0.0), self.radius_m / math.cos(math.pi / 128), quad_segs=32)


@dataclass(frozen=True, slots=True, eq=False)
class PolygonFence:
    """A Polygon or MultiPolygon (holes allowed) held in metres on a plane around `plane`'s origin."""

    plane: LocalPlane
    shape: BaseGeometry  # in local metres, prepared
    centre: tuple[float, float]
    bounding_radius_m: float
    geojson_geometry: dict = field(repr=False)

    kind = "polygon"

    def contains(self, lat: float, lon: float) -> bool:
        x, y = self.plane.xy(lat, lon)
        # intersects, not contains: a fix exactly on the boundary counts as inside
        return shapely.intersects_xy(self.shape, x, y)

    def distance_outside_m(self, lat: float, lon: float) -> float:
        x, y = self.plane.xy(lat, lon)
        if shapely.intersects_xy(self.shape, x, y):
            return 0.0
        return float(shapely.distance(self.shape, shapely.Point(x, y)))

    def distance_many_m(self, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
        xs, ys = self.plane.xy_many(lats, lons)
        return shapely.distance(self.shape, shapely.points(xs, ys))

    def local_shape(self) -> tuple[LocalPlane, BaseGeometry]:
        return self.plane, self.shape


Fence = CircleFence | PolygonFence
