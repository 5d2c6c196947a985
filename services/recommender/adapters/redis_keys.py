"""Every Redis key the recommender owns. Hash tags keep multi-key operations in one Cluster slot.

- `{cs:NNN}`: a customer's hot history, deduplication window, identifiers, alias pointers,
  visits and attributes (locale, country), and the interaction stream of the customer's shard, so that ingestion ("seen this event
  id? keep it, log it") is one atomic script per shard.
- `{idn:NNN}`: the identifier directory (identifier → customer), sharded by identifier.
- `{erasures}`: the erasure register (keyed digests of erased customer ids) that the exporter and the
  partition rewrite consult; `{identity}`: the lock that serialises merges.
- `{offers}`, `{inv:<store_id>}`, `{rules}`: the offer catalogue, a store's stock, the campaign rules.
- `{kpis}`: the daily KPI roll-ups (aggregates only: no customer ids).
"""
from __future__ import annotations

import zlib

from vicino.services.kernel.contracts.erasures import ERASURES, erasure_digest, erasure_digests  # noqa: F401  (re-exported)
from vicino.services.kernel.contracts.streams import dead_letter_of
from vicino.services.kernel.contracts.interactions import (customer_shard, customer_shard_tag, interactions_stream_key,
                                                   merged_into_key)

MERGE_LOCK = "vicino:{identity}:merge-lock"  # string with a token, short TTL
# string "<register size>:<latest erased_at>" of the register the last finished apply_erasures run read
ERASURES_APPLIED = "vicino:{erasures}:applied"
# string: digest of (register size, latest erased_at, model versions) the last finished scrub_models run saw
MODELS_SCRUBBED = "vicino:{erasures}:models-scrubbed"
KPI_DAILY = "vicino:{kpis}:daily"  # hash: YYYY-MM-DD -> JSON {date, report, rolled_at}: the KPI roll-ups


class CustomerKeys:
    __slots__ = ("customer_id", "shard", "history", "events", "seen", "identifiers", "merged_into", "aliases",
                 "visits", "visit_info", "redeemed", "attributes", "erasing", "stream")

    def __init__(self, customer_id: str, shards: int) -> None:
        self.customer_id = customer_id
        self.shard = customer_shard(customer_id, shards)
        base = f"vicino:{customer_shard_tag(self.shard)}:customer:{customer_id}"
        self.history = base + ":history"          # zset: event_id -> ts (ms); the most recent N
        self.events = base + ":events"            # hash: event_id -> compact JSON of the interaction
        self.seen = base + ":seen"                # zset: event_id -> accepted_at; the dedup window
        self.identifiers = base + ":identifiers"  # set: "kind:value"
        self.merged_into = merged_into_key(customer_id, shards)  # published: the customer this one was merged into
        self.aliases = base + ":aliases"          # set: customers merged into this one
        self.visits = base + ":visits"            # zset: visit_id -> entered at; the most recent N store visits
        self.visit_info = base + ":visit_info"    # hash: visit_id -> JSON {store_id, entered_at, left_at, ...}
        self.redeemed = base + ":redeemed"        # set: offer ids redeemed
        # hash: locale (BCP 47, canonical), country (ISO 3166-1 alpha-2), updated_at (epoch s): what
        # a CRM import or POST /v1/customers:batch said of the customer
        self.attributes = base + ":attributes"
        # set: every customer of an erasure in progress (the survivor and its aliases), so that a
        # retry after a failure part-way still finds them all; deleted as the erasure's last step
        self.erasing = base + ":erasing"
        self.stream = interactions_stream_key(self.shard)

    def all_owned(self) -> list[str]:
        """Every per-customer key (not the shard stream)."""
        return [self.history, self.events, self.seen, self.identifiers, self.merged_into, self.aliases,
                self.visits, self.visit_info, self.redeemed, self.attributes]


def identifier_key(identifier: str, shards: int) -> str:
    """`identifier` is "kind:value"; the key holds the customer id."""
    shard = zlib.crc32(identifier.encode()) % shards
    return f"vicino:{{idn:{shard:03d}}}:identifier:{identifier}"


def geo_events_dead_letter(stream: str) -> str:
    """Where this service's consumers of a geo event stream put entries they can never handle
    (same hash tag as the stream; owned by the recommender)."""
    return dead_letter_of(stream)

