"""vicino.models.evaluation and vicino.models.split on hand-made examples: every metric computed by hand."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import scipy.sparse as sp

from vicino.models import evaluation
from vicino.models.data import DAY_S, DEFAULT_CHANNEL_WEIGHTS, DEFAULT_TYPE_WEIGHTS, interaction_matrix
from vicino.models.split import eval_set, windows
from vicino.services.kernel.contracts.model_artifact import Blend, repeat_signal
from tests.unit.test_models_data import T0, events, it

SCORES = np.array([[0.9, 0.8, 0.1, 0.5, 0.3],
                   [0.1, 0.2, 0.3, 0.4, 0.5],
                   [0.5, 0.4, 0.3, 0.2, 0.1]])
TRUTH = sp.csr_matrix(np.array([[0, 1, 1, 0, 0],
                                [0, 0, 0, 0, 1],
                                [0, 0, 0, 0, 0]], bool))   # the third customer bought nothing: not counted
BOUGHT = sp.csr_matrix(np.array([[1, 0, 0, 0, 0],
                                 [0, 0, 0, 0, 1],
                                 [0, 0, 0, 0, 0]], bool))


def test_metrics_by_hand_on_all_items():
    m = evaluation.ranking_metrics(SCORES, TRUTH, k=2)
    # top 2: customer 0 → items 0, 1 (one hit, at rank 2); customer 1 → items 4, 3 (one hit, at rank 1)
    assert m["users"] == 2
    assert m["precision"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["recall"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg"] == pytest.approx((ndcg0 + 1.0) / 2)
    # customer 0: item 1 (0.8) beats 3 and 4 but not 0; item 2 (0.1) beats none → 2/6; customer 1: 4/4
    assert m["auc"] == pytest.approx((2 / 6 + 1.0) / 2)
    assert m["coverage"] == pytest.approx(4 / 5)     # items 0, 1, 3, 4 appear in a top 2
    assert evaluation.precision_at_k(SCORES, TRUTH, 2) == pytest.approx(m["precision"])


def test_metrics_by_hand_on_new_items():
    m = evaluation.ranking_metrics(SCORES, TRUTH, k=2, exclude=BOUGHT)
    # customer 1 only bought again what they had bought: nothing new to find, not counted
    # customer 0 without item 0: top 2 = items 1, 3: one hit at rank 1
    assert m["users"] == 1
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["auc"] == pytest.approx(2 / 4)            # negatives are items 3, 4 only (0 is excluded)
    assert m["coverage"] == pytest.approx(2 / 5)


def test_auc_counts_ties_as_half_and_top_k_breaks_ties_by_column():
    truth = sp.csr_matrix(np.array([[1, 0, 0]], bool))
    assert evaluation.ranking_metrics(np.array([[1.0, 1.0, 0.0]]), truth, k=1)["auc"] == pytest.approx(0.75)
    assert evaluation.top_k(np.array([[0.0, 1.0, 1.0, 1.0, 0.5]]), 3).tolist() == [[1, 2, 3]]
    assert evaluation.top_k(np.array([[3.0, 1.0, 2.0]]), 5).tolist() == [[0, 2, 1]]   # k > items: all of them


def test_no_customer_gives_empty_metrics():
    m = evaluation.ranking_metrics(SCORES, sp.csr_matrix((3, 5), dtype=bool), k=2)
    assert m["users"] == 0 and m["precision"] is None


def _eval_set() -> tuple:
    # training and window rows come from one table, so that item and customer codes agree
    both = events(*_rows_train(), *_rows_window())
    tr, win = both.before(T0), both.between(T0, T0 + 10 * DAY_S)
    fitted = interaction_matrix(tr, type_weights=DEFAULT_TYPE_WEIGHTS, channel_weights=DEFAULT_CHANNEL_WEIGHTS,
                                end=T0, half_life_days=30)
    return tr, eval_set(tr, win, fitted, T0)


def _rows_train():
    # c1 bought A three times and B once; c2 bought B; in the window c1 buys A again, c2 buys C
    return [it(1, "c1", "A", ts=T0 - 40 * DAY_S), it(2, "c1", "A", ts=T0 - 20 * DAY_S),
            it(3, "c1", "A", ts=T0 - 2 * DAY_S), it(4, "c1", "B", ts=T0 - 5 * DAY_S),
            it(5, "c2", "B", ts=T0 - 5 * DAY_S), it(6, "c3", "C", ts=T0 - 3 * DAY_S),
            it(7, "c4", "C", ts=T0 - 100 * DAY_S), it(8, "c5", "D", "view", ts=T0 - DAY_S)]


def _rows_window():
    return [it(11, "c1", "A", ts=T0 + DAY_S), it(12, "c2", "C", ts=T0 + DAY_S),
            it(13, "c2", "Z", ts=T0 + DAY_S),                 # an item unknown to training: not counted
            it(14, "stranger", "A", ts=T0 + DAY_S),           # a customer unknown to training: not counted
            it(15, "c3", "A", "view", ts=T0 + DAY_S)]         # a view is not a purchase


def test_eval_set_truth_bought_and_ages():
    train, ev = _eval_set()
    assert ev.user_ids == ["c1", "c2"] and ev.item_ids == ["A", "B", "C", "D"]
    assert ev.truth.toarray().tolist() == [[True, False, False, False], [False, False, True, False]]
    assert ev.bought.toarray().tolist() == [[True, True, False, False], [False, True, False, False]]
    assert sorted(ev.purchase_ages[0][0]) == pytest.approx([2, 20, 40])
    assert ev.purchase_ages[0][1] == pytest.approx([5]) and ev.at == T0


def test_scorers_popularity_repeat_and_blend():
    train, ev = _eval_set()
    codes = np.array([train.item_ids.index(i) for i in ev.item_ids])
    pop = evaluation.popularity(train, codes, T0, days=30)
    # distinct buyers in the last 30 days: A 1 (c1), B 2, C 1 (c3; c4 was 100 days ago), D 0 (a view);
    # ties broken by buyers over the whole window (C: 2 > A: 1), below one
    assert pop.astype(int).tolist() == [1, 2, 1, 0]
    assert pop[2] > pop[0] and pop[0] - 1 < 1 and pop[3] == 0
    rep = evaluation.repeat_baseline(ev, pop)
    assert np.argsort(-rep[0]).tolist()[:2] == [1, 0]        # c1's own items first, by popularity: B, A
    cnt = evaluation.repeat_baseline(ev, pop, by_count=True)
    assert np.argsort(-cnt[0]).tolist()[:2] == [0, 1]        # by c1's own count: A (3) before B (1)
    r = evaluation.repeat_matrix(ev, 30.0)
    np.testing.assert_allclose(r[0], [repeat_signal([[2, 20, 40]], 30)[0], repeat_signal([[5]], 30)[0], 0, 0],
                               rtol=1e-6)
    model = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]], np.float32)
    b = Blend(score_mean=1.0, score_std=2.0, repeat_weight=4.0, half_life_days=30.0)
    np.testing.assert_allclose(evaluation.blended_matrix(model, r, b), (model - 1.0) / 2.0 + 4.0 * r, rtol=1e-6)


def test_tune_blend_finds_the_weight_that_ranks_repeats_first():
    train, ev = _eval_set()
    model = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]], np.float32)   # the model is wrong for c1
    b, tried = evaluation.tune_blend(model, ev, mean=0.0, std=1.0, weights=(0.0, 1.0, 10.0), half_lives=(30.0,), k=1)
    assert len(tried) == 3 and b.repeat_weight == 10.0 and b.half_life_days == 30.0
    assert max(t["precision"] for t in tried) == pytest.approx(0.5)  # c1 found, c2 not (C is new to them)


def test_evaluate_reports_every_scorer_on_all_and_new():
    from vicino.models.artifact import in_memory
    from vicino.services.kernel.contracts.model_artifact import Manifest

    train, ev = _eval_set()
    k = 2
    arrays = {"user_repr": np.eye(2, 2, dtype=np.float32), "user_bias": np.zeros(2, np.float32),
              "item_repr": np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float32),
              "item_bias": np.zeros(4, np.float32), "user_feature_emb": np.zeros((0, 2), np.float32),
              "user_feature_bias": np.zeros(0, np.float32), "item_feature_emb": np.zeros((0, 2), np.float32),
              "item_feature_bias": np.zeros(0, np.float32)}
    man = Manifest(version="t", created_at=0, data_window={}, settings={}, metrics={}, user_ids=["c1", "c2"],
                   item_ids=ev.item_ids, user_features=[], item_features=[])
    out = evaluation.evaluate(in_memory(man, arrays), ev, train, Blend(0, 1, 0, 30), k=k, popularity_days=30)
    assert set(out["all"]) == set(out["new"]) == set(evaluation.SCORERS)
    # c1 → A (score 1) and c2 → C (score 1): the model finds both
    assert out["all"]["lightfm"]["precision"] == pytest.approx(0.5)
    assert out["new"]["lightfm"]["users"] == 1               # only c2 bought something new to them


def test_windows_of_the_full_online_retail_history():
    first = dt.datetime(2010, 12, 1, 8, 26, tzinfo=dt.timezone.utc).timestamp()
    last = dt.datetime(2011, 12, 9, 12, 50, tzinfo=dt.timezone.utc).timestamp()
    w = windows(first, last, test_days=30, validation_days=30).as_dict()
    assert w["test_start"] == "2011-11-09T00:00:00+00:00" and w["validation_start"] == "2011-10-10T00:00:00+00:00"
    w = windows(first, last, test_days=30, validation_days=7, test_start="2011-11-01").as_dict()
    assert w["test_start"] == "2011-11-01T00:00:00+00:00" and w["validation_start"] == "2011-10-25T00:00:00+00:00"
