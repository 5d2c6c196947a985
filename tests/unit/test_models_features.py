"""vicino.models.features: band names, customer and item features, the catalogue, feature matrices."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vicino.models.data import DAY_S
from vicino.models.features import (FREQ_EDGES, PRICE_EDGES, RECENCY_EDGES_DAYS, ItemInfo, band, feature_matrix,
                             item_activity_features, item_feature_names, item_info, read_catalog, user_features)
from tests.unit.test_models_data import T0, events, it


def test_band_names():
    assert band(0.5, PRICE_EDGES) == "0-1"
    assert band(2, PRICE_EDGES) == "2-5"            # lo <= x < hi
    assert band(4.99, PRICE_EDGES) == "2-5"
    assert band(20, PRICE_EDGES) == "20-inf"
    assert band(1e6, PRICE_EDGES) == "20-inf"
    assert band(-3, PRICE_EDGES) == "0-1"           # below the first edge: the first band
    assert band(0, FREQ_EDGES) == "0-1" and band(7, FREQ_EDGES) == "5-10" and band(50, FREQ_EDGES) == "50-inf"
    assert band(6.5, RECENCY_EDGES_DAYS) == "0-7" and band(400, RECENCY_EDGES_DAYS) == "365-inf"


def test_user_features_country_channel_mix_frequency_recency():
    ev = events(
        # c1: 3 purchase days (one day twice), last 3 days before the end, 4 web + 1 store rows; mostly UK
        it(1, "c1", "A", ts=T0 - 40 * DAY_S, country="United Kingdom"),
        it(2, "c1", "B", ts=T0 - 40 * DAY_S + 60, country="United Kingdom"),
        it(3, "c1", "A", ts=T0 - 20 * DAY_S, country="France"),
        it(4, "c1", "C", ts=T0 - 3 * DAY_S, country="United Kingdom"),
        it(5, "c1", "C", "view", ts=T0 - DAY_S, channel="store"),
        # c2: only views on the app, no country: no recency band, freq 0
        it(6, "c2", "A", "view", ts=T0 - DAY_S, channel="app"))
    users = np.array([ev.user_ids.index("c1"), ev.user_ids.index("c2")])
    f1, f2 = user_features(ev, users, T0)
    assert f1 == ["country:United Kingdom", "channel:web:75-100", "channel:store:0-25", "freq:2-5", "recency:0-7"]
    assert f2 == ["channel:app:75-100", "freq:0-1"]


def test_channel_share_quarters():
    ev = events(it(1, "c1", "A", channel="web"), it(2, "c1", "A", "view", channel="app"))
    (f,) = user_features(ev, np.array([0]), T0)
    assert "channel:web:50-75" in f and "channel:app:50-75" in f   # exactly half: the upper quarter's start


def test_item_features_from_description_price_and_catalogue(tmp_path):
    ev = events(it(1, "c1", "85123A", quantity=6, value=15.3), it(2, "c2", "85123A", quantity=2, value=5.9),
                it(3, "c2", "85123A", quantity=1, value=2.55), it(4, "c1", "22423", quantity=1, value=12.75),
                it(5, "c1", "NEW1", "view"))
    cat = tmp_path / "offers.json"
    cat.write_text(json.dumps({"offers": [{"offer_id": "o1", "item_ids": ["22423"], "category": "CAKE STAND",
                                           "price": 25.0, "brand": "Regency"}]}))
    info = item_info(ev, {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER", "22423": "REGENCY CAKESTAND 3 TIER",
                          "84406B": "CREAM CUPID HEARTS COAT HANGER"}, read_catalog(cat))
    # the median unit price of 2.55, 2.95, 2.55 is 2.55
    assert info["85123A"] == ItemInfo("T-LIGHT HOLDER", 2.55, None)
    assert item_feature_names(info["85123A"]) == ["cat:T-LIGHT HOLDER", "price:2-5"]
    # the catalogue wins over the description and the sales
    assert item_feature_names(info["22423"]) == ["cat:CAKE STAND", "price:20-inf", "brand:Regency"]
    # an item known only by its description, and one with nothing known
    assert item_feature_names(info["84406B"]) == ["cat:HOME"]
    assert item_feature_names(info["NEW1"]) == [] and item_feature_names(None) == []


def test_item_activity_rank_and_age():
    rows = [it(n, f"c{n}", "HOT", ts=T0 - DAY_S) for n in range(3)]
    rows += [it(10, "c1", "OLD", ts=T0 - 400 * DAY_S), it(11, "c1", "WARM", ts=T0 - 10 * DAY_S),
             it(12, "c2", "WARM", ts=T0 - 45 * DAY_S)]
    ev = events(*rows)
    codes = np.array([ev.item_ids.index(i) for i in ("HOT", "WARM", "OLD")])
    hot, warm, old = item_activity_features(ev, codes, T0)
    assert hot == ["rank30:0-20", "age:0-30"]
    assert warm == ["rank30:0-20", "age:30-90"]
    assert old == ["age:365-inf"]      # not sold in the last 30 days: no rank


def test_feature_matrix_layout_and_normalisation():
    per = [["a", "b"], ["b"], [], ["zzz"]]
    m = feature_matrix(per, ["a", "b"], identity=True).toarray()
    assert m.shape == (4, 4 + 2)
    np.testing.assert_allclose(m[0], [1 / 3, 0, 0, 0, 1 / 3, 1 / 3])      # identity first, then the features
    np.testing.assert_allclose(m[1], [0, 1 / 2, 0, 0, 0, 1 / 2])
    np.testing.assert_allclose(m[2], [0, 0, 1, 0, 0, 0])                   # no feature: identity alone
    np.testing.assert_allclose(m[3], [0, 0, 0, 1, 0, 0])                   # unknown names are ignored
    s = feature_matrix(per, ["a", "b"], identity=True, feature_share=0.2).toarray()
    np.testing.assert_allclose(s[0], [0.8, 0, 0, 0, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(s[2], [0, 0, 1, 0, 0, 0])
    n = feature_matrix(per, ["a", "b"], identity=False).toarray()
    np.testing.assert_allclose(n, [[0.5, 0.5], [0, 1], [0, 0], [0, 0]])
    assert np.allclose(m.sum(axis=1), 1) and m.dtype == np.float32


def test_every_feature_name_is_prefixed_and_stable():
    from vicino.models.pipeline import TrainSettings
    from vicino.models.training import prepare
    from vicino.models.data import load_history, events_of
    from tests.unit.test_models_data import FIXTURES

    h = load_history(FIXTURES / "online_retail_slice.csv")
    ev = events_of(h.table)
    data = prepare(ev, float(ev.ts.max()), item_info(ev, h.descriptions), TrainSettings().matrix())
    prefixes = {f.split(":", 1)[0] for f in data.user_feature_names}
    assert prefixes == {"country", "channel", "freq", "recency"}
    assert {f.split(":", 1)[0] for f in data.item_feature_names} == {"cat", "price", "rank30", "age"}
    assert "country:United Kingdom" in data.user_feature_names and "cat:T-LIGHT HOLDER" in data.item_feature_names
    assert data.user_feature_names == sorted(data.user_feature_names)
    with pytest.raises(ValueError):
        data.item_feature_names.index("price:20+")  # the open band is "lo-inf"
