"""The production front door, offline: the Kubernetes Ingress (infra/k8s/base/ingress.yaml, as
kustomize renders it and ingress-nginx would route it) and the compose proxy's nginx.conf
(parsed, routed as nginx would: tests/unit/front_door_support.py says how) send every operation
of every service's OpenAPI to the service that declares it, agree with the routing table
(services/kernel/contracts/public_routes.py) on every path around it, and carry each route's
body limit and the same timeouts. tests/unit/test_front_door_nginx.py runs both in a real nginx."""
from __future__ import annotations

import copy
import inspect
import re

import pytest

from tests.unit.front_door_support import (
    BODY_METHODS, HEALTH, NGINX_CONF, SERVICES, Directive, build_service_apps, body_limits, concrete_paths, effective,
    expected_owner, ingress_locations, ingress_route, load_ingresses, nginx_route, nginx_seconds, nginx_size,
    operations, parse_nginx, table_paths,
)
from tests.unit.test_infra import (  # noqa: F401  (the rendered overlays: a module fixture)
    COMPOSE_TEXT, INFRA, K8S_VERSIONS, TOKENS, by_kind, interpolate, parse_vicino, rendered,
)
from vicino.services.kernel.contracts.public_routes import SUB_RESOURCE_OWNERS, nginx_rules, owner_of

SERVICE_OF_BACKEND = {f"vicino-{s}": s for s in SERVICES}
BULK_INGRESS = "vicino-bulk-import"


@pytest.fixture(scope="module")
def apps():
    return build_service_apps()


@pytest.fixture(scope="module")
def ops(apps):
    return operations(apps)


@pytest.fixture(scope="module")
def ingress():
    return ingress_locations(load_ingresses())


@pytest.fixture(scope="module")
def nginx_server() -> tuple[Directive, Directive]:
    """(the http block, its one server block)"""
    conf = parse_nginx(NGINX_CONF.read_text())
    http = conf.one("http")
    (server,) = http.all("server")
    return http, server


def ingress_service(locations, path: str) -> str | None:
    loc = ingress_route(locations, path)
    return None if loc is None else SERVICE_OF_BACKEND[loc.service]


def nginx_service(server: Directive, path: str) -> str | None:
    loc = nginx_route(server, path)
    if loc is None:
        return None
    proxy_pass = loc.one("proxy_pass")
    if proxy_pass is None:
        return None  # answered by nginx itself (the 404)
    upstream = re.fullmatch(r"http://([a-z-]+)", proxy_pass.args[0]).group(1)
    return upstream


# ---- routing ------------------------------------------------------------------------------------

def test_the_table_and_its_nginx_rules_agree():
    """The table's two forms (owner_of, nginx_rules in order, first match) route alike."""
    rules = [(re.compile(rx), owner) for rx, owner in nginx_rules()]
    for path in table_paths():
        first = next((owner for rx, owner in rules if rx.search(path)), None)
        assert first == owner_of(path), path


def test_every_operation_reaches_its_service_through_the_ingress_and_the_compose_proxy(ops, ingress, nginx_server):
    _, server = nginx_server
    v1 = [op for op in ops if op.template.startswith("/v1/")]
    assert len(v1) >= 40 and {op.service for op in v1} == set(SERVICES)
    for op in v1:
        for path in concrete_paths(op.template):
            where = f"{op.service} {op.method.upper()} {op.template} as {path}"
            assert owner_of(path) == op.service, f"the table: {where}"
            assert ingress_service(ingress, path) == op.service, f"the Ingress: {where}"
            assert nginx_service(server, path) == op.service, f"nginx.conf: {where}"
    # the front door's health is geo's; every service's own /metrics, /docs and health stay private
    for path in HEALTH:
        assert ingress_service(ingress, path) == nginx_service(server, path) == "geo"
    for op in ops:
        if not op.template.startswith("/v1/") and op.template not in HEALTH:
            assert ingress_service(ingress, op.template) is None, op
            assert nginx_service(server, op.template) is None, op


def test_every_path_around_the_table_goes_where_the_table_says(ingress, nginx_server):
    _, server = nginx_server
    paths = table_paths()
    assert len(paths) > 150
    # every collection and sub-resource of the table is among them: a new one fails here until
    # the Ingress and nginx.conf route it
    for path in paths:
        assert ingress_service(ingress, path) == expected_owner(path), f"the Ingress: {path}"
        assert nginx_service(server, path) == expected_owner(path), f"nginx.conf: {path}"
    # ingress-nginx matches case-insensitively (it writes `~*` for every regex path): an upper-case
    # path reaches a service, whose router answers 404; the compose proxy answers it itself
    assert ingress_service(ingress, "/V1/STORES/x") == "geo"
    assert nginx_service(server, "/V1/STORES/x") is None


def test_the_ingress_routing_does_not_depend_on_how_equal_lengths_are_ordered(ingress):
    """Only a sub-resource path and its collection's path ever match the same request, and the
    sub-resource's is strictly longer: any order of equally long paths routes alike."""
    by_length: dict[int, list] = {}
    for loc in ingress:
        by_length.setdefault(len(loc.path), []).append(loc)
    reordered = [loc for n in sorted(by_length, reverse=True) for loc in reversed(by_length[n])]
    for path in table_paths():
        assert ingress_service(reordered, path) == ingress_service(ingress, path), path
    for (c, s), owner in SUB_RESOURCE_OWNERS.items():
        (sub,) = [loc for loc in ingress if f"/{c}/" in loc.path and f"/{s}(" in loc.path]
        (coll,) = [loc for loc in ingress if re.fullmatch(rf"/v1/{c}(\(/\|\$\)|/)", loc.path)]
        assert len(sub.path) > len(coll.path) and SERVICE_OF_BACKEND[sub.service] == owner


def test_the_compose_proxy_has_the_ingress_locations_in_ingress_order(ingress, nginx_server):
    """nginx.conf is the Ingress as ingress-nginx writes it: the same paths (anchored), in its
    order, to the same services, with the same body limit, buffering and timeouts."""
    http, server = nginx_server
    locations = [d for d in server.all("location") if d.args[0] in ("~", "~*")]
    assert [(loc.args[0], loc.args[1]) for loc in locations] == [("~", "^" + i.path) for i in ingress]
    defaults = {"proxy-connect-timeout": "5", "proxy-send-timeout": "60", "proxy-read-timeout": "60",
                "proxy-request-buffering": "on"}  # ingress-nginx's own defaults
    for loc, ing in zip(locations, ingress):
        where = f"{ing.path} ({ing.ingress['metadata']['name']})"
        assert loc.one("proxy_pass").args == [f"http://{SERVICE_OF_BACKEND[ing.service]}"], where
        assert nginx_size(effective("client_max_body_size", http, server, loc)[0]) == \
            nginx_size(ing.annotation("proxy-body-size")), where
        for directive, annotation in (("proxy_connect_timeout", "proxy-connect-timeout"),
                                      ("proxy_send_timeout", "proxy-send-timeout"),
                                      ("proxy_read_timeout", "proxy-read-timeout")):
            assert nginx_seconds(effective(directive, http, server, loc)[0]) == \
                int(ing.annotation(annotation, defaults[annotation])), f"{where}: {directive}"
        buffering = (effective("proxy_request_buffering", http, server, loc) or ["on"])[0]
        assert buffering == ing.annotation("proxy-request-buffering", "on"), where
        if buffering == "on":  # a legal body stays in memory, never in a temporary file
            assert nginx_size(effective("client_body_buffer_size", http, server, loc)[0]) == \
                nginx_size(ing.annotation("client-body-buffer-size")) == \
                nginx_size(ing.annotation("proxy-body-size")), where
    # what no location claims is nginx's own 404 (problem+json), as ingress-nginx's default backend
    (fallback,) = [d for d in server.all("location") if d.args == ["/"]]
    assert fallback.one("proxy_pass") is None and fallback.one("return").args[0] == "404"
    assert fallback.one("default_type").args == ["application/problem+json"]


# ---- body limits and timeouts -----------------------------------------------------------------

def test_each_route_accepts_exactly_its_largest_legal_body(apps, ops, ingress):
    """The proxy's limit on a route is the largest body its service accepts there from anyone
    (the bulk limit of POST /v1/stores and /v1/offers, for an operator): nothing legal is refused,
    and nothing that every caller would be refused travels to a service."""
    limits = body_limits(apps)
    assert limits["geo"].bulk == {("POST", "/v1/stores"): 256 << 20}
    assert limits["recommender"].bulk == {("POST", "/v1/offers"): 256 << 20}
    largest_at: dict[str, int] = {}
    for op in ops:
        if not op.template.startswith("/v1/"):
            continue
        for path in concrete_paths(op.template):
            loc = ingress_route(ingress, path)
            service_limit = limits[op.service].largest(op.method, op.template) if op.method in BODY_METHODS \
                else limits[op.service].default
            largest_at[loc.path] = max(largest_at.get(loc.path, 0), service_limit)
            if op.method in BODY_METHODS:
                assert nginx_size(loc.annotation("proxy-body-size")) >= service_limit, f"{op} refused at {path}"
    for loc in ingress:
        service = SERVICE_OF_BACKEND[loc.service]
        expected = largest_at.get(loc.path, limits[service].default)
        assert nginx_size(loc.annotation("proxy-body-size")) == expected, loc.path
    bulk = {loc.path for loc in ingress if loc.ingress["metadata"]["name"] == BULK_INGRESS}
    assert bulk == {"/v1/stores$", "/v1/offers$"}


def test_timeouts_leave_room_for_a_bulk_import_and_keep_alive_never_outlives_the_services(ingress, nginx_server):
    import uvicorn

    from vicino.services.cli import serve

    for loc in ingress:
        name = loc.ingress["metadata"]["name"]
        read, send = int(loc.annotation("proxy-read-timeout")), int(loc.annotation("proxy-send-timeout"))
        assert int(loc.annotation("proxy-connect-timeout")) <= 10, name
        assert (read, send) == ((300, 300) if name == BULK_INGRESS else (60, 60)), name
    # nginx must drop an idle upstream connection before uvicorn closes it (else a request sent on
    # a closing connection gets a 502); `vicino serve` keeps uvicorn's default keep-alive timeout
    http, _ = nginx_server
    assert "timeout_keep_alive" not in inspect.getsource(serve)
    uvicorn_keep_alive = uvicorn.Config(app=None).timeout_keep_alive
    upstreams = http.all("upstream")
    assert sorted(u.args[0] for u in upstreams) == sorted(SERVICES)
    for u in upstreams:
        assert int(u.one("keepalive").args[0]) >= 4, u.args
        assert nginx_seconds(u.one("keepalive_timeout").args[0]) < uvicorn_keep_alive, u.args
    assert http.one("proxy_http_version").args == ["1.1"]
    assert ["Connection", ""] in [d.args for d in http.all("proxy_set_header")], "keep-alive needs Connection cleared"


def test_forwarded_headers_are_set_by_the_proxy_never_passed_on(nginx_server):
    http, server = nginx_server
    headers = {d.args[0].lower(): d.args[1] for d in http.all("proxy_set_header")}
    assert headers["x-forwarded-for"] == headers["x-real-ip"] == "$remote_addr", "not $proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme" and headers["host"] == "$http_host"
    assert headers["proxy"] == "", "httpoxy"
    # a location with its own proxy_set_header would drop all of these (nginx inherits none then)
    for loc in server.all("location"):
        assert loc.one("proxy_set_header") is None, loc.args
    # no request path or client address in the access log (paths carry customer and device ids)
    (fmt,) = [d for d in http.all("log_format") if d.args[0] == "vicino"]
    assert not {"$request", "$request_uri", "$uri", "$remote_addr", "$http_x_forwarded_for"} & \
        set(re.findall(r"\$\w+", " ".join(fmt.args[1:])))


# ---- the Ingress as Kubernetes objects ------------------------------------------------------------

def test_the_ingresses_are_rendered_valid_and_point_at_real_services(rendered):
    import kubernetes_validate

    for overlay in ("base", "dev", "prod"):
        objects = rendered[overlay]
        ingresses = by_kind(objects, "Ingress")
        assert set(ingresses) == {"vicino-geo", "vicino-recommender", "vicino-push", "vicino-scheduler",
                                  BULK_INGRESS}, overlay
        services = by_kind(objects, "Service")
        hosts = set()
        for name, ing in ingresses.items():
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(ing, version, strict=True)
            assert ing["apiVersion"] == "networking.k8s.io/v1" and ing["spec"]["ingressClassName"] == "nginx"
            assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true", name
            (rule,) = ing["spec"]["rules"]
            hosts.add(rule.get("host"))
            for p in rule["http"]["paths"]:
                assert p["pathType"] == "ImplementationSpecific", f"{name} {p['path']}: regex paths need it"
                assert p["path"].startswith("/"), "the API server wants an absolute path"
                # RE2 (what Kubernetes and the admission webhook accept): no look-around, no back-reference
                assert not re.search(r"\(\?[=!<]|\\\d", p["path"]), p["path"]
                re.compile(p["path"])
                backend = p["backend"]["service"]
                assert backend["name"] in services, f"{overlay}: {name} -> {backend['name']}"
                assert backend["port"]["name"] in {sp["name"] for sp in services[backend["name"]]["spec"]["ports"]}
            if overlay == "prod":
                (tls,) = ing["spec"]["tls"]
                assert tls == {"hosts": [rule["host"]], "secretName": "vicino-tls"}, name
            else:
                assert "tls" not in ing["spec"] and "host" not in rule, f"{overlay}: {name}"
        assert len(hosts) == 1, f"{overlay}: one host for the whole front door: {hosts}"
        # the routes seen through kustomize are the file's (no overlay moves a path)
        assert sorted((loc.path, loc.service) for loc in ingress_locations(list(ingresses.values()), hosts.pop())) == \
            sorted((loc.path, loc.service) for loc in ingress_locations(load_ingresses()))


def test_the_schema_check_refuses_a_broken_ingress(rendered):
    import kubernetes_validate

    ing = copy.deepcopy(by_kind(rendered["prod"], "Ingress")["vicino-geo"])
    path = ing["spec"]["rules"][0]["http"]["paths"][0]
    path["backend"] = {"serviceName": "vicino-geo", "servicePort": 8000}   # the old v1beta1 shape
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ing, K8S_VERSIONS[-1], strict=True)
    ing = copy.deepcopy(by_kind(rendered["prod"], "Ingress")["vicino-geo"])
    ing["spec"]["tls"][0]["secret"] = ing["spec"]["tls"][0].pop("secretName")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ing, K8S_VERSIONS[-1], strict=True)


# ---- the compose proxy --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    from compose_spec.compose_spec import PyOptions

    parsed = PyOptions(apply_merge=True).from_yaml(interpolate(COMPOSE_TEXT, TOKENS))
    parsed.validate()
    return parsed.to_dict()


def test_the_compose_proxy_is_the_one_published_port_and_reaches_each_service(compose, nginx_server):
    http, server = nginx_server
    services = compose["services"]
    proxy = services["proxy"]
    image, _, tag = proxy["image"].partition(":")
    assert image == "nginx" and re.fullmatch(r"\d+\.\d+\.\d+-alpine", tag), "a pinned nginx release"
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert published == {"proxy": ["127.0.0.1:8000:8080"]}, "one door, on loopback"
    (listen,) = server.all("listen")
    assert listen.args == ["8080"]
    (mount,) = [v for v in proxy["volumes"] if v.split(":")[1] == "/etc/nginx/nginx.conf"]
    source, _, mode = mount.split(":")
    assert (INFRA / source).resolve() == NGINX_CONF.resolve() and mode == "ro", "this file, read-only"
    # unprivileged and read-only: pid and temporary files on the tmpfs
    assert proxy["user"] == "101:101" and proxy["read_only"] is True and proxy["tmpfs"] == ["/tmp"]
    main = parse_nginx(NGINX_CONF.read_text())
    assert main.one("pid").args[0].startswith("/tmp/") and main.one("user") is None
    for d in http.block:
        if d.name.endswith("_temp_path"):
            assert d.args[0].startswith("/tmp/"), d.name
    assert proxy["command"] == ["nginx", "-g", "daemon off;"] and main.one("daemon") is None
    # each upstream is its compose service, on the port its command serves
    for upstream in http.all("upstream"):
        (server_line,) = upstream.all("server")
        host, port = server_line.args[0].split(":")
        assert host == upstream.args[0], "an upstream is named after its service"
        params = parse_vicino(services[host]["command"])
        assert services[host]["command"][:2] == ["serve", host] and params["port"] == int(port)
        dep = proxy["depends_on"][host]
        assert dep == {"condition": "service_healthy", "restart": True}, host
    health = proxy["healthcheck"]["test"]
    assert health[0] == "CMD" and health[-1] == "http://127.0.0.1:8080/healthz"
    assert nginx_service(server, "/healthz") == "geo"
