"""What a user installs: a wheel built from the repository holds one top-level package, `vicino`
(generic names such as `services` or `models` in site-packages would collide with other
distributions), with the demo data and the `vicino` console script."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_has_vicino_as_its_only_top_level_package(tmp_path):
    # no build isolation: setuptools comes from the test extras, nothing is fetched here
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("vicino-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vicino"}, tops
    assert "vicino/services/geo/app.py" in names and "vicino/models/training.py" in names
    assert "vicino/services/launcher/demo_data/fuel_stations_mi_rm.csv" in names
    assert not any(n.startswith(("vicino/tests", "vicino/testbed", "vicino/bench")) for n in names)
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "vicino = vicino.services.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
