"""Store files for `vicino stores import` and the demo: GeoJSON FeatureCollection, or CSV with lat/lon.

CSV columns (case-insensitive; the first alias present wins):
  id: store_id | id | idimpianto        lat: lat | latitude | latitudine
  lon: lon | lng | longitude | longitudine
  optional: name, brand, radius_m, dwell_s, opening_hours, timezone, enabled; any other column
  is kept under properties.extra. A row without radius_m gets `default_radius_m`.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Iterator

import orjson

ALIASES = {
    "store_id": ("store_id", "id", "idimpianto"),
    "lat": ("lat", "latitude", "latitudine"),
    "lon": ("lon", "lng", "longitude", "longitudine"),
}


class StoreFileError(ValueError):
    pass


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def read_features(path: Path, default_radius_m: float = 80.0) -> list[dict]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".geojson", ".json")):
        with _open_text(path) as f:
            try:
                doc = orjson.loads(f.read())
            except orjson.JSONDecodeError as e:
                raise StoreFileError(f"{path}: not valid JSON ({e})") from None
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
            return doc["features"]
        if isinstance(doc, dict) and doc.get("type") == "Feature":
            return [doc]
        raise StoreFileError(f"{path}: expected a GeoJSON FeatureCollection")
    if name.endswith(".csv"):
        return list(_csv_features(path, default_radius_m))
    raise StoreFileError(f"{path}: unknown format; use .geojson/.json (FeatureCollection) or .csv with lat/lon")


def _number_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _csv_features(path: Path, default_radius_m: float) -> Iterator[dict]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise StoreFileError(f"{path}: empty CSV")
        lower = {h.lower().strip(): h for h in reader.fieldnames}
        cols = {}
        for key, aliases in ALIASES.items():
            found = next((lower[a] for a in aliases if a in lower), None)
            if found is None:
                raise StoreFileError(f"{path}: no {key} column (one of {', '.join(aliases)})")
            cols[key] = found
        used = set(cols.values())
        for row in reader:
            props: dict = {}
            extra: dict = {}
            for header, value in row.items():
                if header in used or header is None:
                    continue
                key = header.lower().strip()
                if key in ("name", "brand", "opening_hours", "timezone"):
                    if value:
                        props[key] = value
                elif key in ("radius_m", "dwell_s"):
                    if value:
                        props[key] = _number_or_text(value)
                elif key == "enabled":
                    if value:
                        props[key] = value.strip().lower() in ("1", "true", "yes")
                elif value:
                    extra[key] = value
            props.setdefault("radius_m", default_radius_m)
            if extra:
                props["extra"] = extra
            yield {"type": "Feature", "id": row[cols["store_id"]],
                   "geometry": {"type": "Point", "coordinates": [_number_or_text(row[cols["lon"]]),
                                                                 _number_or_text(row[cols["lat"]])]},
                   "properties": props}
