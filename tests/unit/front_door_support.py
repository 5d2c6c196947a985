"""What the front door's tests share: the public operations of the four services (from their own
OpenAPI and body limits, apps built but never started), the request paths to route, and two
readings of the production front door, each as its proxy chooses a location:

- the Ingress (infra/k8s/base/ingress.yaml) as ingress-nginx renders it: with `use-regex` on any
  Ingress of a host, every path of the host becomes `location ~* "^<path>"` (case-insensitive);
  the locations are sorted by path, descending, then stably by length, descending (its
  controller.go), and nginx takes the first regex location that matches; nothing matching goes
  to the default backend (a 404);
- infra/nginx/nginx.conf as nginx reads it: exact `=` locations, then the longest prefix (`^~`
  stops there), then regex locations in file order, first match wins, else that longest prefix.

Both match the decoded path without its query string (nginx's `$uri`), as the services' routers do."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vicino.services.kernel.contracts.public_routes import COLLECTION_OWNERS, SUB_RESOURCE_OWNERS, owner_of

ROOT = Path(__file__).resolve().parents[2]
INGRESS_FILE = ROOT / "infra" / "k8s" / "base" / "ingress.yaml"
NGINX_CONF = ROOT / "infra" / "nginx" / "nginx.conf"
SERVICES = ("geo", "recommender", "push", "scheduler")
HEALTH = ("/healthz", "/readyz")   # the front door's health: geo's
BODY_METHODS = {"post", "put", "patch"}
# path parameters that look like the table's own words: an id named "consent" must not move a route
TRICKY_IDS = ("consent", "location-data", "inventory", "offers", "stores", "customers", "v1", "Dev.42_x~", "visits",
              "customers:batch", "a:b")


# ---- the services, as they declare themselves ------------------------------------------------

@dataclass(frozen=True)
class Operation:
    service: str
    method: str      # lower case, as in OpenAPI
    template: str    # /v1/stores/{store_id}


@dataclass
class ServiceLimits:
    default: int                                                # EdgeGuard's default_limit
    bulk: dict[tuple[str, str], int] = field(default_factory=dict)   # (METHOD, path) -> bytes

    def largest(self, method: str, template: str) -> int:
        return self.bulk.get((method.upper(), template), self.default)


def build_service_apps() -> dict:
    """The four apps with their default settings, built and never started (no Redis is
    reached: the URL points at a closed port)."""
    from vicino.services.geo.app import create_app as create_geo
    from vicino.services.geo.settings import GeoSettings
    from vicino.services.push_gateway.app import create_app as create_push
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.recommender.app import create_app as create_recommender
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.scheduler.app import create_app as create_scheduler
    from vicino.services.scheduler.settings import SchedulerSettings

    common = dict(redis_url="redis://127.0.0.1:9/0", admin_token="front-door-admin-token-0123",
                  token_secret="front-door-token-secret-0123")
    return {"geo": create_geo(GeoSettings(**common)),
            "recommender": create_recommender(RecommenderSettings(**common)),
            "push": create_push(PushSettings(**common)),
            "scheduler": create_scheduler(SchedulerSettings(**common), [], run_schedule=False)}


def operations(apps: dict) -> list[Operation]:
    return [Operation(service, method, path) for service, app in apps.items()
            for path, item in app.openapi()["paths"].items() for method in item]


def body_limits(apps: dict) -> dict[str, ServiceLimits]:
    """Each service's body limits as its edge guard enforces them (the default, and the bulk
    routes' larger limit for the roles that may use it)."""
    from vicino.services.runtime.edge_guard import EdgeGuard

    out = {}
    for service, app in apps.items():
        (guard,) = [m for m in app.user_middleware if m.cls is EdgeGuard]
        out[service] = ServiceLimits(guard.kwargs["default_limit"],
                                     {k: v.max_bytes for k, v in (guard.kwargs.get("bulk") or {}).items()})
    return out


def concrete_paths(template: str) -> list[str]:
    """The template with every parameter a plain id, then with every parameter each tricky id."""
    return [re.sub(r"\{[^}]+\}", value, template) for value in ("p-1", *TRICKY_IDS)]


def expected_owner(path: str) -> str | None:
    """Where the front door must send `path`: the table's owner; health to geo; else nowhere."""
    return "geo" if path in HEALTH else owner_of(path)


def table_paths() -> list[str]:
    """Paths around every entry of the table, and around its edges."""
    paths = ["/", "/v1", "/v1/", "/v1/nothing", "/v1/nothing/x", "/metrics", "/docs", "/openapi.json",
             "/redoc", "/healthz/", "/healthzx", "/readyz/x", "/x/healthz", "/x/v1/stores", *HEALTH]
    for c in COLLECTION_OWNERS:
        paths += [f"/v1/{c}", f"/v1/{c}/", f"/v1/{c}/x", f"/v1/{c}/x/y", f"/v1/{c}/x/y/z", f"/v1/{c}x",
                  f"/v1/{c}-x/y", f"/v2/{c}/x", f"/v1/x/{c}"]
    for c, s in SUB_RESOURCE_OWNERS:
        paths += [f"/v1/{c}/x/{s}", f"/v1/{c}/x/{s}/", f"/v1/{c}/x/{s}/y", f"/v1/{c}/x/{s}x", f"/v1/{c}/{s}",
                  f"/v1/{c}/{s}/{s}", f"/v1/{c}/x/y/{s}"]
    # a custom method (`:verb`) is routed only where the table names it, on its collection only
    paths += ["/v1/customers:", "/v1/customers:import", "/v1/customers:batch:x",
              "/v1/customers/x:batch", "/v1/customers/x/consent:batch", "/v1/offers:batch", "/v1/stores:batch",
              "/v1/visits/x/decision", "/v1/visits/x/decision/", "/v1/visit/x/decision", "/v1/visitsx/x"]
    # (no empty segment: nginx merges `//` before it picks a location, while the table reads
    # `/v1/customers//consent` as geo's; neither service has a route with an empty id)
    return sorted(set(paths))


# ---- sizes and times as nginx and ingress-nginx write them --------------------------------------

def nginx_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert m, f"not an nginx size: {text!r}"
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def nginx_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", text)
    assert m, f"not an nginx time: {text!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m.group(2)]


# ---- the Ingress, as ingress-nginx routes it -----------------------------------------------------

ANNOTATION = "nginx.ingress.kubernetes.io/"


@dataclass(frozen=True)
class IngressLocation:
    path: str          # as written in the Ingress
    service: str       # the backend Service's name
    port: str | int
    ingress: dict      # the Ingress object (its annotations apply to this location)

    def annotation(self, name: str, default: str | None = None) -> str | None:
        return self.ingress["metadata"].get("annotations", {}).get(ANNOTATION + name, default)


def load_ingresses(path: Path = INGRESS_FILE) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Ingress"]


def ingress_locations(ingresses: list[dict], host: str | None = None) -> list[IngressLocation]:
    """The locations of one host in ingress-nginx's order: sorted by path descending, then
    stably by length descending (controller.go: two sort.SliceStable in that order)."""
    out = []
    for ing in ingresses:
        for rule in ing["spec"]["rules"]:
            if rule.get("host") != host:
                continue
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                port = svc["port"].get("name", svc["port"].get("number"))
                out.append(IngressLocation(p["path"], svc["name"], port, ing))
    out.sort(key=lambda loc: loc.path, reverse=True)
    out.sort(key=lambda loc: len(loc.path), reverse=True)
    return out


def ingress_route(locations: list[IngressLocation], path: str) -> IngressLocation | None:
    """The location ingress-nginx sends `path` to, or None (its default backend: 404). Every path
    is a case-insensitive regex anchored at the start as soon as one Ingress of the host has
    use-regex (all of ours have it)."""
    assert all(loc.annotation("use-regex") == "true" for loc in locations)
    for loc in locations:
        if re.search("^" + loc.path, path, re.IGNORECASE):
            return loc
    return None


# ---- nginx.conf, parsed --------------------------------------------------------------------------

@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive | None:
        found = self.all(name)
        assert len(found) <= 1, f"{name} given {len(found)} times in {self.name} {self.args}"
        return found[0] if found else None


_TOKEN = re.compile(r"""\s+|\#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


def parse_nginx(text: str) -> Directive:
    """nginx's configuration syntax: directives end in `;`, blocks in `{...}`, `#` comments,
    single- or double-quoted arguments. Fails on anything it cannot read."""
    root = Directive("main", [], [])
    stack, words, pos = [root], [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"nginx.conf: cannot read at {text[pos:pos + 40]!r}"
        pos = m.end()
        dq, sq, punct, word = m.groups()
        if dq is not None or sq is not None:
            words.append(re.sub(r"\\(.)", r"\1", dq if dq is not None else sq))
        elif word is not None:
            words.append(word)
        elif punct == ";":
            assert words, "nginx.conf: an empty directive"
            stack[-1].block.append(Directive(words[0], words[1:]))
            words = []
        elif punct == "{":
            assert words, "nginx.conf: a block without a name"
            d = Directive(words[0], words[1:], [])
            stack[-1].block.append(d)
            stack.append(d)
            words = []
        elif punct == "}":
            assert not words and len(stack) > 1, "nginx.conf: unbalanced }"
            stack.pop()
    assert len(stack) == 1 and not words, "nginx.conf: unterminated block or directive"
    return root


def nginx_route(server: Directive, path: str) -> Directive | None:
    """The location block nginx picks for `path` in `server` (named @locations aside)."""
    locations = [d for d in server.all("location") if not d.args[0].startswith("@")]
    for loc in locations:
        if loc.args[0] == "=" and loc.args[1] == path:
            return loc
    prefixes = [loc for loc in locations if loc.args[0] not in ("=", "~", "~*")]
    best = max((loc for loc in prefixes if path.startswith(loc.args[-1])), key=lambda loc: len(loc.args[-1]),
               default=None)
    if best is not None and best.args[0] == "^~":
        return best
    for loc in locations:
        if loc.args[0] in ("~", "~*") and re.search(loc.args[1], path, re.IGNORECASE if loc.args[0] == "~*" else 0):
            return loc
    return best


def effective(directive_name: str, *scopes: Directive) -> list[str] | None:
    """A directive's arguments as nginx inherits it: the innermost scope that sets it."""
    for scope in reversed(scopes):
        d = scope.one(directive_name)
        if d is not None:
            return d.args
    return None
