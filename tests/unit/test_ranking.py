"""Pure ranking helpers: the customer and offer features built in the model's vocabulary."""
from __future__ import annotations

import numpy as np

from vicino.services.kernel.contracts.model_artifact import ARRAYS, Manifest, ModelArtifact
from vicino.services.recommender.domain.offers import Offer
from vicino.services.recommender.domain.ranking import DAY_S, _band_of, customer_features, offer_features

USER_FEATURES = ["country:Italy", "country:France", "channel:web:75-100", "channel:web:25-50", "channel:app:50-75",
                 "freq:0-1", "freq:1-2", "freq:2-5", "freq:5-inf", "recency:0-7", "recency:7-30", "recency:30-inf"]
ITEM_FEATURES = ["cat:MUG", "price:0-1", "price:1-2", "price:2-5", "price:5-inf", "brand:Acme"]


def model() -> ModelArtifact:
    k = 2
    shapes = {"user_repr": (0, k), "user_bias": (0,), "item_repr": (0, k), "item_bias": (0,),
              "user_feature_emb": (len(USER_FEATURES), k), "user_feature_bias": (len(USER_FEATURES),),
              "item_feature_emb": (len(ITEM_FEATURES), k), "item_feature_bias": (len(ITEM_FEATURES),)}
    arrays = {name: np.zeros(shapes[name], np.float32) for name in ARRAYS}
    m = Manifest(version="t", created_at=0, data_window={}, settings={}, metrics={}, user_ids=[], item_ids=[],
                 user_features=USER_FEATURES, item_features=ITEM_FEATURES)
    return ModelArtifact(m, arrays)


def test_bands_are_found_by_their_bounds():
    assert _band_of("freq", 0, USER_FEATURES) == "freq:0-1"
    assert _band_of("freq", 4, USER_FEATURES) == "freq:2-5"
    assert _band_of("freq", 5, USER_FEATURES) == "freq:5-inf"
    assert _band_of("freq", 10_000, USER_FEATURES) == "freq:5-inf"
    assert _band_of("recency", 7.0, USER_FEATURES) == "recency:7-30"
    assert _band_of("nothing", 1, USER_FEATURES) is None


def test_a_new_customer_is_described_in_the_models_words():
    now = 100 * DAY_S
    history = [{"channel": "web", "type": "purchase", "ts": now - 10 * DAY_S, "country": "Italy"},
               {"channel": "web", "type": "purchase", "ts": now - 10 * DAY_S + 60, "country": "Italy"},
               {"channel": "web", "type": "purchase", "ts": now - 40 * DAY_S, "country": "France"},
               {"channel": "app", "type": "view", "ts": now - DAY_S}]
    feats = customer_features(history, now, model())
    assert feats == ["country:Italy", "channel:app:25-50", "channel:web:75-100", "freq:2-5", "recency:7-30"]


def test_a_new_offer_is_described_by_category_price_band_and_brand():
    offer = Offer(offer_id="o", title="t", item_ids=["x"], category="MUG", price=4.0, promo_price=1.5,
                  currency="GBP", valid_from=0, valid_to=10, brands=["Acme", "Other"])
    assert offer_features(offer, model()) == ["cat:MUG", "price:1-2", "brand:Acme"]


def test_a_prepared_catalogue_ranks_any_subset_as_a_fresh_one_would():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from vicino.services.recommender.domain.ranking import CustomerView, PreparedOffers, rank

    rng = np.random.default_rng(3)
    k = 4
    items = [f"i{n}" for n in range(30)]
    arrays = {"user_repr": rng.normal(size=(2, k)), "user_bias": rng.normal(size=2),
              "item_repr": rng.normal(size=(30, k)), "item_bias": rng.normal(size=30),
              "user_feature_emb": rng.normal(size=(len(USER_FEATURES), k)),
              "user_feature_bias": rng.normal(size=len(USER_FEATURES)),
              "item_feature_emb": rng.normal(size=(len(ITEM_FEATURES), k)),
              "item_feature_bias": rng.normal(size=len(ITEM_FEATURES))}
    m = Manifest(version="r", created_at=0, data_window={}, settings={}, metrics={}, user_ids=["a", "b"],
                 item_ids=items, user_features=USER_FEATURES, item_features=ITEM_FEATURES)
    model = ModelArtifact(m, {n: np.asarray(v, np.float32) for n, v in arrays.items()})
    catalogue = [Offer(offer_id=f"o{n}", title="t", item_ids=[items[n], f"new{n}"] if n % 3 else [items[n]],
                       category="MUG", price=1 + n, currency="GBP", valid_from=0, valid_to=10) for n in range(30)]
    prepared = PreparedOffers(catalogue, model)
    view = CustomerView("a", True, (), {"i4": [5 * DAY_S]})

    @settings(max_examples=60, deadline=None)
    @given(st.sets(st.integers(0, 29), min_size=1), st.integers(1, 12))
    def check(subset, top):
        offers = [catalogue[n] for n in sorted(subset)]
        fresh = rank(offers, view, model, 10 * DAY_S, top)
        shared = rank(offers, view, model, 10 * DAY_S, top, prepared)
        assert [(r.offer.offer_id, round(r.score, 5), r.reason) for r in fresh] == \
               [(r.offer.offer_id, round(r.score, 5), r.reason) for r in shared]
        assert len(fresh) == min(top, len(offers))
        assert [r.score for r in fresh] == sorted((r.score for r in fresh), reverse=True)

    check()


def test_unseen_items_and_customers_count_only_their_features_share():
    from vicino.services.recommender.domain.ranking import CustomerView, cold_share, rank

    k = 2
    arrays = {"user_repr": np.array([[1.0, 0.0]]), "user_bias": np.zeros(1),
              "item_repr": np.array([[1.0, 0.0]]), "item_bias": np.zeros(1),
              "user_feature_emb": np.zeros((len(USER_FEATURES), k)), "user_feature_bias": np.zeros(len(USER_FEATURES)),
              "item_feature_emb": np.array([[3.0, 0.0]] + [[0.0, 0.0]] * (len(ITEM_FEATURES) - 1)),
              "item_feature_bias": np.zeros(len(ITEM_FEATURES))}
    m = Manifest(version="c", created_at=0, data_window={}, metrics={}, user_ids=["a"], item_ids=["known"],
                 settings={"item_identity": True, "item_feature_share": 0.2, "user_identity": True,
                           "user_feature_share": 0.2},
                 user_features=USER_FEATURES, item_features=ITEM_FEATURES)
    model = ModelArtifact(m, {n: np.asarray(v, np.float32) for n, v in arrays.items()})
    assert cold_share(model, "item") == 0.2
    offers = [Offer(offer_id="o-known", title="t", item_ids=["known"], category="CANDLE", price=9, currency="GBP",
                    valid_from=0, valid_to=10),
              Offer(offer_id="o-new", title="t", item_ids=["new"], category="MUG", price=9, currency="GBP",
                    valid_from=0, valid_to=10)]
    out = rank(offers, CustomerView("a", True, (), {}), model, 0.0, 2)
    # unscaled, the new offer's feature mean (cat:MUG and price:5-inf: (1.5, 0)) would beat 1.0
    assert [(r.offer.offer_id, round(r.score, 4), r.reason) for r in out] == [
        ("o-known", 1.0, "model"), ("o-new", 0.3, "cold_start_features")]


def test_the_popularity_order_prepared_once_answers_as_the_sort_of_before():
    """The fallback's order is computed once per catalogue (`popular_order`) and the eligible
    offers are taken from it (`popular_prepared`): the same answer, offers and scores, as sorting
    the eligible offers on every request (the code of before, written out here)."""
    import random

    from vicino.services.recommender.domain.offers import ranking_key
    from vicino.services.recommender.domain.ranking import popular_order, popular_prepared

    rnd = random.Random(5)
    popular = [f"i{n}" for n in range(0, 60, 3)]

    class _Model:
        class manifest:
            popular_items = popular

    offers = [Offer.model_validate({
        "offer_id": f"o{n:03d}", "title": "t", "item_ids": rnd.sample([f"i{m}" for m in range(80)], rnd.randint(1, 3)),
        "category": "C", "price": rnd.choice([1.0, 2.0, 3.0]), "currency": "EUR", "priority": rnd.choice([0, 0, 5]),
        "valid_from": 0, "valid_to": 10}) for n in range(150)]
    order, best = popular_order(offers, _Model)
    position = {item: p for p, item in enumerate(popular)}

    def before(eligible: list[Offer], k: int) -> list[tuple[str, float]]:
        def pos(o: Offer) -> int:
            return min((position.get(i, len(popular)) for i in o.item_ids), default=len(popular))
        return [(o.offer_id, 1.0 / (1 + pos(o))) for o in sorted(eligible, key=lambda o: (pos(o), ranking_key(o)))[:k]]

    for _ in range(50):
        mask = np.array([rnd.random() < 0.6 for _ in offers])
        k = rnd.choice([1, 5, 1_000_000])
        got = [(r.offer.offer_id, r.score) for r in popular_prepared(offers, order, best, mask, k)]
        assert got == before([o for o, ok in zip(offers, mask) if ok], k)
