"""The only module that speaks H3 (v4 API, integer cells): cell of a fix, cells covering a fence.

Resolution 9 (average edge ~200 m, ~0.1 km^2): a typical retail fence (30-300 m) overlaps
1-4 cells, and a cell holds only the stores within ~200 m, so a fix meets a handful of
candidates even in a dense city centre. See docs/architecture.md for the trade-off.

The covering is exact "overlap", not "centre inside": a cell is kept when the fence comes
within the cell's inradius of its centre (surely overlapping), and cells in the band up to the
largest circumradius are tested against their real boundary. No store whose fence contains a
fix can therefore be missed by the lookup.
"""
from __future__ import annotations

import math

import h3.api.basic_int as h3
import numpy as np
import shapely

from .fences import CircleFence, Fence
from .geodesy import haversine_many_m

RESOLUTION = 9
_EDGE_M = h3.average_hexagon_edge_length(RESOLUTION, "m")
# Measured over the globe at res 9: circumradius <= 1.10 x average edge, inradius >= 0.63 x.
CIRCUMRADIUS_MAX_M = 1.30 * _EDGE_M
INRADIUS_MIN_M = 0.55 * _EDGE_M
# Ring k of a grid disk lies at least k * (centre spacing) * cos(30deg) from its centre;
# centre spacing >= 2 x inradius. 10% more slack for distortion near pentagons.
_RING_STEP_MIN_M = 0.95 * 2 * (0.63 * _EDGE_M) * math.cos(math.radians(30))
_BOUNDARY_SLACK_M = 2.0  # geodesic cell edges vs straight edges on the local plane

cell_of = h3.latlng_to_cell


def cell_of_fix(lat: float, lon: float) -> int:
    return h3.latlng_to_cell(lat, lon, RESOLUTION)


def cover(fence: Fence) -> list[int]:
    lat, lon = fence.centre
    origin = h3.latlng_to_cell(lat, lon, RESOLUTION)
    k = int(math.ceil((fence.bounding_radius_m + CIRCUMRADIUS_MAX_M) / _RING_STEP_MIN_M)) + 1
    cells = h3.grid_disk(origin, k)
    centres = np.array([h3.cell_to_latlng(c) for c in cells])
    dist = fence.distance_many_m(centres[:, 0], centres[:, 1])
    keep = [cells[i] for i in np.flatnonzero(dist <= INRADIUS_MIN_M)]
    band = [cells[i] for i in np.flatnonzero((dist > INRADIUS_MIN_M) & (dist <= CIRCUMRADIUS_MAX_M))]
    if band and isinstance(fence, CircleFence):
        keep.extend(_band_cells_touching_circle(band, fence))
        centre_cell = origin  # the cell holding the centre overlaps, whatever its distances
        if centre_cell not in keep:
            keep.append(centre_cell)
    elif band:
        plane, shape = fence.local_shape()
        polys = []
        for c in band:
            b = np.array(h3.cell_to_boundary(c))
            xs, ys = plane.xy_many(b[:, 0], b[:, 1])
            polys.append(shapely.Polygon(np.column_stack([xs, ys])))
        hits = shapely.dwithin(np.array(polys, dtype=object), shape, _BOUNDARY_SLACK_M)
        keep.extend(c for c, hit in zip(band, hits) if hit)
    return keep


def _band_cells_touching_circle(band: list[int], fence: CircleFence) -> list[int]:
    """Vectorised exact test for circles: a cell that does not hold the centre overlaps the
    disc iff one of its edges comes within the radius of the centre (local plane, metres)."""
    from .geodesy import LocalPlane

    plane = LocalPlane(fence.lat, fence.lon)
    verts = np.empty((len(band), 6, 2))
    for i, c in enumerate(band):
        b = h3.cell_to_boundary(c)
        if len(b) < 6:  # pentagon (or distorted cell): repeat the last vertex, a zero-length edge
            b = tuple(b) + (b[-1],) * (6 - len(b))
        verts[i] = b[:6]
    xs, ys = plane.xy_many(verts[..., 0], verts[..., 1])
    ax, ay = xs, ys
    nxt = [1, 2, 3, 4, 5, 0]
    bx, by = xs[:, nxt], ys[:, nxt]
    dx, dy = bx - ax, by - ay
    seg2 = dx * dx + dy * dy
    t = np.clip(np.where(seg2 > 0, -(ax * dx + ay * dy) / np.where(seg2 > 0, seg2, 1), 0.0), 0.0, 1.0)
    px, py = ax + t * dx, ay + t * dy
    # Plane metres drift from the haversine metres `contains` uses (metres at 10 km, more toward
    # the poles): measure the plane's nearest point of each edge on the sphere. It is a point of
    # the edge, so never nearer than the true nearest; the plane misplaces it only to second order.
    lats, lons = plane.latlon(px, py)
    nearest = haversine_many_m(fence.lat, fence.lon, lats, lons).min(axis=1)
    return [c for c, d in zip(band, nearest) if d <= fence.radius_m + _BOUNDARY_SLACK_M]
