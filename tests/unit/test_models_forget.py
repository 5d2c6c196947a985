"""Models forget and honour consent, on files alone: erased customers' rows never reach training
(`without_erased`), customers without consent have no identity column (`feature_matrix`), a
kept version loses an erased customer's id and row (`scrub_version`), and old versions go
(`prune_versions`) but never the published one."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from vicino.models.data import without_erased
from vicino.models.features import feature_matrix
from vicino.services.kernel.contracts.erasures import erasure_digest, legacy_erasure_digest

KEY = b"k" * 32  # the register's HMAC key
from vicino.services.kernel.contracts.interaction_log import INTERACTION_SCHEMA
from vicino.services.kernel.contracts.model_artifact import (ERASURE_MARGIN_S, Blend, Manifest, current_version,
                                                             list_versions, prune_versions, publish, read_version,
                                                             scrub_version, version_stamp, write_version)

T0 = 1_700_000_000.0


def log_rows(rows: list[tuple[str, str, float, float]]) -> pa.Table:
    """(customer, item, ts, received_at) as rows of the interaction log's schema."""
    cols = {f.name: [] for f in INTERACTION_SCHEMA}
    for n, (c, item, ts, received) in enumerate(rows):
        row = {"event_id": f"e{n}", "customer_id": c, "channel": "web", "type": "purchase", "item_id": item,
               "ts": int(ts * 1e6), "received_at": int(received * 1e6)}
        for name in cols:
            cols[name].append(row.get(name))
    arrays = {}
    for f in INTERACTION_SCHEMA:
        raw = cols[f.name]
        arrays[f.name] = pa.array(raw, pa.int64()).cast(f.type) if pa.types.is_timestamp(f.type) else pa.array(raw, f.type)
    return pa.table(arrays, schema=INTERACTION_SCHEMA)


def test_without_erased_drops_what_happened_or_arrived_before_the_erasure():
    table = log_rows([("gone", "i1", T0, T0), ("gone", "i2", T0 + 50, T0 + 200),  # happened before, arrived after
                      ("gone", "i3", T0 + 300, T0 + 300),                          # the id came back afterwards
                      ("kept", "i1", T0, T0)])
    kept, dropped = without_erased(table, {erasure_digest("gone", KEY): T0 + 100}, KEY)
    assert dropped == 2
    assert list(zip(kept["customer_id"].to_pylist(), kept["item_id"].to_pylist())) == [("gone", "i3"), ("kept", "i1")]
    # a register written before the key (bare SHA-256) is honoured; another key's digest is not
    assert without_erased(table, {legacy_erasure_digest("gone"): T0 + 100}, KEY)[1] == dropped
    assert without_erased(table, {erasure_digest("gone", b"another key"): T0 + 100}, KEY)[1] == 0
    assert without_erased(table, {}, KEY)[1] == 0 and without_erased(table, {erasure_digest("x", KEY): T0 + 1e6}, KEY)[1] == 0


def test_customers_without_consent_have_no_identity_column_and_weigh_as_cold_ones():
    per_user = [["country:IT", "freq:1-2"], ["country:IT"], ["freq:1-2"]]
    names = ["country:IT", "freq:1-2"]
    m = feature_matrix(per_user, names, identity=True, feature_share=0.2,
                       identity_rows=np.array([True, False, True])).toarray()
    # identity columns for customers 0 and 2 only (numbered in row order), then the two features
    assert m.shape == (3, 2 + 2)
    np.testing.assert_allclose(m[0], [0.8, 0.0, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(m[1], [0.0, 0.0, 0.2, 0.0], atol=1e-6)   # share × mean of features: serving's cold
    np.testing.assert_allclose(m[2], [0.0, 0.8, 0.0, 0.2], atol=1e-6)
    # without a mask, every customer has one (as before)
    assert feature_matrix(per_user, names, identity=True, feature_share=0.2).shape == (3, 3 + 2)


def version(root, name: str, users: list[str], *, erasures_as_of: float = 0.0, created_at: float = T0):
    k = 2
    arrays = {"user_repr": np.arange(len(users) * k, dtype=np.float32).reshape(len(users), k) + 1,
              "user_bias": np.ones(len(users), np.float32),
              "item_repr": np.ones((1, k), np.float32), "item_bias": np.zeros(1, np.float32),
              "user_feature_emb": np.ones((1, k), np.float32), "user_feature_bias": np.zeros(1, np.float32),
              "item_feature_emb": np.ones((1, k), np.float32), "item_feature_bias": np.zeros(1, np.float32)}
    m = Manifest(version=name, created_at=created_at, data_window={}, settings={}, metrics={}, user_ids=users,
                 item_ids=["i1"], user_features=["country:IT"], item_features=["cat:MUG"], blend=Blend(),
                 erasures_as_of=erasures_as_of)
    write_version(root, m, arrays)


def test_scrub_removes_the_id_and_the_row_and_leaves_a_loadable_version(tmp_path):
    version(tmp_path, "v1", ["u1", "u2", "u3"])
    before = version_stamp(tmp_path, "v1")
    erased_at = T0 + 10
    time.sleep(0.01)  # mtime granularity: the stamp must move
    assert scrub_version(tmp_path, "v1", {erasure_digest("u2", KEY): erased_at, erasure_digest("nobody", KEY): erased_at}, KEY) == 1
    art = read_version(tmp_path, "v1")
    assert art.manifest.user_ids == ["u1", None, "u3"] and "u2" not in art.user_index
    assert art.user_repr[1].tolist() == [0.0, 0.0] and art.user_bias[1] == 0.0
    assert art.user_repr[2].tolist() == [5.0, 6.0]                     # the others untouched
    raw = (tmp_path / "v1" / "manifest.json").read_text() + str(np.load(tmp_path / "v1" / "arrays.npz")["user_repr"])
    assert '"u2"' not in raw and "3." not in raw.split("user_repr")[-1]
    assert version_stamp(tmp_path, "v1") != before                    # replicas notice the rewrite
    assert scrub_version(tmp_path, "v1", {erasure_digest("u2", KEY): erased_at}, KEY) == 0   # done once
    assert not list(tmp_path.glob("v1/.*"))                            # no temporary file left


def test_a_row_learned_after_the_erasure_stays(tmp_path):
    """The id came back after its erasure and a later version learned it from the new data only."""
    erased_at = T0
    version(tmp_path, "later", ["u1"], erasures_as_of=erased_at + ERASURE_MARGIN_S + 1)
    version(tmp_path, "racing", ["u1"], erasures_as_of=erased_at + ERASURE_MARGIN_S - 1)  # may have missed it
    register = {erasure_digest("u1", KEY): erased_at}
    assert scrub_version(tmp_path, "later", register, KEY) == 0 and read_version(tmp_path, "later").learned_after(erased_at)
    assert scrub_version(tmp_path, "racing", register, KEY) == 1


def test_prune_keeps_the_published_one_and_the_newest_others(tmp_path):
    for n in range(1, 7):
        version(tmp_path, f"2026010{n}T000000Z-aaaaaa", ["u1"])
    names = list_versions(tmp_path)
    publish(tmp_path, names[0])                                        # rolled back to the oldest
    assert prune_versions(tmp_path, 3) == names[1:4]
    assert list_versions(tmp_path) == [names[0]] + names[4:]
    assert current_version(tmp_path) == names[0] and read_version(tmp_path, names[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # nothing half-deleted left behind
    publish(tmp_path, names[-1])
    assert prune_versions(tmp_path, 2) == [names[0]] and prune_versions(tmp_path, 1) == [names[4]]
    assert list_versions(tmp_path) == [names[-1]]
    with pytest.raises(ValueError):
        prune_versions(tmp_path, 0)
