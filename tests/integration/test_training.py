"""`train_and_publish` end to end on real Online Retail data: the versions it writes, the gate
that decides publication, CURRENT left alone when it refuses, and the `vicino train` command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from vicino.models.pipeline import TrainSettings, train_and_publish
from vicino.services.cli.train import train_command
from vicino.services.kernel.contracts.model_artifact import current_version, model_scores, read_version

ROOT = Path(__file__).resolve().parents[2]
SLICE = ROOT / "tests" / "fixtures" / "online_retail_slice.csv"
RECENT = ROOT / "services" / "launcher" / "demo_data" / "online_retail_recent.csv.gz"   # real, 2011-10..12
FAST = TrainSettings(no_components=16, epochs=5, num_threads=2, blend_weights=(0.0, 1.0, 4.0),
                     blend_half_lives=(30.0, 365.0))


def test_slice_end_to_end_gate_refuses_without_validation_customers(tmp_path):
    stages = []
    report = train_and_publish(SLICE, tmp_path, publish=True, settings=FAST,
                               progress=lambda stage, done, total: stages.append((stage, done, total)))
    # the slice has a few invoices from 2010-12 and 2011-07: nobody to validate on
    assert not report.gate_passed and not report.published
    assert report.reason.startswith("not published:") and "validation" in report.reason
    assert current_version(tmp_path) is None and report.current is None
    art = read_version(tmp_path, report.version)                # written all the same, and loadable
    m = art.manifest
    assert len(m.user_ids) == 92 and len(m.item_ids) > 800
    assert m.item_feature_map["85123A"][:2] == ["cat:T-LIGHT HOLDER", "price:2-5"]
    assert "country:United Kingdom" in m.user_features and m.popular_items[0] in m.item_ids
    assert m.data_window["rows"] == report.data_window["rows"] > 1500 and m.data_window["format"] == "online-retail"
    assert m.settings["epochs"] == 5 and m.settings["features"]["price"] == [0, 1, 2, 5, 10, 20]
    assert m.metrics["gate"] == {"passed": False, "reason": report.reason.removeprefix("not published: ")}
    assert {s for s, _, _ in stages} >= {"load", "test", "final", "write"}
    assert ("final", 5, 5) in stages
    # forcing it publishes, and says so
    forced = train_and_publish(SLICE, tmp_path, publish=True, settings=FAST.replace(force_publish=True))
    assert forced.published and "despite the gate" in forced.reason
    assert current_version(tmp_path) == forced.version != report.version


@pytest.fixture(scope="module")
def recent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return root, train_and_publish(RECENT, root, publish=True, settings=FAST)


def test_recent_history_passes_the_gate_and_is_published(recent_run):
    root, report = recent_run
    assert report.gate_passed and report.published, report.reason
    assert current_version(root) == report.version == report.current
    val = report.metrics["validation"]
    assert val["users"] >= 100 and val["all"]["blended"]["precision"] > val["all"]["popularity"]["precision"]
    assert report.windows["test_start"] == "2011-11-09T00:00:00+00:00"
    test = report.metrics["test"]
    assert test["users"] > 500
    for scope in ("all", "new"):
        for name in ("lightfm", "blended", "popularity", "popularity_recent", "repeat", "repeat_recent",
                     "repeat_count"):
            r = test[scope][name]
            assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0.5 < r["auc"] <= 1, (scope, name, r)
    # a learned model and the repeat signal both beat popularity on all items
    assert test["all"]["lightfm"]["precision"] > test["all"]["popularity"]["precision"]
    assert test["all"]["blended"]["precision"] > 1.5 * test["all"]["popularity"]["precision"]
    art = read_version(root, report.version)
    b = art.manifest.blend
    assert b.score_std > 0 and b.repeat_weight in FAST.blend_weights and b.half_life_days in FAST.blend_half_lives
    assert art.manifest.metrics["test"] == json.loads(json.dumps(test))
    # the standardised model score is centred on the training customers' scores
    u = art.user_repr[:200] @ art.item_repr.T + art.user_bias[:200, None] + art.item_bias
    assert abs((u.mean() - b.score_mean) / b.score_std) < 0.5
    assert len(art.manifest.popular_items) == 500


def test_a_refused_publication_leaves_current_alone(recent_run):
    root, first = recent_run
    refused = train_and_publish(RECENT, root, publish=True, settings=FAST.replace(gate_margin=100.0,
                                                                                  evaluate_test=False))
    assert not refused.gate_passed and not refused.published and "does not beat popularity" in refused.reason
    assert current_version(root) == first.version
    assert (root / refused.version / "manifest.json").exists() and "test" not in refused.metrics
    # without --publish nothing is published either, whatever the gate says
    quiet = train_and_publish(RECENT, root, publish=False, settings=FAST.replace(evaluate_test=False))
    assert quiet.gate_passed and not quiet.published and quiet.reason.startswith("written, not published")
    assert current_version(root) == first.version


def test_the_published_artifact_scores_a_customer_and_a_new_item(recent_run):
    root, report = recent_run
    art = read_version(root, current_version(root))
    customer = art.manifest.user_ids[0]
    u, b, known = art.user(customer)
    reprs, bias, items_known = art.items(["NEW-SKU", art.manifest.item_ids[0]], [["cat:MUG", "price:2-5"], []])
    assert known and items_known.tolist() == [False, True]
    scores = model_scores(u, b, reprs, bias)
    assert np.isfinite(scores).all() and scores[0] != 0


def test_vicino_train_command(tmp_path, monkeypatch):
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("other")(lambda: None)   # a second command, so `train` is a subcommand as in `vicino`
    monkeypatch.setenv("VICINO_MODEL_DIR", str(tmp_path / "from-env"))
    out = tmp_path / "report.json"
    r = CliRunner().invoke(app, ["train", "--data", str(SLICE), "--epochs", "2", "--threads", "1", "--publish",
                                 "--report-json", str(out)])
    assert r.exit_code == 3, r.output          # written, publication refused by the gate
    assert "not published" in r.output and "version" in r.output
    assert current_version(tmp_path / "from-env") is None
    report = json.loads(out.read_text())
    assert report["published"] is False and (tmp_path / "from-env" / report["version"]).is_dir()
    r = CliRunner().invoke(app, ["train", "--data", str(SLICE), "--epochs", "2", "--model-dir", str(tmp_path / "m"),
                                 "--publish", "--force", "--skip-test"])
    assert r.exit_code == 0, r.output
    assert current_version(tmp_path / "m") is not None
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "missing.csv")])
    assert r.exit_code == 2


def test_training_from_a_parquet_log_applies_merges(tmp_path):
    import time

    from vicino.services.kernel.contracts.interactions import CustomerMergedV1
    from vicino.services.kernel.contracts.history_file import read_history
    from vicino.services.kernel.contracts.interaction_log import INTERACTIONS, MERGES
    from vicino.services.recommender.adapters.parquet_log import ParquetLog, merges_table

    table, _ = read_history(SLICE, received_at=time.time())
    log = ParquetLog(str(tmp_path / "history"))
    log.write_partitioned(INTERACTIONS, table, "import-slice")
    # 17850 (the slice's first customer) turns out to be 12583: the smaller id survives
    log.write_partitioned(MERGES, merges_table([CustomerMergedV1(merged="12583", into="17850", ts=time.time())]), "m")
    report = train_and_publish(tmp_path / "history", tmp_path / "models", publish=False, settings=FAST)
    m = read_version(tmp_path / "models", report.version).manifest
    assert m.data_window["format"] == "parquet-log" and m.data_window["merges_applied"] > 0
    assert "12583" in m.user_ids and "17850" not in m.user_ids and len(m.user_ids) == 91
