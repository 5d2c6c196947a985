"""Every Redis key the geo service owns. Hash tags keep multi-key operations in one Cluster slot.

- `{stores}`: all stores and their change log share one slot, so a bulk upsert and the change
  entry that announces it are one transaction.
- `{geo:NNN}`: a device's registration, its visit state, the geofence event stream of its
  shard and the shard's open visits share one slot, so "compare state, save state, append
  events" is one atomic script.
- `{cust:<id>}`: a customer's consent, its audit trail and the set of their devices.
"""
from __future__ import annotations

from vicino.services.kernel.contracts import customer_state as published
from vicino.services.kernel.contracts.geofence_events import device_shard, events_stream_key, shard_tag

# published for other services to read: vicino.services.kernel.contracts.stores
from vicino.services.kernel.contracts.stores import STORES_CHANGES, STORES_FEATURES, STORES_SEQ  # noqa: F401


class DeviceKeys:
    __slots__ = ("registration", "state", "events", "open_visits")

    def __init__(self, device_id: str, shards: int) -> None:
        shard = device_shard(device_id, shards)
        tag = shard_tag(shard)
        self.registration = published.device_registration_key(device_id, shards)  # hash
        self.state = f"vicino:{tag}:device:{device_id}:visits"               # hash {r: rev, s: state}
        self.events = events_stream_key(shard)
        self.open_visits = open_visits_key(shard)


def open_visits_key(shard: int) -> str:
    """Sorted set of the shard's devices with an open visit, scored by their oldest last-inside
    time (fix time): what the exit sweep reads to end the visits of phones gone silent."""
    return f"vicino:{shard_tag(shard)}:open-visits"


def all_event_streams(shards: int) -> list[str]:
    return [events_stream_key(i) for i in range(shards)]


class CustomerKeys:
    __slots__ = ("consent", "consent_log", "consent_audit", "devices")

    """Published for other services to read: vicino.services.kernel.contracts.customer_state."""

    def __init__(self, customer_id: str) -> None:
        self.consent = published.consent_key(customer_id)              # hash: location, marketing, personalisation, updated_at
        self.consent_log = published.consent_log_key(customer_id)      # list: every change, who and when, newest first
        self.consent_audit = published.consent_audit_key(customer_id)  # stream: the changes before that list (legacy)
        self.devices = published.customer_devices_key(customer_id)     # set of device ids
