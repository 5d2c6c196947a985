"""GeoJSON Feature <-> Store: the one place that turns client geometry into fences.

Every rejection raises `FeatureRejected` with a reason a person can act on. Self-intersecting
polygons are repaired with shapely's `make_valid` (keeping the polygonal parts) and the
response says so; a polygon with no area left is rejected.
"""
from __future__ import annotations

import math
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import shapely
from opening_hours import OpeningHours

from vicino.services.kernel.ids import is_valid_client_id

from .fences import CircleFence, PolygonFence
from .geodesy import MAX_ABS_LAT, LocalPlane
from .stores import Store

MIN_RADIUS_M = 10.0
MAX_RADIUS_M = 10_000.0
MAX_POLYGON_RADIUS_M = 25_000.0
MAX_VERTICES = 10_000
MAX_DWELL_S = 86_400.0


class FeatureRejected(ValueError):
    def __init__(self, reason: str, store_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.store_id = store_id


def feature_id(feature: Any) -> str | None:
    if not isinstance(feature, dict):
        return None
    fid = feature.get("id")
    if fid is None and isinstance(feature.get("properties"), dict):
        fid = feature["properties"].get("store_id")
    return None if fid is None else str(fid)


def store_from_feature(feature: Any, store_id: str | None = None) -> tuple[Store, list[str]]:
    """Returns the store and warnings (e.g. a repaired geometry)."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise FeatureRejected("expected a GeoJSON object with \"type\": \"Feature\"")
    body_id = feature_id(feature)
    if store_id is not None and body_id is not None and body_id != store_id:
        raise FeatureRejected(f"feature id {body_id!r} does not match the store id {store_id!r} in the path")
    sid = store_id or body_id
    if sid is None:
        raise FeatureRejected("feature has no id (set \"id\" or properties.store_id)")
    if not is_valid_client_id(sid):
        raise FeatureRejected(f"store id {sid[:40]!r} must be 1-128 characters of letters, digits and ._:@-")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise FeatureRejected("properties must be an object", sid)
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict):
        raise FeatureRejected("feature has no geometry object", sid)
    warnings: list[str] = []
    try:
        fence, normal_geometry = _fence(geometry, props, warnings)
        clean = _properties(props, geometry.get("type"))
        store = Store(sid, fence, name=clean["name"], brand=clean["brand"], dwell_s=clean.get("dwell_s"),
                      opening_hours=clean.get("opening_hours"), timezone=clean["timezone"],
                      enabled=clean["enabled"])
    except FeatureRejected as e:
        e.store_id = sid
        raise
    store.feature = {"type": "Feature", "id": sid, "geometry": normal_geometry, "properties": clean}
    return store, warnings


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FeatureRejected(f"{what} must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise FeatureRejected(f"{what} must be finite")
    return value


def _position(pos: Any, where: str) -> tuple[float, float]:
    if not isinstance(pos, (list, tuple)) or len(pos) < 2:
        raise FeatureRejected(f"{where}: a position is [longitude, latitude]")
    lon = _number(pos[0], f"{where}: longitude")
    lat = _number(pos[1], f"{where}: latitude")
    if not -180.0 <= lon <= 180.0:
        raise FeatureRejected(f"{where}: longitude {lon} is outside [-180, 180]")
    if not -MAX_ABS_LAT <= lat <= MAX_ABS_LAT:
        raise FeatureRejected(f"{where}: latitude {lat} is outside [-{MAX_ABS_LAT:g}, {MAX_ABS_LAT:g}]")
    return lon, lat


def _fence(geometry: dict, props: dict, warnings: list[str]):
    gtype = geometry.get("type")
    coords = geometry.get("coordinates")
    if gtype == "Point":
        lon, lat = _position(coords, "Point")
        if "radius_m" not in props:
            raise FeatureRejected("a Point store needs properties.radius_m (10-10000)")
        radius = _number(props["radius_m"], "properties.radius_m")
        if not MIN_RADIUS_M <= radius <= MAX_RADIUS_M:
            raise FeatureRejected(f"properties.radius_m {radius:g} is outside {MIN_RADIUS_M:g}-{MAX_RADIUS_M:g}")
        return CircleFence(lat, lon, radius), {"type": "Point", "coordinates": [lon, lat]}
    if gtype == "Polygon":
        polygons = [coords]
    elif gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise FeatureRejected("MultiPolygon coordinates must be a non-empty list of polygons")
        polygons = coords
    else:
        raise FeatureRejected(f"geometry type {gtype!r} is not supported: use Point (with radius_m), "
                              "Polygon or MultiPolygon")
    return _polygon_fence(gtype, polygons, warnings)


def _polygon_fence(gtype: str, polygons: list, warnings: list[str]):
    rings_ll: list[list[list[tuple[float, float]]]] = []
    vertices = 0
    for pi, poly in enumerate(polygons):
        if not isinstance(poly, list) or not poly:
            raise FeatureRejected(f"polygon {pi}: expected a list of linear rings")
        rings = []
        for ri, ring in enumerate(poly):
            where = f"polygon {pi} ring {ri}"
            if not isinstance(ring, list) or len(ring) < 4:
                raise FeatureRejected(f"{where}: a linear ring needs at least 4 positions")
            pts = [_position(p, where) for p in ring]
            if pts[0] != pts[-1]:
                raise FeatureRejected(f"{where}: the first and last positions must be equal (closed ring)")
            vertices += len(pts)
            rings.append(pts)
        rings_ll.append(rings)
    if vertices > MAX_VERTICES:
        raise FeatureRejected(f"geometry has {vertices} vertices; at most {MAX_VERTICES} are accepted")
    lon0, lat0 = rings_ll[0][0][0]
    plane = LocalPlane(lat0, lon0)

    def local(ring):
        arr = np.asarray(ring, dtype=float)
        xs, ys = plane.xy_many(arr[:, 1], arr[:, 0])
        return np.column_stack([xs, ys])

    parts = []
    for pi, rings in enumerate(rings_ll):
        shell = shapely.Polygon(local(rings[0]))
        holes = [shapely.Polygon(local(r)) for r in rings[1:]]
        outer = shell if shell.is_valid else shapely.make_valid(shell)
        for hi, hole in enumerate(holes, start=1):
            # A "hole" outside its shell would be turned into extra area by make_valid: refuse it.
            if not shapely.covers(outer.buffer(0.01), hole if hole.is_valid else shapely.make_valid(hole)):
                raise FeatureRejected(f"polygon {pi} ring {hi}: a hole must lie inside the exterior ring")
        parts.append(shapely.Polygon(shell.exterior, [h.exterior for h in holes]))
    shape = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    repaired = False
    if not shape.is_valid and len(parts) > 1 and all(p.is_valid for p in parts):
        # Valid parts that touch along an edge, e.g. a fence split at the antimeridian as RFC 7946
        # asks: the union is the same area, nothing to warn about. Overlapping parts are merged.
        union = shapely.union_all(parts)
        if abs(union.area - sum(p.area for p in parts)) > 1e-6 * union.area:
            warnings.append("overlapping MultiPolygon parts were merged")
        shape = union
    if not shape.is_valid:
        why = shapely.is_valid_reason(shape).split("[")[0]
        fixed = shapely.make_valid(shape)
        polys = [g for g in shapely.get_parts(fixed) if g.geom_type in ("Polygon", "MultiPolygon")]
        shape = shapely.union_all(polys) if polys else shapely.Polygon()
        repaired = True
        warnings.append(f"invalid geometry ({why}) was repaired with make_valid")
    if shape.is_empty or shape.area <= 0.0:
        raise FeatureRejected("polygon has no area")
    minx, miny, maxx, maxy = shape.bounds
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    coords = shapely.get_coordinates(shape)
    bounding = float(np.max(np.hypot(coords[:, 0] - cx, coords[:, 1] - cy)))
    if bounding > MAX_POLYGON_RADIUS_M:
        raise FeatureRejected(f"polygon extends {bounding / 1000:.1f} km from its centre; "
                              f"at most {MAX_POLYGON_RADIUS_M / 1000:g} km are accepted")
    centre = plane.latlon(cx, cy)
    shapely.prepare(shape)
    if repaired:
        geometry = _to_lonlat_geojson(shape, plane)
    else:
        geometry = {"type": gtype, "coordinates": rings_ll[0] if gtype == "Polygon" else rings_ll}
        geometry = _as_lists(geometry)
    fence = PolygonFence(plane=plane, shape=shape, centre=centre, bounding_radius_m=bounding,
                         geojson_geometry=geometry)
    return fence, geometry


def _as_lists(geometry: dict) -> dict:
    def conv(x):
        if isinstance(x, tuple):
            return [x[0], x[1]]
        return [conv(i) for i in x]
    return {"type": geometry["type"], "coordinates": conv(geometry["coordinates"])}


def _to_lonlat_geojson(shape, plane: LocalPlane) -> dict:
    def ring(r):
        out = []
        for x, y in np.asarray(r.coords):
            lat, lon = plane.latlon(float(x), float(y))
            out.append([round(lon, 9), round(lat, 9)])
        return out

    polys = [shape] if shape.geom_type == "Polygon" else list(shape.geoms)
    coords = [[ring(p.exterior)] + [ring(i) for i in p.interiors] for p in polys]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def _properties(props: dict, gtype: str | None) -> dict:
    out: dict[str, Any] = {}
    for key, limit in (("name", 200), ("brand", 100)):
        value = props.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise FeatureRejected(f"properties.{key} must be a string")
        if len(value) > limit:
            raise FeatureRejected(f"properties.{key} is longer than {limit} characters")
        out[key] = value
    if gtype == "Point":
        out["radius_m"] = float(props["radius_m"])
    if props.get("dwell_s") is not None:
        dwell = _number(props["dwell_s"], "properties.dwell_s")
        if not 0 < dwell <= MAX_DWELL_S:
            raise FeatureRejected(f"properties.dwell_s must be in (0, {MAX_DWELL_S:g}] seconds")
        out["dwell_s"] = dwell
    hours = props.get("opening_hours")
    if hours is not None:
        if not isinstance(hours, str) or not hours.strip():
            raise FeatureRejected("properties.opening_hours must be an OpenStreetMap opening_hours string")
        try:
            OpeningHours(hours)
        except Exception as e:  # the parser's error names the position that failed
            first = str(e).strip().splitlines()
            raise FeatureRejected(f"properties.opening_hours {hours!r} does not parse: "
                                  f"{' '.join(line.strip() for line in first[-1:])}") from None
        out["opening_hours"] = hours
    tz = props.get("timezone", "Europe/Rome")
    if not isinstance(tz, str):
        raise FeatureRejected("properties.timezone must be an IANA time zone name")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise FeatureRejected(f"properties.timezone {tz!r} is not an IANA time zone") from None
    out["timezone"] = tz
    enabled = props.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FeatureRejected("properties.enabled must be true or false")
    out["enabled"] = enabled
    extra = dict(props["extra"]) if isinstance(props.get("extra"), dict) else {}
    for key, value in props.items():  # keep the client's other properties (address, etc.)
        if key not in out and key not in ("radius_m", "store_id", "dwell_s", "opening_hours", "extra"):
            extra[key] = value
    if extra:
        out["extra"] = extra
    return out
