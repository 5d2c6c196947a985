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
from typing import Sequence

import h3.api.basic_int as h3
import numpy as np
import shapely

from .fences import CircleFence, Fence
from .geodesy import EARTH_RADIUS_M, M_PER_DEG

RESOLUTION = 9
_EDGE_M = h3.average_hexagon_edge_length(RESOLUTION, "m")
# Measured over the globe at res 9: circumradius <= 1.10 x average edge, inradius >= 0.63 x.
CIRCUMRADIUS_MAX_M = 1.30 * _EDGE_M
INRADIUS_MIN_M = 0.55 * _EDGE_M
# Ring k of a grid disk lies at least k * (centre spacing) * cos(30deg) from its centre;
# centre spacing >= 2 x inradius. 10% more slack for distortion near pentagons.
_RING_STEP_MIN_M = 0.95 * 2 * (0.63 * _EDGE_M) * math.cos(math.radians(30))
_BOUNDARY_SLACK_M = 2.0  # geodesic cell edges vs straight edges on the local plane

def _rings(bounding_radius_m: float) -> int:
    return int(math.ceil((bounding_radius_m + CIRCUMRADIUS_MAX_M) / _RING_STEP_MIN_M)) + 1


# Buckets of stores by the cell of their fence's centre, for `nearby`: a query reads the buckets
# of a grid disk instead of every store. Two resolutions, so that a short radius reads few
# stores and a long one few cells. The same measured ratios as at resolution 9 (cell shapes vary
# alike at every resolution), with the same slack.
BUCKET_RESOLUTIONS = (7, 5)  # edge ~1.4 km and ~10 km


def bucket_cell(lat: float, lon: float, resolution: int) -> int:
    return h3.latlng_to_cell(lat, lon, resolution)


def bucket_disk_rings(radius_m: float, resolution: int) -> int:
    """Rings of a grid disk at `resolution` that hold every point within `radius_m` of its centre."""
    edge = h3.average_hexagon_edge_length(resolution, "m")
    step = 0.95 * 2 * (0.63 * edge) * math.cos(math.radians(30))
    return int(math.ceil((radius_m + 1.30 * edge) / step)) + 1


def bucket_disk(lat: float, lon: float, rings: int, resolution: int) -> list[int]:
    return h3.grid_disk(h3.latlng_to_cell(lat, lon, resolution), rings)


def cover(fence: Fence) -> list[int]:
    """The cells that overlap one fence."""
    if isinstance(fence, CircleFence):
        return _cover_circles([fence], _rings(fence.radius_m))[0]
    return _cover_polygon(fence)


def cover_many(fences: Sequence[Fence]) -> list[list[int]]:
    """`cover` for many fences at once: circles are covered in vectorised batches (a bulk
    import of 100k stores is dominated by this), polygons one by one."""
    out: list[list[int] | None] = [None] * len(fences)
    by_rings: dict[int, list[int]] = {}
    for i, f in enumerate(fences):
        if isinstance(f, CircleFence):
            by_rings.setdefault(_rings(f.radius_m), []).append(i)
        else:
            out[i] = _cover_polygon(f)
    for k, idx in by_rings.items():
        for start in range(0, len(idx), _BATCH):
            chunk = idx[start:start + _BATCH]
            for i, cells in zip(chunk, _cover_circles([fences[i] for i in chunk], k)):
                out[i] = cells
    return out  # type: ignore[return-value]


_BATCH = 5000
_MAX_VERTS = 10  # an H3 cell boundary has 5-6 vertices, up to 10 where it crosses an icosahedron edge


def _cover_circles(fences: Sequence[CircleFence], k: int) -> list[list[int]]:
    """Exact overlap covering of circles, vectorised over all candidate cells of all circles.

    A cell is kept when it holds the centre, when its centre lies within the smallest inradius
    of the disc, or (in the band up to the largest circumradius) when one of its edges comes
    within the radius of the centre. The edge's nearest point is found on the circle's local
    plane and measured on the sphere (haversine, as `CircleFence.contains` does): it is a real
    point of the edge, so never nearer than the true nearest; the plane only misplaces it to
    second order, which the 2 m slack absorbs.
    """
    n = len(fences)
    lats = np.array([f.lat for f in fences])
    lons = np.array([f.lon for f in fences])
    radii = np.array([f.radius_m for f in fences])
    centre_cells = [h3.latlng_to_cell(f.lat, f.lon, RESOLUTION) for f in fences]
    cells: list[int] = []
    owner: list[int] = []
    for i, c in enumerate(centre_cells):
        disk = h3.grid_disk(c, k)
        cells += disk
        owner += [i] * len(disk)
    own = np.array(owner, dtype=np.int64)
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    dist = np.maximum(_haversine_rows(lats[own], lons[own], ll[:, 0], ll[:, 1]) - radii[own], 0.0)
    keep = dist <= INRADIUS_MIN_M
    band = np.flatnonzero((dist > INRADIUS_MIN_M) & (dist <= CIRCUMRADIUS_MAX_M))
    if len(band):
        verts = np.empty((len(band), _MAX_VERTS, 2))
        for row, j in enumerate(band.tolist()):
            b = h3.cell_to_boundary(cells[j])
            verts[row, :len(b)] = b
            verts[row, len(b):] = b[-1]  # padding: zero-length edges
        o = own[band]
        lat0, lon0 = lats[o][:, None], lons[o][:, None]
        kx = np.cos(np.radians(lat0)) * M_PER_DEG
        xs = ((verts[..., 1] - lon0 + 180.0) % 360.0 - 180.0) * kx
        ys = (verts[..., 0] - lat0) * M_PER_DEG
        nxt = list(range(1, _MAX_VERTS)) + [0]
        dx, dy = xs[:, nxt] - xs, ys[:, nxt] - ys
        seg2 = dx * dx + dy * dy
        t = np.clip(-(xs * dx + ys * dy) / np.where(seg2 > 0, seg2, 1.0), 0.0, 1.0)
        px, py = xs + t * dx, ys + t * dy
        plat = lat0 + py / M_PER_DEG
        plon = (lon0 + px / kx + 180.0) % 360.0 - 180.0
        nearest = _haversine_rows(np.broadcast_to(lat0, plat.shape), np.broadcast_to(lon0, plon.shape),
                                  plat, plon).min(axis=1)
        keep[band[nearest <= radii[o] + _BOUNDARY_SLACK_M]] = True
    out: list[list[int]] = [[] for _ in range(n)]
    for j in np.flatnonzero(keep).tolist():
        out[owner[j]].append(cells[j])
    for i, c in enumerate(centre_cells):  # the cell holding the centre overlaps, whatever its distances
        if c not in out[i]:
            out[i].append(c)
    return out


def _haversine_rows(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    s1 = np.sin((p2 - p1) * 0.5)
    s2 = np.sin(np.radians(lon2 - lon1) * 0.5)
    h = s1 * s1 + np.cos(p1) * np.cos(p2) * s2 * s2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, h)))


def _cover_polygon(fence: Fence) -> list[int]:
    lat, lon = fence.centre
    cells = h3.grid_disk(h3.latlng_to_cell(lat, lon, RESOLUTION), _rings(fence.bounding_radius_m))
    centres = np.array([h3.cell_to_latlng(c) for c in cells])
    dist = fence.distance_many_m(centres[:, 0], centres[:, 1])
    keep = [cells[i] for i in np.flatnonzero(dist <= INRADIUS_MIN_M)]
    band = [cells[i] for i in np.flatnonzero((dist > INRADIUS_MIN_M) & (dist <= CIRCUMRADIUS_MAX_M))]
    if band:
        plane, shape = fence.local_shape()
        polys = []
        for c in band:
            b = np.array(h3.cell_to_boundary(c))
            xs, ys = plane.xy_many(b[:, 0], b[:, 1])
            polys.append(shapely.Polygon(np.column_stack([xs, ys])))
        hits = shapely.dwithin(np.array(polys, dtype=object), shape, _BOUNDARY_SLACK_M)
        keep.extend(c for c, hit in zip(band, hits) if hit)
    return keep
