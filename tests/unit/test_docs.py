"""The README's settings table lists every setting a service or the launcher reads."""
from pathlib import Path

from vicino.services.geo.settings import GeoSettings
from vicino.services.launcher.settings import LauncherSettings
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.scheduler.settings import SchedulerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [f"VICINO_{name.upper()}" for cls in (GeoSettings, RecommenderSettings, LauncherSettings, PushSettings,
                                                                             SchedulerSettings) for name in cls.model_fields
               if f"`VICINO_{name.upper()}`" not in README]
    assert not missing, f"README settings table lacks {missing}"


def test_the_readme_lists_every_device_route_with_who_may_call_it():
    """The geo table's device rows agree with the OpenAPI's access declarations (x-vicino-roles)."""
    import re

    from vicino.services.geo.app import create_app
    from testbed.processes import ADMIN_TOKEN, TOKEN_SECRET

    app = create_app(GeoSettings(redis_url="redis://127.0.0.1:1", admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET))
    section = README.split("\n### Geo service\n")[1].split("\n### ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        for method, path in re.findall(r"`([A-Z]+) (/v1/[^`?]*)", cells[0]):
            rows[(method, path)] = cells[1]
    ops = [(m.upper(), p, op) for p, item in app.openapi()["paths"].items() if p.startswith("/v1/devices")
           for m, op in item.items()]
    assert len(ops) >= 7
    for method, path, op in ops:
        who = rows.get((method, path))
        assert who is not None, f"README's geo table has no row for {method} {path}"
        for role in op["x-vicino-roles"]:
            assert role == "admin" or role in who, f"{method} {path}: {role} not in {who!r}"
        assert ("its own device" in who) == (op["x-vicino-device-token"] == "own"), f"{method} {path}: {who!r}"
