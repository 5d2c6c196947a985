"""The house rules, checked: services never import each other, the domain does no I/O,
the serving path never imports LightFM."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_PACKAGES = sorted(p.name for p in SERVICES.iterdir()
                          if p.is_dir() and (p / "__init__.py").exists() and p.name not in ("kernel", "runtime", "launcher"))
IO_MODULES = {"redis", "httpx", "fastapi", "starlette", "uvicorn", "requests", "socket", "subprocess", "asyncio"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def py_files(folder: Path):
    return sorted(folder.rglob("*.py"))


def test_there_is_something_to_check():
    assert "geo" in SERVICE_PACKAGES


@pytest.mark.parametrize("service", SERVICE_PACKAGES)
def test_services_never_import_each_other(service):
    others = [s for s in SERVICE_PACKAGES if s != service]
    for f in py_files(SERVICES / service):
        for mod in imports_of(f):
            for other in others:
                assert not mod.startswith(f"vicino.services.{other}"), f"{f.relative_to(ROOT)} imports services.{other}"


def test_kernel_imports_no_service():
    for f in py_files(SERVICES / "kernel"):
        for mod in imports_of(f):
            assert not any(mod.startswith(f"vicino.services.{s}") for s in SERVICE_PACKAGES + ["launcher"]), f


@pytest.mark.parametrize("service", SERVICE_PACKAGES)
def test_domain_does_no_io(service):
    domain = SERVICES / service / "domain"
    if not domain.exists():
        pytest.fail(f"services/{service} has no domain/ package")
    for f in py_files(domain):
        for mod in imports_of(f):
            root = mod.split(".")[0]
            assert root not in IO_MODULES, f"{f.relative_to(ROOT)} imports {mod}"
            if mod.startswith(("vicino.services.", ".")):
                assert "adapters" not in mod and "api" not in mod.split("."), f"{f.relative_to(ROOT)} imports {mod}"


def test_serving_never_imports_lightfm():
    for f in py_files(SERVICES):
        for mod in imports_of(f):
            assert mod.split(".")[0] != "lightfm", f"{f.relative_to(ROOT)} imports {mod}"
