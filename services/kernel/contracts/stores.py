"""The store catalogue, owned and written by the geo service, published for others to read.

`STORES_FEATURES` maps a store id to its normalised GeoJSON Feature (properties include `name`,
`brand`, `opening_hours` in OSM syntax, `timezone`); `STORES_CHANGES` is the change log
(`seq`, `op`: upsert|delete, `ids`: JSON list) that a reader follows to keep a local copy fresh.
"""
from __future__ import annotations

STORES_FEATURES = "vicino:{stores}:features"      # hash: store_id -> normalised GeoJSON Feature
STORES_SEQ = "vicino:{stores}:seq"                # counter: one per change-log entry
STORES_CHANGES = "vicino:{stores}:changes"        # stream: {seq, op: upsert|delete, ids: json}
