"""The oracle: the kernel's numpy scorer over a written and re-read artifact gives exactly what
LightFM.predict gives on the same model, for known customers and items and for the cold start
(a customer or item given only by its features). Trained on the real slice of Online Retail."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from vicino.models import artifact
from vicino.models.data import events_of, load_history
from vicino.models.evaluation import top_k
from vicino.models.features import item_info
from vicino.models.pipeline import TrainSettings
from vicino.models.training import fit, prepare
from vicino.services.kernel.contracts.model_artifact import Blend, model_scores, read_version, write_version

SLICE = Path(__file__).resolve().parents[1] / "fixtures" / "online_retail_slice.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    h = load_history(SLICE)
    ev = events_of(h.table)
    s = TrainSettings(no_components=16, epochs=10, num_threads=1)
    data = prepare(ev, float(ev.ts.max()), item_info(ev, h.descriptions), s.matrix())
    model = fit(data, s.model())
    arrays = artifact.export_arrays(model, data)
    fmap = dict(zip(data.item_ids, data.item_feature_lists))
    manifest = artifact.build_manifest(data, version="oracle", data_window={}, settings={}, metrics={},
                                       item_feature_map=fmap, popular_items=[], blend=Blend())
    root = tmp_path_factory.mktemp("models")
    write_version(root, manifest, arrays)
    return data, model, read_version(root, "oracle")


def test_the_model_learned_something(trained):
    data, model, art = trained
    assert data.n_users > 50 and data.n_items > 500
    assert len(data.user_feature_names) > 5 and len(data.item_feature_names) > 20
    assert np.abs(art.item_repr).max() > 0.05


def test_known_pairs_score_as_lightfm_predict(trained):
    data, model, art = trained
    items = np.arange(data.n_items, dtype=np.int32)
    for row in range(0, data.n_users, max(1, data.n_users // 25)):   # 25+ customers × every item
        expected = model.predict(np.full(len(items), row, np.int32), items, user_features=data.user_features,
                                 item_features=data.item_features, num_threads=1)
        u, b, known = art.user(data.user_ids[row])
        assert known
        i_repr, i_bias, i_known = art.items(data.item_ids, [[] for _ in data.item_ids])
        assert i_known.all()
        got = model_scores(u, b, i_repr, i_bias)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        # the same ranking: the same top 20, in the same order
        assert top_k(got[None, :], 20).tolist() == top_k(expected[None, :], 20).tolist()


def _feature_only_row(n_identity: int, names: list[str], chosen: list[str]) -> sp.csr_matrix:
    """A LightFM feature row with only `chosen` features (no identity), normalised to sum 1."""
    row = np.zeros(n_identity + len(names), np.float32)
    for f in chosen:
        row[n_identity + names.index(f)] = 1.0 / len(chosen)
    return sp.csr_matrix(row)


def test_cold_start_customer_scores_as_lightfm_with_a_features_only_row(trained):
    data, model, art = trained
    names = data.user_feature_names
    for chosen in (["country:United Kingdom"], ["country:France", "freq:1-2", "recency:180-365"],
                   [names[0], names[-1]]):
        assert all(f in names for f in chosen), chosen
        u, b, known = art.user("never-seen", chosen + ["country:Atlantis"])   # unknown names are ignored
        assert not known
        feats = sp.vstack([data.user_features, _feature_only_row(data.n_users, names, chosen)]).tocsr()
        items = np.arange(data.n_items, dtype=np.int32)
        expected = model.predict(np.full(len(items), data.n_users, np.int32), items, user_features=feats,
                                 item_features=data.item_features, num_threads=1)
        i_repr, i_bias, _ = art.items(data.item_ids, [[] for _ in data.item_ids])
        np.testing.assert_allclose(model_scores(u, b, i_repr, i_bias), expected, rtol=1e-5, atol=1e-5)
    # nothing known: the zero representation
    u, b, known = art.user("never-seen", ["country:Atlantis"])
    assert not known and b == 0.0 and not u.any()


def test_cold_start_item_scores_as_lightfm_with_a_features_only_row(trained):
    data, model, art = trained
    names = data.item_feature_names
    chosen = ["cat:MUG", "price:2-5"]
    assert all(f in names for f in chosen)
    i_repr, i_bias, known = art.items(["NEW-ITEM", data.item_ids[0]], [chosen, []])
    assert known.tolist() == [False, True]
    feats = sp.vstack([data.item_features, _feature_only_row(data.n_items, names, chosen)]).tocsr()
    users = np.arange(data.n_users, dtype=np.int32)
    expected = model.predict(users, np.full(len(users), data.n_items, np.int32), user_features=data.user_features,
                             item_features=feats, num_threads=1)
    got = np.array([model_scores(*art.user(c)[:2], i_repr[:1], i_bias[:1])[0] for c in data.user_ids])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_exported_feature_rows_are_the_non_identity_embeddings(trained):
    data, model, art = trained
    j = data.item_feature_names.index("cat:MUG")
    np.testing.assert_array_equal(art.item_feature_emb[j], model.item_embeddings[data.n_items + j])
    np.testing.assert_array_equal(art.item_feature_bias[j], model.item_biases[data.n_items + j])
    j = data.user_feature_names.index("country:United Kingdom")
    np.testing.assert_array_equal(art.user_feature_emb[j], model.user_embeddings[data.n_users + j])
    assert art.manifest.user_features == data.user_feature_names
