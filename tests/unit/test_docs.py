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
