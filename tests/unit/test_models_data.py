"""vicino.models.data: merges (union-find, smallest id survives), loading a Parquet log and a UCI file,
row weights (type × channel × decay; returns subtract) and the interaction matrix."""
from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from vicino.models.data import (DAY_S, DEFAULT_CHANNEL_WEIGHTS, DEFAULT_TYPE_WEIGHTS, DataError, apply_merges, events_of,
                         interaction_matrix, load_history, row_weights, survivors)
from vicino.services.kernel.contracts.interactions import CustomerMergedV1, InteractionV1
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS, MERGES
from vicino.services.recommender.adapters.parquet_log import ParquetLog, interactions_table, merges_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp()


def it(n: int, customer: str, item: str | None, type_: str = "purchase", ts: float = T0, channel: str = "web",
       **kw) -> InteractionV1:
    return InteractionV1(event_id=f"e{n}", customer_id=customer, channel=channel, type=type_, item_id=item, ts=ts,
                         received_at=ts + 1, **kw)


def events(*rows: InteractionV1):
    return events_of(interactions_table(list(rows)))


# merges -----------------------------------------------------------------------------------------

def test_survivor_is_the_smallest_id_of_the_group_whatever_the_order():
    links = [("c5", "c3"), ("c3", "c9"), ("c9", "c1"), ("x2", "x1")]
    for perm in itertools.permutations(links):
        assert survivors(list(perm)) == {"c5": "c1", "c3": "c1", "c9": "c1", "x2": "x1"}
    # "into" is not what decides: the smaller id is
    assert survivors([("a", "b")]) == {"b": "a"}
    assert survivors([]) == {}


def test_merges_are_applied_to_the_rows(tmp_path):
    log = ParquetLog(str(tmp_path))
    log.write_partitioned(INTERACTIONS, interactions_table([
        it(1, "c2", "A"), it(2, "c7", "B", ts=T0 + 10), it(3, "c9", "C", ts=T0 + 20), it(4, "c4", "D", ts=T0 + 30)]),
        "f")
    log.write_partitioned(MERGES, merges_table([CustomerMergedV1(merged="c7", into="c2", ts=T0 + 40),
                                                CustomerMergedV1(merged="c2", into="c9", ts=T0 + 50)]), "m")
    h = load_history(tmp_path)
    assert h.format == "parquet-log"
    assert h.table.column("customer_id").to_pylist() == ["c2", "c2", "c2", "c4"]  # c7 → c2, c9 → c2 (smallest)
    assert h.merges_applied == 2
    ev = events_of(h.table)
    assert sorted(set(ev.user_ids[u] for u in ev.user)) == ["c2", "c4"]


def test_apply_merges_without_merges_changes_nothing():
    table = interactions_table([it(1, "c1", "A")])
    same, n = apply_merges(table, [])
    assert same is table and n == 0


def test_load_history_reads_the_uci_file_with_descriptions():
    h = load_history(FIXTURES / "online_retail_slice.csv")
    assert h.format == "online-retail" and h.table.num_rows > 1000
    assert h.descriptions["85123A"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    # keys follow the importer's upper-casing of stock codes
    assert all(k == k.upper() for k in h.descriptions)


def test_load_history_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_history(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a Parquet log"):
        load_history(tmp_path / "empty")


# weights ----------------------------------------------------------------------------------------

def test_row_weights_multiply_type_channel_and_decay():
    ev = events(it(1, "c1", "A", ts=T0), it(2, "c1", "A", "view", ts=T0 - 30 * DAY_S, channel="app"),
                it(3, "c1", "A", "return", ts=T0 - 10 * DAY_S, channel="store"), it(4, "c1", "A", ts=T0 + DAY_S))
    w = row_weights(ev, {"purchase": 1.0, "view": 0.1, "return": -1.0}, {"web": 1.0, "app": 2.0, "store": 0.5},
                    end=T0, half_life_days=30.0)
    # purchase now; view 30 d old (half weight) on app (×2); return 10 d old in store (×0.5); after the end: age 0
    assert w == pytest.approx([1.0, 0.1 * 2.0 * 0.5, -1.0 * 0.5 * 2 ** (-10 / 30), 1.0])
    # no decay with a half-life of 0 (disabled); an unknown type weighs 0, an unknown channel 1
    w = row_weights(ev, {"purchase": 2.0}, {}, end=T0, half_life_days=0)
    assert w == pytest.approx([2.0, 0.0, 0.0, 2.0])


def test_returns_subtract_and_a_fully_returned_item_is_no_positive():
    ev = events(it(1, "c1", "A", ts=T0 - DAY_S), it(2, "c1", "A", "return", ts=T0 - DAY_S),   # bought, returned
                it(3, "c1", "B", ts=T0 - DAY_S), it(4, "c1", "B", ts=T0 - DAY_S),              # bought twice
                it(5, "c1", "B", "return", ts=T0 - DAY_S),                                     # one returned
                it(6, "c2", "A", ts=T0 - 60 * DAY_S), it(7, "c2", None, "support_contact", ts=T0))
    m = interaction_matrix(ev, type_weights=DEFAULT_TYPE_WEIGHTS, channel_weights=DEFAULT_CHANNEL_WEIGHTS, end=T0,
                           half_life_days=30.0)
    users = [ev.user_ids[u] for u in m.users]
    items = [ev.item_ids[i] for i in m.items]
    assert users == sorted(users) and set(users) == {"c1", "c2"} and set(items) == {"A", "B"}
    dense = m.weights.toarray()
    got = {(users[r], items[c]): dense[r, c] for r in range(len(users)) for c in range(len(items)) if dense[r, c]}
    decay1, decay60 = 2 ** (-1 / 30), 2 ** (-60 / 30)
    assert got == pytest.approx({("c1", "B"): 1.0 * decay1, ("c2", "A"): decay60})
    assert ("c1", "A") not in got  # net 0: no positive pair (the row stays: c1 is a customer of the window)
    assert m.weights.dtype == np.float32 and (m.weights.data > 0).all()


def test_log1p_aggregate_and_the_purchase_outweighs_the_view():
    ev = events(*[it(n, "c1", "A", ts=T0) for n in range(3)], it(9, "c1", "B", "view", ts=T0))
    m = interaction_matrix(ev, type_weights=DEFAULT_TYPE_WEIGHTS, channel_weights=DEFAULT_CHANNEL_WEIGHTS, end=T0,
                           half_life_days=30.0, aggregate="log1p")
    a, b = m.weights.toarray()[0]
    assert a == pytest.approx(math.log1p(3.0)) and b == pytest.approx(math.log1p(DEFAULT_TYPE_WEIGHTS["view"]))
    assert a > b
    with pytest.raises(ValueError):
        interaction_matrix(ev, type_weights={}, channel_weights={}, end=T0, half_life_days=1, aggregate="max")


def test_events_refuse_an_empty_history():
    with pytest.raises(DataError, match="no interaction"):
        events_of(interactions_table([]))


def test_events_slice_by_time():
    ev = events(it(1, "c1", "A", ts=T0), it(2, "c1", "B", ts=T0 + 10), it(3, "c2", "A", ts=T0 + 20))
    assert len(ev.before(T0 + 10)) == 1 and len(ev.between(T0 + 10, T0 + 21)) == 2
    assert ev.is_type("purchase").all()
