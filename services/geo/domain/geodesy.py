"""Distances on the sphere and a local metric plane around a fence's origin.

The plane is an affine map of (lon, lat) with the longitude difference wrapped to
[-180, 180), so fences that straddle the antimeridian stay in one piece, and point-in-polygon
answers equal the planar lon/lat answer (the map is affine). Valid for fences up to a few
tens of kilometres across and away from the poles (|lat| <= 85), which is what we accept.
"""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
MAX_ABS_LAT = 85.0

_rad = math.radians
_sin = math.sin
_cos = math.cos
_asin = math.asin
_sqrt = math.sqrt


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = _rad(lat1)
    p2 = _rad(lat2)
    s1 = _sin((p2 - p1) * 0.5)
    s2 = _sin(_rad(lon2 - lon1) * 0.5)
    h = s1 * s1 + _cos(p1) * _cos(p2) * s2 * s2
    return 2.0 * EARTH_RADIUS_M * _asin(_sqrt(min(1.0, h)))


def haversine_many_m(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    p1 = np.radians(lat)
    p2 = np.radians(lats)
    s1 = np.sin((p2 - p1) * 0.5)
    s2 = np.sin(np.radians(lons - lon) * 0.5)
    h = s1 * s1 + np.cos(p1) * np.cos(p2) * s2 * s2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, h)))


def wrap_lon_delta(d: float) -> float:
    return (d + 180.0) % 360.0 - 180.0


class LocalPlane:
    """Metres east/north of an origin; affine in (lon, lat) once the longitude is unwrapped."""

    __slots__ = ("lat0", "lon0", "kx")

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0 = lat0
        self.lon0 = lon0
        self.kx = math.cos(math.radians(lat0)) * M_PER_DEG

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return ((lon - self.lon0 + 180.0) % 360.0 - 180.0) * self.kx, (lat - self.lat0) * M_PER_DEG

    def xy_many(self, lats: np.ndarray, lons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dl = (np.asarray(lons) - self.lon0 + 180.0) % 360.0 - 180.0
        return dl * self.kx, (np.asarray(lats) - self.lat0) * M_PER_DEG

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        lon = self.lon0 + x / self.kx
        lon = (lon + 180.0) % 360.0 - 180.0
        return self.lat0 + y / M_PER_DEG, lon

    def latlon_many(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lons = (self.lon0 + np.asarray(xs) / self.kx + 180.0) % 360.0 - 180.0
        return self.lat0 + np.asarray(ys) / M_PER_DEG, lons


def equidistant_xy(lat0: float, lon0: float, lats: np.ndarray, lons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metres east/north on the azimuthal equidistant projection centred on (lat0, lon0): the
    distance of every point from the centre is its great-circle distance (haversine), at any
    range, and its direction the initial bearing. What a phone-centred distance needs, where a
    fence's `LocalPlane` drifts by about 1 % at tens of kilometres."""
    p0 = math.radians(lat0)
    p = np.radians(lats)
    dl = np.radians(np.asarray(lons) - lon0)
    east = np.cos(p) * np.sin(dl)
    north = math.cos(p0) * np.sin(p) - math.sin(p0) * np.cos(p) * np.cos(dl)
    norm = np.hypot(east, north)  # sin of the central angle
    dist = haversine_many_m(lat0, lon0, lats, lons)
    scale = np.divide(dist, norm, out=np.zeros_like(dist), where=norm > 0)
    return east * scale, north * scale
