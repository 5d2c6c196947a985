"""GeoJSON Feature -> Store: every rejection says why, repairs say so, and normalisation is stable."""
from __future__ import annotations

import copy
import json
import math
import re

import pytest
import shapely
from shapely.geometry import shape as geojson_shape

from vicino.services.geo.domain.geojson_codec import (MAX_POLYGON_RADIUS_M, MAX_VERTICES, FeatureRejected,
                                               store_from_feature)

M_PER_DEG = 6_371_008.8 * math.pi / 180.0
LAT, LON = 45.4642, 9.19


def point(lon=LON, lat=LAT, sid="s1", **props):
    props.setdefault("radius_m", 50)
    return {"type": "Feature", "id": sid, "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": props}


def square_ring(lat=LAT, lon=LON, half_m=100.0):
    dlat = half_m / M_PER_DEG
    dlon = half_m / (M_PER_DEG * math.cos(math.radians(lat)))
    return [[lon - dlon, lat - dlat], [lon + dlon, lat - dlat], [lon + dlon, lat + dlat], [lon - dlon, lat + dlat],
            [lon - dlon, lat - dlat]]


def polygon(rings=None, sid="s1", **props):
    return {"type": "Feature", "id": sid, "geometry": {"type": "Polygon", "coordinates": rings or [square_ring()]},
            "properties": props}


def circle_ring(n, radius_m=1000.0, lat=LAT, lon=LON):
    """n positions, closed (the last repeats the first): n - 1 distinct vertices."""
    pts = []
    for k in range(n - 1):
        a = 2 * math.pi * k / (n - 1)
        pts.append([lon + radius_m * math.cos(a) / (M_PER_DEG * math.cos(math.radians(lat))),
                    lat + radius_m * math.sin(a) / M_PER_DEG])
    return pts + [pts[0]]


def rejected(feature, store_id=None) -> FeatureRejected:
    with pytest.raises(FeatureRejected) as e:
        store_from_feature(feature, store_id)
    assert e.value.reason == str(e.value)
    return e.value


# ---------------------------------------------------------------------------------------------
# the envelope


@pytest.mark.parametrize("feature", [None, [], "Feature", 42, {"type": "FeatureCollection", "features": []},
                                     {"type": "feature", "id": "s1"}, {"id": "s1", "geometry": {}},
                                     {"type": "Point", "coordinates": [9, 45]}])
def test_not_a_feature(feature):
    e = rejected(feature)
    assert e.reason == 'expected a GeoJSON object with "type": "Feature"'


def test_missing_id():
    f = point()
    del f["id"]
    e = rejected(f)
    assert "feature has no id" in e.reason and e.store_id is None
    # properties.store_id is an id too
    store, _ = store_from_feature({**f, "properties": {"radius_m": 50, "store_id": "from-props"}})
    assert store.store_id == "from-props" and store.feature["id"] == "from-props"
    # and the path gives one
    store, _ = store_from_feature(f, "from-path")
    assert store.store_id == "from-path"


def test_path_and_body_id_must_match():
    e = rejected(point(sid="body-id"), "path-id")
    assert e.reason == "feature id 'body-id' does not match the store id 'path-id' in the path"
    e = rejected({**point(sid=None), "properties": {"radius_m": 50, "store_id": "body-id"}}, "path-id")
    assert "does not match" in e.reason
    store, _ = store_from_feature(point(sid="same"), "same")
    assert store.store_id == "same"


@pytest.mark.parametrize("bad", ["has space", "../etc/passwd", "a/b", "-leading-dash", ".dot", "x" * 129, "ünïcode",
                                 "semi;colon", "new\nline", "_under"])
def test_bad_id_characters(bad):
    e = rejected(point(sid=bad))
    assert "must be 1-128 characters of letters, digits and ._:@-" in e.reason
    assert repr(bad[:40]) in e.reason


@pytest.mark.parametrize("good", ["a", "Store-1", "mimit-55634", "x" * 128, "brand:store@city.zone_1", "0"])
def test_good_ids(good):
    assert store_from_feature(point(sid=good))[0].store_id == good


def test_numeric_id_is_an_id():
    assert store_from_feature(point(sid=12345))[0].store_id == "12345"


@pytest.mark.parametrize("props", ["x", 5, ["radius_m", 50]])
def test_properties_must_be_an_object(props):
    f = point()
    f["properties"] = props
    e = rejected(f)
    assert e.reason == "properties must be an object" and e.store_id == "s1"


@pytest.mark.parametrize("geometry", [None, "POINT(9 45)", [9, 45]])
def test_geometry_must_be_an_object(geometry):
    f = point()
    f["geometry"] = geometry
    assert rejected(f).reason == "feature has no geometry object"


# ---------------------------------------------------------------------------------------------
# geometry types and points


@pytest.mark.parametrize("geometry", [
    {"type": "LineString", "coordinates": [[9, 45], [9.001, 45.001]]},
    {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [9, 45]}]},
    {"type": "MultiPoint", "coordinates": [[9, 45]]},
    {"type": "MultiLineString", "coordinates": [[[9, 45], [9.001, 45.001]]]},
    {"type": "Circle", "coordinates": [9, 45]},
    {"coordinates": [9, 45]},
])
def test_unsupported_geometry_types(geometry):
    f = point()
    f["geometry"] = geometry
    e = rejected(f)
    assert e.reason == (f"geometry type {geometry.get('type')!r} is not supported: use Point (with radius_m), "
                        "Polygon or MultiPolygon")
    assert e.store_id == "s1"


def test_point_without_radius():
    f = point()
    del f["properties"]["radius_m"]
    assert rejected(f).reason == "a Point store needs properties.radius_m (10-10000)"


@pytest.mark.parametrize("radius,reason", [
    (9, "properties.radius_m 9 is outside 10-10000"),
    (9.999, "properties.radius_m 9.999 is outside 10-10000"),
    (10001, "properties.radius_m 10001 is outside 10-10000"),
    (0, "properties.radius_m 0 is outside 10-10000"),
    (-50, "properties.radius_m -50 is outside 10-10000"),
    ("50", "properties.radius_m must be a number"),
    (True, "properties.radius_m must be a number"),
    (None, "properties.radius_m must be a number"),
    (float("nan"), "properties.radius_m must be finite"),
    (float("inf"), "properties.radius_m must be finite"),
])
def test_radius_limits(radius, reason):
    assert rejected(point(radius_m=radius)).reason == reason


@pytest.mark.parametrize("radius", [10, 10.0, 80, 10_000])
def test_radius_limits_are_inclusive(radius):
    store, warnings = store_from_feature(point(radius_m=radius))
    assert store.fence.kind == "circle" and store.fence.radius_m == radius and warnings == []
    assert store.feature["properties"]["radius_m"] == float(radius)


@pytest.mark.parametrize("coords,reason", [
    (["9.19", 45.0], "Point: longitude must be a number"),
    ([9.19, "45"], "Point: latitude must be a number"),
    ([None, 45.0], "Point: longitude must be a number"),
    ([True, 45.0], "Point: longitude must be a number"),
    ([[9.19], 45.0], "Point: longitude must be a number"),
    ([float("nan"), 45.0], "Point: longitude must be finite"),
    ([9.19, float("nan")], "Point: latitude must be finite"),
    ([float("inf"), 45.0], "Point: longitude must be finite"),
    ([9.19, float("-inf")], "Point: latitude must be finite"),
    ([181, 45.0], "Point: longitude 181.0 is outside [-180, 180]"),
    ([-180.5, 45.0], "Point: longitude -180.5 is outside [-180, 180]"),
    ([9.19, 86], "Point: latitude 86.0 is outside [-85, 85]"),
    ([9.19, -85.01], "Point: latitude -85.01 is outside [-85, 85]"),
    ([9.19], "Point: a position is [longitude, latitude]"),
    ("9.19,45", "Point: a position is [longitude, latitude]"),
    (None, "Point: a position is [longitude, latitude]"),
])
def test_bad_point_coordinates(coords, reason):
    f = point()
    f["geometry"]["coordinates"] = coords
    assert rejected(f).reason == reason


@pytest.mark.parametrize("lon,lat", [(180, 85), (-180, -85), (0, 0), (9.19, 45.4642, )])
def test_coordinate_limits_are_inclusive(lon, lat):
    store, _ = store_from_feature(point(lon, lat))
    assert (store.fence.lat, store.fence.lon) == (lat, lon)


def test_altitude_is_allowed_and_dropped():
    f = point()
    f["geometry"]["coordinates"] = [LON, LAT, 120.5]
    store, _ = store_from_feature(f)
    assert store.feature["geometry"] == {"type": "Point", "coordinates": [LON, LAT]}


# ---------------------------------------------------------------------------------------------
# polygons


def test_polygon_bad_coordinates_name_the_ring():
    ring = square_ring()
    ring[2] = [ring[2][0], float("nan")]
    assert rejected(polygon([ring])).reason == "polygon 0 ring 0: latitude must be finite"
    ring = square_ring()
    ring[1] = [181.0, ring[1][1]]
    assert rejected(polygon([ring])).reason == "polygon 0 ring 0: longitude 181.0 is outside [-180, 180]"
    hole = square_ring(half_m=10)
    hole[1] = ["x", hole[1][1]]
    assert rejected(polygon([square_ring(), hole])).reason == "polygon 0 ring 1: longitude must be a number"
    f = {"type": "Feature", "id": "m", "geometry": {"type": "MultiPolygon", "coordinates": [
        [square_ring()], [[[p[0], 86.0] for p in square_ring()]]]}}
    assert rejected(f).reason == "polygon 1 ring 0: latitude 86.0 is outside [-85, 85]"


def test_unclosed_ring():
    ring = square_ring()[:-1] + [square_ring()[1]]
    assert rejected(polygon([ring])).reason == "polygon 0 ring 0: the first and last positions must be equal (closed ring)"
    assert rejected(polygon([square_ring()[:-1]])).reason.endswith("(closed ring)")


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_ring_with_fewer_than_four_positions(n):
    r = square_ring()
    ring = (r[:n - 1] + [r[0]]) if n >= 2 else r[:n]
    assert rejected(polygon([ring])).reason == "polygon 0 ring 0: a linear ring needs at least 4 positions"


@pytest.mark.parametrize("coords,reason", [
    ([], "polygon 0: expected a list of linear rings"),
    ("ring", "polygon 0: expected a list of linear rings"),
    ([["not a ring"] * 4], "polygon 0 ring 0: a position is [longitude, latitude]"),
    (["ring"], "polygon 0 ring 0: a linear ring needs at least 4 positions"),
])
def test_malformed_polygon_coordinates(coords, reason):
    f = polygon()
    f["geometry"]["coordinates"] = coords
    assert rejected(f).reason == reason


@pytest.mark.parametrize("coords", [[], None, "x"])
def test_malformed_multipolygon_coordinates(coords):
    f = {"type": "Feature", "id": "m", "geometry": {"type": "MultiPolygon", "coordinates": coords}}
    assert rejected(f).reason == "MultiPolygon coordinates must be a non-empty list of polygons"


def test_too_many_vertices():
    over = circle_ring(MAX_VERTICES + 1)
    assert rejected(polygon([over])).reason == f"geometry has {MAX_VERTICES + 1} vertices; at most {MAX_VERTICES} are accepted"
    # counted over all rings and parts
    f = {"type": "Feature", "id": "m", "geometry": {"type": "MultiPolygon", "coordinates": [
        [circle_ring(5001)], [circle_ring(5001, lat=LAT + 0.1)]]}}
    assert "10002 vertices" in rejected(f).reason
    store, warnings = store_from_feature(polygon([circle_ring(MAX_VERTICES)]))
    assert warnings == [] and store.fence.kind == "polygon"


def test_polygon_wider_than_the_limit():
    assert MAX_POLYGON_RADIUS_M == 25_000
    e = rejected(polygon([square_ring(half_m=30_000)]))  # 60 km wide
    # half the diagonal, ~42.4 km (on the plane around the first vertex, so give or take 0.1)
    assert re.fullmatch(r"polygon extends 42\.[3-5] km from its centre; at most 25 km are accepted", e.reason), e.reason
    e = rejected(polygon([circle_ring(65, radius_m=25_300)]))
    assert e.reason.startswith("polygon extends 25.") and e.reason.endswith("at most 25 km are accepted")
    # a multipolygon is measured as a whole: two small squares 60 km apart
    far = {"type": "Feature", "id": "m", "geometry": {"type": "MultiPolygon", "coordinates": [
        [square_ring()], [square_ring(lat=LAT + 60_000 / M_PER_DEG)]]}}
    assert "at most 25 km are accepted" in rejected(far).reason
    # ~40 km across is fine
    store, _ = store_from_feature(polygon([circle_ring(97, radius_m=20_000)]))
    assert 19_900 < store.fence.bounding_radius_m <= 20_001


@pytest.mark.parametrize("ring", [
    [[9.0, 45.0], [9.001, 45.0], [9.002, 45.0], [9.0, 45.0]],  # collinear
    [[9.0, 45.0], [9.0, 45.0], [9.0, 45.0], [9.0, 45.0]],  # a point
    [[9.0, 45.0], [9.001, 45.001], [9.001, 45.001], [9.0, 45.0]],  # a spike
])
def test_zero_area_polygon(ring):
    e = rejected(polygon([ring]))
    assert e.reason == "polygon has no area" and e.store_id == "s1"


def test_self_intersecting_bow_tie_is_repaired():
    d = 0.001
    bow = [[9.0, 45.0], [9.0 + d, 45.0 + d], [9.0 + d, 45.0], [9.0, 45.0 + d], [9.0, 45.0]]
    assert not shapely.Polygon(bow).is_valid
    store, warnings = store_from_feature(polygon([bow], sid="bow"))
    assert len(warnings) == 1
    assert "Self-intersection" in warnings[0] and "repaired with make_valid" in warnings[0]
    f = store.fence
    assert f.kind == "polygon" and f.shape.is_valid
    # two triangles of d^2/4 each, the crossing at the middle: area d^2/2 square degrees in metres
    kx = math.cos(math.radians(45.0)) * M_PER_DEG
    assert f.shape.area == pytest.approx(d * d / 2 * kx * M_PER_DEG, rel=1e-9)
    # the stored geometry is the repaired one: valid, the same area on the lon/lat plane
    g = geojson_shape(store.feature["geometry"])
    assert g.is_valid and g.area == pytest.approx(d * d / 2, rel=1e-6)
    # both lobes are inside; the two wedges between them are not
    assert f.contains(45.0 + d / 2, 9.0 + d / 10) and f.contains(45.0 + d / 2, 9.0 + 9 * d / 10)
    assert not f.contains(45.0 + d / 10, 9.0 + d / 2) and not f.contains(45.0 + 9 * d / 10, 9.0 + d / 2)


def test_collapsed_bow_tie_is_rejected():
    d = 0.001
    collapsed = [[9.0, 45.0], [9.0 + d, 45.0 + d], [9.0, 45.0], [9.0 + d, 45.0 + d], [9.0, 45.0]]
    e = rejected(polygon([collapsed]))
    assert e.reason == "polygon has no area"


@pytest.mark.parametrize("hole", [
    square_ring(half_m=80)[::-1],                          # bigger than its shell
    square_ring(lon=LON + 0.01, half_m=20)[::-1],          # wholly outside the shell
    square_ring(lon=LON + 100 / (M_PER_DEG * math.cos(math.radians(LAT))), half_m=20)[::-1],  # across its edge
])
def test_a_hole_not_inside_its_shell_is_rejected_not_turned_into_area(hole):
    # make_valid would turn such a "hole" into extra area of the store: refuse instead
    assert rejected(polygon([square_ring(half_m=50 if hole[0][0] < LON else 100), hole])).reason == \
        "polygon 0 ring 1: a hole must lie inside the exterior ring"


def test_a_multipolygon_split_at_the_antimeridian_is_accepted_without_a_warning():
    west = [[179.99, -17.0], [180.0, -17.0], [180.0, -16.99], [179.99, -16.99], [179.99, -17.0]]
    east = [[-180.0, -17.0], [-179.99, -17.0], [-179.99, -16.99], [-180.0, -16.99], [-180.0, -17.0]]
    feature = {"type": "Feature", "id": "fiji", "properties": {},
               "geometry": {"type": "MultiPolygon", "coordinates": [[west], [east]]}}
    store, warnings = store_from_feature(feature)
    assert warnings == []
    assert store.fence.contains(-16.995, 179.995) and store.fence.contains(-16.995, -179.995)
    assert store.fence.contains(-16.995, 180.0)
    assert not store.fence.contains(-16.995, 179.98)


# ---------------------------------------------------------------------------------------------
# properties


@pytest.mark.parametrize("hours", ["not hours", "Mo-Fr 25:00-26:00", "Mo-Xx 09:00-18:00", "09:00-18:00 Mo"])
def test_bad_opening_hours(hours):
    e = rejected(point(opening_hours=hours))
    assert e.reason.startswith(f"properties.opening_hours {hours!r} does not parse: ")
    assert len(e.reason) > len(f"properties.opening_hours {hours!r} does not parse: ")  # says where


@pytest.mark.parametrize("hours", ["", "   ", 42, ["Mo-Fr 09:00-18:00"]])
def test_opening_hours_must_be_a_non_empty_string(hours):
    assert rejected(point(opening_hours=hours)).reason == \
        "properties.opening_hours must be an OpenStreetMap opening_hours string"


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../../etc/passwd", "Europe/Rome ", "UTC+1"])
def test_bad_timezone(tz):
    assert rejected(point(timezone=tz)).reason == f"properties.timezone {tz!r} is not an IANA time zone"


@pytest.mark.parametrize("tz", [1, None, ["Europe/Rome"]])
def test_timezone_must_be_a_string(tz):
    assert rejected(point(timezone=tz)).reason == "properties.timezone must be an IANA time zone name"


@pytest.mark.parametrize("enabled", ["true", 1, 0, None, "false"])
def test_enabled_must_be_a_bool(enabled):
    assert rejected(point(enabled=enabled)).reason == "properties.enabled must be true or false"


@pytest.mark.parametrize("dwell,reason", [
    (0, "properties.dwell_s must be in (0, 86400] seconds"),
    (-1, "properties.dwell_s must be in (0, 86400] seconds"),
    (86_400.5, "properties.dwell_s must be in (0, 86400] seconds"),
    (10 ** 9, "properties.dwell_s must be in (0, 86400] seconds"),
    ("300", "properties.dwell_s must be a number"),
    (True, "properties.dwell_s must be a number"),
    (float("nan"), "properties.dwell_s must be finite"),
])
def test_dwell_out_of_range(dwell, reason):
    assert rejected(point(dwell_s=dwell)).reason == reason


@pytest.mark.parametrize("dwell", [0.5, 300, 86_400])
def test_dwell_in_range(dwell):
    store, _ = store_from_feature(point(dwell_s=dwell))
    assert store.dwell_s == dwell and store.feature["properties"]["dwell_s"] == dwell


@pytest.mark.parametrize("key,value,reason", [
    ("name", 5, "properties.name must be a string"),
    ("name", "x" * 201, "properties.name is longer than 200 characters"),
    ("brand", ["Esso"], "properties.brand must be a string"),
    ("brand", "x" * 101, "properties.brand is longer than 100 characters"),
])
def test_name_and_brand(key, value, reason):
    assert rejected(point(**{key: value})).reason == reason


def test_rejections_carry_the_store_id():
    assert rejected(point(sid="abc", radius_m=5)).store_id == "abc"
    assert rejected(point(sid="abc", timezone="Nowhere/Land")).store_id == "abc"


# ---------------------------------------------------------------------------------------------
# normalisation and round trips


def test_extra_properties_are_kept_under_extra():
    f = point(name="Esso Viale Giotto", brand="Esso", address="Viale Giotto 1", comune="Abbiategrasso",
              tags=["fuel", "24h"], extra={"mimit_id": 51865}, store_id="s1")
    store, _ = store_from_feature(f)
    props = store.feature["properties"]
    assert props["extra"] == {"mimit_id": 51865, "address": "Viale Giotto 1", "comune": "Abbiategrasso",
                              "tags": ["fuel", "24h"]}
    assert props["name"] == "Esso Viale Giotto" and props["brand"] == "Esso"
    assert "store_id" not in props and "address" not in props
    assert store.name == "Esso Viale Giotto" and store.brand == "Esso"


def test_defaults_are_filled_in():
    store, _ = store_from_feature(point())
    assert store.feature == {"type": "Feature", "id": "s1", "geometry": {"type": "Point", "coordinates": [LON, LAT]},
                             "properties": {"name": "", "brand": "", "radius_m": 50.0, "timezone": "Europe/Rome",
                                            "enabled": True}}
    assert store.enabled is True and store.dwell_s is None and store.opening_hours is None
    assert store.timezone == "Europe/Rome"


def test_the_input_is_not_modified():
    f = point(address="x", extra={"a": 1})
    before = copy.deepcopy(f)
    store_from_feature(f)
    assert f == before


def _bow_tie():
    d = 0.001
    return polygon([[[9.0, 45.0], [9.0 + d, 45.0 + d], [9.0 + d, 45.0], [9.0, 45.0 + d], [9.0, 45.0]]], sid="bow",
                   note="repaired")


ROUND_TRIP = {
    "point": point(name="Bar", brand="B", dwell_s=120, opening_hours="Mo-Fr 09:00-18:00", timezone="Europe/London",
                   enabled=False, address="Via Roma 1", extra={"k": [1, 2]}, phone="+39 02"),
    "polygon with hole": polygon([square_ring(half_m=300), square_ring(half_m=50)[::-1]], sid="donut",
                                 name="Donut", floor=2),
    "multipolygon": {"type": "Feature", "id": "multi", "geometry": {"type": "MultiPolygon", "coordinates": [
        [square_ring()], [square_ring(lat=LAT + 0.01)]]}, "properties": {"brand": "Two", "dwell_s": 60}},
    "integer coordinates": {"type": "Feature", "id": "ints", "geometry": {"type": "Point", "coordinates": [9, 45]},
                            "properties": {"radius_m": 80, "dwell_s": 600}},
    "store_id in properties": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [LON, LAT]},
                               "properties": {"store_id": "p1", "radius_m": 80, "note": "x"}},
    "repaired bow-tie": _bow_tie(),
    "ring across 180": polygon([[[179.99, -16.0], [-179.99, -16.0], [-179.99, -15.99], [179.99, -15.99],
                                 [179.99, -16.0]]], sid="fiji"),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_round_trip_gives_the_same_normalised_feature(name):
    store, _ = store_from_feature(ROUND_TRIP[name])
    first = store.feature
    # as it would be stored: through JSON
    again, warnings = store_from_feature(json.loads(json.dumps(first)))
    assert again.feature == first
    assert warnings == []  # a normalised feature needs no repair
    assert again.store_id == store.store_id and again.enabled == store.enabled and again.dwell_s == store.dwell_s
    assert again.opening_hours == store.opening_hours and again.timezone == store.timezone
    assert again.fence.kind == store.fence.kind
    if store.fence.kind == "polygon":
        # the same lon/lat geometry; its area in plane metres depends a little on which vertex is
        # the plane's origin (cos of its latitude), and a repaired ring may start elsewhere
        assert geojson_shape(again.feature["geometry"]).equals(geojson_shape(first["geometry"]))
        assert again.fence.shape.area == pytest.approx(store.fence.shape.area, rel=1e-4)
    else:
        assert (again.fence.lat, again.fence.lon, again.fence.radius_m) == (store.fence.lat, store.fence.lon,
                                                                            store.fence.radius_m)
    # and a third time, to be sure it is a fixed point
    assert store_from_feature(again.feature)[0].feature == first


def test_round_trip_keeps_extra_properties():
    store, _ = store_from_feature(ROUND_TRIP["point"])
    assert store.feature["properties"]["extra"] == {"k": [1, 2], "address": "Via Roma 1", "phone": "+39 02"}
    again, _ = store_from_feature(store.feature)
    assert again.feature["properties"]["extra"] == {"k": [1, 2], "address": "Via Roma 1", "phone": "+39 02"}
