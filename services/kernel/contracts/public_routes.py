"""Which service owns which public path: the one routing table of the front door.

`vicino up`'s front door dispatches with it in-process; the Kubernetes Ingress and the compose
proxy (nginx) carry the same table as one regular expression per collection and sub-resource
(ingress-nginx sorts regex paths longest first: see infra/README.md), and tests check that
both agree with it and that every operation of every service's OpenAPI lands on its owner.
Pure: no I/O.

A path `/v1/<collection>/...` belongs to the collection's owner, except the sub-resources a
different service keeps about the same thing (a store's inventory is the recommender's, a
customer's consent is geo's). A custom method on a whole collection (`/v1/customers:batch`, in
the `:verb` form of Google's API design guide) is a collection of its own here: its path is
`customers:batch`, not under `customers/`, and only the verbs named in the table are routed."""
from __future__ import annotations

import re

SERVICES = ("geo", "recommender", "push", "scheduler")

COLLECTION_OWNERS: dict[str, str] = {
    # geo: the fences, the phones, where they are and who may use the API; consent in bulk
    "stores": "geo", "devices": "geo", "locations": "geo", "keys": "geo", "audit": "geo", "events": "geo",
    "consents:batch": "geo",
    # recommender: customers and what they buy, offers, campaigns and the decisions of visits, KPIs and models
    "customers": "recommender", "customers:batch": "recommender", "identifiers": "recommender",
    "interactions": "recommender", "offers": "recommender", "rules": "recommender", "campaigns": "recommender",
    "visits": "recommender", "kpis": "recommender", "model": "recommender", "models": "recommender",
    # push gateway: deliveries and their opens
    "deliveries": "push",
    # scheduler: the periodic jobs
    "jobs": "scheduler",
}

# (collection, sub-resource) -> owner, for `/v1/<collection>/<id>/<sub-resource>[/...]`
SUB_RESOURCE_OWNERS: dict[tuple[str, str], str] = {
    ("stores", "inventory"): "recommender",
    ("stores", "offers"): "recommender",
    ("customers", "consent"): "geo",
    ("customers", "location-data"): "geo",
}


def owner_of(path: str) -> str | None:
    """The service that serves `path` (a request path, not a template), or None when no service
    has a route under it."""
    if not path.startswith("/v1/"):
        return None
    parts = path[4:].split("/", 3)
    owner = COLLECTION_OWNERS.get(parts[0])
    if owner is not None and len(parts) >= 3:
        owner = SUB_RESOURCE_OWNERS.get((parts[0], parts[2]), owner)
    return owner


def nginx_rules() -> list[tuple[str, str]]:
    """The table as ordered (regular expression, owner) pairs, first match wins: the form an
    nginx `location ~` block or an ingress-nginx regex path takes."""
    rules = [(rf"^/v1/{re.escape(c)}/[^/]+/{re.escape(s)}(/|$)", owner)
             for (c, s), owner in SUB_RESOURCE_OWNERS.items()]
    for service in SERVICES:
        names = sorted(c for c, o in COLLECTION_OWNERS.items() if o == service)
        rules.append((rf"^/v1/({'|'.join(re.escape(n) for n in names)})(/|$)", service))
    return rules
