"""Every Redis key the geo service owns. Hash tags keep multi-key operations in one Cluster slot.

- `{stores}`: all stores and their change log share one slot, so a bulk upsert and the change
  entry that announces it are one transaction.
- `{geo:NNN}`: a device's registration, its visit state and the geofence event stream of its
  shard share one slot, so "compare state, save state, append events" is one atomic script.
- `{cust:<id>}`: a customer's consent, its audit trail and the set of their devices.
"""
from __future__ import annotations

from services.kernel.contracts.geofence_events import device_shard, events_stream_key, shard_tag

STORES_FEATURES = "vicino:{stores}:features"      # hash: store_id -> normalised GeoJSON Feature
STORES_SEQ = "vicino:{stores}:seq"                # counter: one per change-log entry
STORES_CHANGES = "vicino:{stores}:changes"        # stream: {seq, op: upsert|delete, ids: json}


class DeviceKeys:
    __slots__ = ("registration", "state", "events")

    def __init__(self, device_id: str, shards: int) -> None:
        shard = device_shard(device_id, shards)
        tag = shard_tag(shard)
        self.registration = f"vicino:{tag}:device:{device_id}:registration"  # hash
        self.state = f"vicino:{tag}:device:{device_id}:visits"               # hash {r: rev, s: state}
        self.events = events_stream_key(shard)


def all_event_streams(shards: int) -> list[str]:
    return [events_stream_key(i) for i in range(shards)]


class CustomerKeys:
    __slots__ = ("consent", "consent_audit", "devices")

    def __init__(self, customer_id: str) -> None:
        tag = f"{{cust:{customer_id}}}"
        self.consent = f"vicino:{tag}:consent"              # hash: location, marketing, personalisation, updated_at
        self.consent_audit = f"vicino:{tag}:consent:audit"  # stream: every change, who and when
        self.devices = f"vicino:{tag}:devices"              # set of device ids
