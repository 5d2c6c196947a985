"""The notebooks executed end to end as a person runs them: a Jupyter kernel of this venv, the
parameters from environment variables, a copy of the notebook in tmp_path (the committed files
keep no outputs), real data, and a real recommender process for the switch check.

`run_notebook` is the one way these tests execute a notebook; reuse it for new ones."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from vicino.services.kernel.contracts.model_artifact import current_version
from tests.conftest import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SLICE = ROOT / "tests" / "fixtures" / "online_retail_slice.csv"
RECENT = ROOT / "services" / "launcher" / "demo_data" / "online_retail_recent.csv.gz"   # real, 2011-10..12
KERNEL = "vicino-notebooks"
CELL_TIMEOUT_S = 300
SKIP_SWITCH = "no service URL (VICINO_URL): skipping the switch check"


def run_notebook(name: str, env: dict[str, str], tmp_path: Path) -> nbformat.NotebookNode:
    """Executes a copy of `notebooks/<name>` and returns the executed notebook.

    The kernel is this interpreter (`sys.executable`, the venv's python), through a kernelspec
    written under `tmp_path`, so that no kernelspec of the machine (a user's `python3` pointing
    elsewhere) is ever picked. It runs in `tmp_path/notebook-<stem>/`, a directory of its own:
    the kernel imports from its working directory first, and a `models/` folder there (a model
    dir, say) would shadow the project's `models` package. Its environment is this process's
    without any `VICINO_*` or `MPLBACKEND` variable (figures render inline, with Agg), plus `env`.
    Each cell may take CELL_TIMEOUT_S. A failing cell raises nbclient's CellExecutionError with
    the cell and its traceback; the notebook as far as it ran is written beside the copy as
    `executed-<name>` either way, to look at after a failure."""
    kernels = tmp_path / "jupyter-kernels"
    (kernels / KERNEL).mkdir(parents=True, exist_ok=True)
    (kernels / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vicino (tests)", "language": "python"}))
    workdir = tmp_path / f"notebook-{Path(name).stem}"
    workdir.mkdir(exist_ok=True)
    shutil.copyfile(NOTEBOOKS / name, workdir / name)
    nb = nbformat.read(workdir / name, as_version=4)
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
                            connection_file=str(workdir / "kernel-connection.json"))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}})
    kernel_env = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_") and k != "MPLBACKEND"}
    kernel_env.update(PYTHONUNBUFFERED="1", IPYTHONDIR=str(workdir / "ipython"), **env)
    try:
        client.execute(env=kernel_env, cleanup_kc=True)   # cleanup_kc: shut the kernel down afterwards
    finally:
        nbformat.write(client.nb, workdir / f"executed-{name}")
    return client.nb


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def text(c: nbformat.NotebookNode) -> str:
    """A code cell's printed text and plain-text results."""
    return "".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in c.outputs)


def images(nb: nbformat.NotebookNode) -> list[str]:
    """The ids of the cells that drew a figure."""
    return [c.id for c in nb.cells if c.cell_type == "code"
            and any("image/png" in o.get("data", {}) for o in c.outputs)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_retrain_without_a_service_trains_writes_a_version_and_skips_the_switch(tmp_path):
    committed = digest(NOTEBOOKS / "retrain.ipynb")
    models = tmp_path / "model-dir"
    nb = run_notebook("retrain.ipynb", {"VICINO_NOTEBOOK_DATA": str(SLICE), "VICINO_MODEL_DIR": str(models),
                                        "VICINO_NOTEBOOK_FAST": "1"}, tmp_path)
    assert text(cell(nb, "switch")).strip() == SKIP_SWITCH
    assert "1,673 interactions, 92 customers" in text(cell(nb, "load"))
    # a version is written; the slice has nobody to validate on, so the gate refuses and CURRENT stays unset
    versions = [p.name for p in models.iterdir() if p.is_dir()]
    assert len(versions) == 1 and (models / versions[0] / "manifest.json").exists()
    assert current_version(models) is None
    decision = text(cell(nb, "decision"))
    assert decision.startswith("not published:") and f"version {versions[0]}: not published" in decision
    assert {"per-day", "per-channel-type", "tail-activity", "eval-plot"} <= set(images(nb))
    assert "no blend tuning" in text(cell(nb, "blend-plot"))
    assert digest(NOTEBOOKS / "retrain.ipynb") == committed          # outputs never written back


def test_retrain_publishes_through_the_gate_and_the_served_recommender_switches(redis_url, geo_url, tmp_path):
    from tests.support import served_service

    models = tmp_path / "model-dir"
    models.mkdir()
    with served_service("recommender", redis_url, tmp_path, env={
            "VICINO_GEO_URL": geo_url, "VICINO_MODEL_DIR": str(models), "VICINO_MODEL_POLL_S": "0.5",
            "VICINO_HISTORY_DIR": str(tmp_path / "history")}) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.get(f"{url}/v1/model", headers=admin).json()["serving"] is None
        nb = run_notebook("retrain.ipynb", {"VICINO_NOTEBOOK_DATA": str(RECENT), "VICINO_MODEL_DIR": str(models),
                                            "VICINO_URL": url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
                                            "VICINO_NOTEBOOK_FAST": "1"}, tmp_path)
        version = current_version(models)
        assert version is not None and text(cell(nb, "decision")).startswith("published: blended p@10")
        assert f"{url} serves no model" in text(cell(nb, "before"))
        switch = text(cell(nb, "switch"))
        assert f"{url} switched from no model to {version}" in switch, switch
        assert httpx.get(f"{url}/v1/model", headers=admin).json()["serving"] == version
    assert {"eval-plot", "curve-plot", "blend-plot"} <= set(images(nb))


def test_kpis_without_a_service_says_what_it_needs_and_completes(tmp_path):
    nb = run_notebook("kpis.ipynb", {}, tmp_path)
    assert "kpis.ipynb needs VICINO_URL" in text(cell(nb, "parameters"))
    assert "VICINO_ADMIN_TOKEN" in text(cell(nb, "parameters"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(text(c).strip() == "skipped: no VICINO_URL / VICINO_ADMIN_TOKEN" for c in code[1:])
    assert images(nb) == []


def test_kpis_with_a_service_shows_the_known_history(redis_url, redis_sync, geo_url, tmp_path):
    """The hand-built history of test_kpis_api, served by a real recommender process, rolled up,
    then read and plotted by the notebook."""
    from tests.conftest import make_rec_settings
    from tests.support import served_service
    from tests.integration.test_kpis_api import FROM, TO, roll_up, seed_history

    history = str(tmp_path / "history")
    settings = make_rec_settings(redis_url, geo_url=geo_url, history_dir=history, attribution_window_h=24.0)
    with served_service("recommender", redis_url, tmp_path, env={
            "VICINO_GEO_URL": geo_url, "VICINO_HISTORY_DIR": history, "VICINO_ATTRIBUTION_WINDOW_H": "24"}) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        seed_history(redis_sync, settings.customer_shards, history, http)
        assert FROM in roll_up(redis_url, settings)["rolled_up"]
        nb = run_notebook("kpis.ipynb", {"VICINO_URL": url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
                                         "VICINO_KPI_FROM": FROM, "VICINO_KPI_TO": TO}, tmp_path)
    assert "6 decisions, 2 pushes sent" in text(cell(nb, "fetch"))
    summary = text(cell(nb, "summary"))
    assert "holdout" in summary and "66.67%" in summary   # treated conversion rate 2/3
    assert {"uplift", "stores", "campaigns", "funnel", "daily"} <= set(images(nb))
    campaigns = text(cell(nb, "campaigns"))   # the two campaigns of the history, c-en with a +50.00% uplift
    assert "c-en" in campaigns and "c-it" in campaigns and "+50.00%" in campaigns
    care = text(cell(nb, "care"))
    assert "2 of 5 active customers" in care and "NPS         -50" in care and "1 unanswered" in care
