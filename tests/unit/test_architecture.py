"""The house rules, checked: services never import each other, the domain does no I/O, the kernel
holds only pure contracts, the training library leans only on those contracts, nothing outside
tests/ imports tests, no import cycle anywhere in the project, the serving path never imports
LightFM, and every package folder ships in the wheel under the one namespace `vicino`."""
from __future__ import annotations

import ast
import json
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
MODELS = ROOT / "models"
# Shared folders of services/ that are not services: pure contracts, the shared runtime, and the
# composition roots of the command line, `vicino up` and the front door (which may wire every service)
NOT_SERVICES = ("kernel", "runtime", "launcher", "cli", "front_door")
SERVICE_PACKAGES = sorted(p.name for p in SERVICES.iterdir()
                          if p.is_dir() and (p / "__init__.py").exists() and p.name not in NOT_SERVICES)
IO_MODULES = {"redis", "httpx", "fastapi", "starlette", "uvicorn", "requests", "socket", "subprocess", "asyncio",
              "pyarrow", "hiredis", "aiohttp"}
NETWORK_MODULES = {"redis", "httpx", "fastapi", "starlette", "uvicorn", "requests", "hiredis", "aiohttp",
                   "prometheus_client"}
# Folders whose Python files are the project's (tests/ is checked for cycles but may import itself)
PROJECT_TREES = {"vicino": ROOT / "vicino", "vicino.services": SERVICES, "vicino.models": MODELS,
                 "bench": ROOT / "bench", "loadtests": ROOT / "loadtests", "testbed": ROOT / "testbed",
                 "tests": ROOT / "tests"}


def module_name(path: Path) -> str:
    """The dotted name a file is imported as (`services/geo/app.py` -> `vicino.services.geo.app`)."""
    for prefix, tree in sorted(PROJECT_TREES.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(tree):
            parts = list(path.relative_to(tree).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([prefix, *parts])
    raise AssertionError(f"{path} is in no project tree")


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, at module level or inside a function;
    relative imports resolved; `from pkg import name` also yields `pkg.name` (it may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
    return out


def py_files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def all_project_files():
    return [f for tree in PROJECT_TREES.values() for f in py_files(tree)]


def under(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def test_there_is_something_to_check():
    assert {"geo", "recommender", "push_gateway", "scheduler"} <= set(SERVICE_PACKAGES)


@pytest.mark.parametrize("service", SERVICE_PACKAGES)
def test_services_never_import_each_other(service):
    others = [s for s in SERVICE_PACKAGES if s != service]
    for f in py_files(SERVICES / service):
        for mod in imports_of(f):
            for other in others:
                assert not under(mod, f"vicino.services.{other}"), f"{f.relative_to(ROOT)} imports {mod}"
            for root in ("vicino.services.launcher", "vicino.services.cli"):
                assert not under(mod, root), f"{f.relative_to(ROOT)} imports the composition root {mod}"


def test_kernel_is_pure_contracts():
    """The kernel imports nothing of the services or the runtime, and no network or web library."""
    for f in py_files(SERVICES / "kernel"):
        for mod in imports_of(f):
            if under(mod, "vicino"):
                assert under(mod, "vicino.services.kernel"), f"{f.relative_to(ROOT)} imports {mod}"
            assert mod.split(".")[0] not in NETWORK_MODULES, f"{f.relative_to(ROOT)} imports {mod}"


def test_runtime_imports_only_the_kernel():
    for f in py_files(SERVICES / "runtime"):
        for mod in imports_of(f):
            if under(mod, "vicino"):
                assert under(mod, "vicino.services.kernel") or under(mod, "vicino.services.runtime"), \
                    f"{f.relative_to(ROOT)} imports {mod}"


@pytest.mark.parametrize("service", SERVICE_PACKAGES)
def test_domain_does_no_io(service):
    domain = SERVICES / service / "domain"
    if not domain.exists():
        pytest.fail(f"services/{service} has no domain/ package")
    for f in py_files(domain):
        for mod in imports_of(f):
            assert mod.split(".")[0] not in IO_MODULES, f"{f.relative_to(ROOT)} imports {mod}"
            if under(mod, "vicino"):
                assert not under(mod, "vicino.services.runtime"), f"{f.relative_to(ROOT)} imports {mod}"
                assert "adapters" not in mod.split(".") and "api" not in mod.split("."), \
                    f"{f.relative_to(ROOT)} imports {mod}"


def test_models_lean_only_on_published_contracts():
    for f in py_files(MODELS):
        for mod in imports_of(f):
            if under(mod, "vicino.services"):
                assert under(mod, "vicino.services.kernel"), f"{f.relative_to(ROOT)} imports {mod}"


def test_nothing_outside_tests_imports_tests():
    files = [f for name, tree in PROJECT_TREES.items() if name != "tests" for f in py_files(tree)]
    files += py_files(ROOT / "infra")
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for mod in names:
                assert not under(mod, "tests"), f"{f.relative_to(ROOT)} imports {mod}"
        # and no `python -m tests.…` launched as a process
        assert '"tests.' not in f.read_text(), f"{f.relative_to(ROOT)} runs a module of tests/"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            assert "from tests" not in source and "import tests" not in source, nb.name


def import_graph() -> dict[str, set[str]]:
    files = all_project_files()
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = defaultdict(set)
    for f in files:
        me = module_name(f)
        for mod in imports_of(f):
            if mod in modules and mod != me:
                graph[me].add(mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    """A package's `__init__` importing its own submodules is the one edge left out: importing
    `pkg.mod` always runs `pkg/__init__` first, so that edge is not a cycle of the design."""
    graph = import_graph()
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_serving_never_imports_lightfm():
    for f in py_files(SERVICES):
        for mod in imports_of(f):
            assert mod.split(".")[0] != "lightfm", f"{f.relative_to(ROOT)} imports {mod}"


def test_every_package_folder_ships_under_vicino():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    on_disk = {module_name(p.parent / "__init__.py") for tree in ("vicino", "vicino.services", "vicino.models")
               for p in PROJECT_TREES[tree].rglob("__init__.py") if "__pycache__" not in p.parts}
    assert on_disk == declared, f"missing from pyproject: {sorted(on_disk - declared)}; " \
                                f"listed but gone: {sorted(declared - on_disk)}"
    assert all(p == "vicino" or p.startswith("vicino.") for p in declared)
    assert setuptools["package-dir"] == {"vicino": "vicino", "vicino.services": "services",
                                         "vicino.models": "models"}
