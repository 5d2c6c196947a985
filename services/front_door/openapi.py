"""One OpenAPI document of the public surface, from each service's own. Pure: no I/O.

Every `/v1` operation keeps its own tags, prefixed with its service's name ("geo: devices"), and
says which service serves it (`x-vicino-service`). Component schemas that two services name
alike but define differently are renamed `<Service><Name>` in the document of the one that
differs, so that no operation ever points at another service's schema."""
from __future__ import annotations

import copy

PUBLIC_PREFIX = "/v1/"
SERVICE_TITLES = {"geo": "Geo", "recommender": "Recommender", "push": "Push", "scheduler": "Scheduler"}


def _rewrite_refs(node, renames: dict[str, str]):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name in renames:
                node["$ref"] = "#/components/schemas/" + renames[name]
        for v in node.values():
            _rewrite_refs(v, renames)
    elif isinstance(node, list):
        for v in node:
            _rewrite_refs(v, renames)


def merge_documents(documents: dict[str, dict], *, title: str = "Vicino API", version: str = "1") -> dict:
    """`documents`: service name -> its OpenAPI document. Only `/v1/` paths are public; a path
    that two services both define is a routing error and raises."""
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {}
    owner_of_path: dict[str, str] = {}
    tags: dict[str, dict] = {}
    for service, original in documents.items():
        doc = copy.deepcopy(original)
        own_schemas = doc.get("components", {}).get("schemas", {})
        renames = {name: SERVICE_TITLES.get(service, service.title()) + name
                   for name, body in own_schemas.items() if name in schemas and schemas[name] != body}
        _rewrite_refs(doc, renames)
        for name, body in own_schemas.items():
            schemas[renames.get(name, name)] = body
        for path, item in doc.get("paths", {}).items():
            if not path.startswith(PUBLIC_PREFIX):
                continue
            if path in owner_of_path:
                raise ValueError(f"{path} is served by both {owner_of_path[path]} and {service}")
            owner_of_path[path] = service
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                operation["tags"] = [f"{service}: {t}" for t in operation.get("tags", [])] or [service]
                operation["x-vicino-service"] = service
                for t in operation["tags"]:
                    tags.setdefault(t, {"name": t, "description": f"served by the {service} service"})
            paths[path] = item
    return {
        "openapi": next(iter(documents.values()), {}).get("openapi", "3.1.0"),
        "info": {"title": title, "version": version,
                 "description": "Every public operation of Vicino, served on one base URL (the front door). "
                                "Authenticate with `Authorization: Bearer <API key, admin token or device token>`; "
                                "each operation's **Access** line says which. Times are RFC 3339 (UTC) in "
                                "responses; epoch seconds are accepted on input."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items()))},
        "tags": sorted(tags.values(), key=lambda t: t["name"]),
    }
