"""Benchmark of the recommender's model: `python -m bench.recommender`.

On the full UCI Online Retail history (541,909 rows; Chen 2015, CC BY 4.0, doi 10.24432/C5BW33),
every figure beside a peer measured in the same run:

1. scoring   top-10 of one customer over 1k, 10k and 100k items: the serving's numpy scorer
             (kernel `model_scores` over precomputed representations + np.argpartition) against
             `LightFM.predict` on the same model and items (then the same argpartition), µs per
             request; and whether both give the same top 10. Catalogues beyond the real 3,676
             items are synthetic: each extra item mixes two real items' feature rows with a
             random weight, so that every item has its own score.
2. training  the fit on the whole history with the library's settings (`num_threads=2`),
             beside the same LightFM fit without features (identity only: plain matrix
             factorisation), and the data preparation (matrix, features).
3. quality   `train_and_publish` on the whole history: validation and test windows, precision,
             recall, NDCG at 10, AUC and coverage, for LightFM, the blended model, popularity and
             the repeat-purchase baselines, on all items and on items new to each customer.

Tables go to stdout, the raw numbers to bench/results/recommender.json. Every loop is bounded in
count and time; a hard limit stops the run after HARD_LIMIT_S. `--quick` runs a smaller version.
"""
from __future__ import annotations

import os

# LightFM's OpenMP threads would otherwise spin after each predict and slow whatever runs next
# (numpy's BLAS threads among them); serving has no LightFM at all
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.geo import machine_info, pf, table
from vicino.models.data import events_of, load_history
from vicino.models.features import feature_matrix, item_info
from vicino.models.pipeline import TrainSettings, train_and_publish
from vicino.models.training import fit, prepare
from vicino.services.kernel.contracts.model_artifact import model_scores

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/datasets/online-retail/online_retail.csv.gz")
RESULTS = ROOT / "bench" / "results" / "recommender.json"
HARD_LIMIT_S = 900
T_TRAIN_S = 30.0            # training on the full history, 2 cores
SPEEDUP_AT_10K = 2.0        # numpy scorer vs LightFM.predict
K = 10
BLOCK = 25


class _Overrun(BaseException):
    """Raised by the hard time limit; not an Exception, so no section swallows it."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# 1. scoring

def catalogue(model, data, n: int, rng: np.random.Generator) -> sp.csr_matrix:
    """n item feature rows over the model's item features: the real items first, then mixtures
    of two real items' rows (weights w, 1 − w), each row summing to 1."""
    real = data.item_features
    if n <= real.shape[0]:
        return real[:n]
    extra = n - real.shape[0]
    a = rng.integers(0, real.shape[0], extra)
    b = rng.integers(0, real.shape[0], extra)
    w = rng.uniform(0.2, 0.8, extra).astype(np.float32)
    mixed = sp.diags(w) @ real[a] + sp.diags(1 - w) @ real[b]
    return sp.vstack([real, mixed]).tocsr().astype(np.float32)


SERVING_REQUESTS = 50


def serving_rank_times(user_repr, user_bias, item_repr, item_bias, customers) -> list[float]:
    """The serving path around the scorer on the same representations: `rank_prepared` over a
    catalogue of one-item offers prepared once (as a replica does per catalogue and model
    version), all eligible, for a customer with a few purchases to blend in (blend, repeat
    signal, best item per offer, top k); seconds per request. Eligibility is not included."""
    from vicino.services.kernel.contracts.model_artifact import ARRAYS, Manifest, ModelArtifact
    from vicino.services.recommender.domain.offers import Offer
    from vicino.services.recommender.domain.ranking import CustomerView, PreparedOffers, rank_prepared

    n, k = item_repr.shape
    arrays = {"user_repr": user_repr, "user_bias": user_bias, "item_repr": item_repr, "item_bias": item_bias,
              "user_feature_emb": np.zeros((0, k)), "user_feature_bias": np.zeros(0),
              "item_feature_emb": np.zeros((0, k)), "item_feature_bias": np.zeros(0)}
    manifest = Manifest(version="bench", created_at=0, data_window={}, settings={}, metrics={},
                        user_ids=[str(u) for u in range(len(user_repr))], item_ids=[str(i) for i in range(n)],
                        user_features=[], item_features=[])
    artifact = ModelArtifact(manifest, {a: np.asarray(arrays[a], np.float32) for a in ARRAYS})
    offers = [Offer(offer_id=f"o{i}", title="t", item_ids=[str(i)], category="C", price=1.0, currency="GBP",
                    valid_from=0, valid_to=4e9) for i in range(n)]
    prepared = PreparedOffers(offers, artifact)
    eligible = np.ones(n, bool)
    now = time.time()
    out = []
    for c in customers:
        view = CustomerView(str(c), True, (), {str(c % n): [now - 86_400.0], str((c * 7) % n): [now - 864_000.0]})
        t = time.perf_counter()
        rank_prepared(prepared, eligible, view, now, K)
        out.append(time.perf_counter() - t)
    return out


def section_scoring(model, data, sizes: list[int], requests: int, budget_s: float, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    user_bias, user_repr = model.get_user_representations(data.user_features)
    customers = rng.choice(data.n_users, size=requests, replace=requests > data.n_users)
    out = {}
    for n in sizes:
        feats = catalogue(model, data, n, rng)
        t = time.perf_counter()
        item_bias, item_repr = model.get_item_representations(feats)   # what training exports, once
        precompute_s = time.perf_counter() - t
        item_repr = np.ascontiguousarray(item_repr, np.float32)
        item_bias = np.ascontiguousarray(item_bias, np.float32)
        ids = np.arange(n, dtype=np.int32)
        times: dict[str, list[float]] = {"numpy": [], "lightfm_1t": [], "lightfm_2t": []}
        same, near_ties, done = 0, 0, 0
        deadline = time.perf_counter() + budget_s / len(sizes)
        # interleaved in blocks of customers (numpy, then predict with 1 and 2 threads on the same
        # customers), so that a noisy neighbour slows all three alike without one's threads
        # competing with the next one's inside a request
        for lo in range(0, len(customers), BLOCK):
            if time.perf_counter() > deadline and done >= BLOCK:
                break
            block = customers[lo:lo + BLOCK]
            tops = []
            for c in block:
                t = time.perf_counter()
                s = model_scores(user_repr[c], float(user_bias[c]), item_repr, item_bias)
                top = np.argpartition(-s, K)[:K]
                top = top[np.argsort(-s[top])]
                times["numpy"].append(time.perf_counter() - t)
                tops.append((top, s[top]))
            for label, threads in (("lightfm_1t", 1), ("lightfm_2t", 2)):
                for c, (top, top_s) in zip(block, tops):
                    t = time.perf_counter()
                    p = model.predict(np.full(n, c, np.int32), ids, user_features=data.user_features,
                                      item_features=feats, num_threads=threads)
                    ref = np.argpartition(-p, K)[:K]
                    ref = ref[np.argsort(-p[ref])]
                    times[label].append(time.perf_counter() - t)
                    if threads == 1:
                        if np.array_equal(top, ref):
                            same += 1
                        elif np.allclose(np.sort(top_s), np.sort(p[ref]), rtol=1e-5, atol=1e-5):
                            near_ties += 1   # the same scores to float32 rounding: an order among ties
            done += len(block)
        times["serving_rank"] = serving_rank_times(user_repr, user_bias, item_repr, item_bias,
                                                   customers[:SERVING_REQUESTS])
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        out[str(n)] = {"requests": done, "median_us": {k: round(v, 1) for k, v in med.items()},
                       "serving_rank_vs_numpy": round(med["serving_rank"] / med["numpy"], 1),
                       "p95_us": {k: round(float(np.percentile(v, 95)) * 1e6, 1) for k, v in times.items()},
                       "speedup_vs_lightfm_1t": round(med["lightfm_1t"] / med["numpy"], 1),
                       "speedup_vs_lightfm_2t": round(med["lightfm_2t"] / med["numpy"], 1),
                       "same_top10": same, "same_top10_up_to_ties": same + near_ties,
                       "precompute_item_repr_ms": round(precompute_s * 1e3, 1)}
        log(f"scoring {n:,} items: {out[str(n)]['median_us']}")
    return out


# ------------------------------------------------------------------------------------------------
# 2. training

def section_training(events, info, settings: TrainSettings, rounds: int) -> tuple[dict, object, object]:
    end = float(events.ts.max())
    t = time.perf_counter()
    data = prepare(events, end, info, settings.matrix())
    prepare_s = time.perf_counter() - t
    plain = dataclasses.replace(data, user_features=feature_matrix([[]] * data.n_users, [], identity=True),
                                item_features=feature_matrix([[]] * data.n_items, [], identity=True))
    fits, peers, model = [], [], None
    for r in range(rounds):   # interleaved: library fit, then the identity-only peer
        t = time.perf_counter()
        model = fit(data, settings.model())
        fits.append(time.perf_counter() - t)
        t = time.perf_counter()
        fit(plain, settings.model())
        peers.append(time.perf_counter() - t)
        log(f"training round {r + 1}/{rounds}: {fits[-1]:.1f} s, identity-only peer {peers[-1]:.1f} s")
    res = {"prepare_s": round(prepare_s, 2), "fit_s": [round(x, 2) for x in fits],
           "fit_identity_only_s": [round(x, 2) for x in peers], "fit_median_s": round(statistics.median(fits), 2),
           "fit_identity_only_median_s": round(statistics.median(peers), 2),
           "pairs": int(data.interactions.weights.nnz), "users": data.n_users, "items": data.n_items,
           "user_features": len(data.user_feature_names), "item_features": len(data.item_feature_names),
           "epochs": settings.epochs, "no_components": settings.no_components, "num_threads": settings.num_threads}
    return res, model, data


# ------------------------------------------------------------------------------------------------
# 3. quality

def section_quality(path: Path, settings: TrainSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="vicino-bench-models-") as tmp:
        report = train_and_publish(path, tmp, publish=True, settings=settings)
    return {"metrics": report.metrics, "blend": report.blend, "windows": report.windows, "reason": report.reason,
            "published": report.published, "seconds": report.seconds, "version": report.version}


def quality_rows(m: dict) -> list[list]:
    rows = []
    for scope in ("all", "new"):
        for name in ("lightfm", "blended", "popularity", "popularity_recent", "repeat", "repeat_recent",
                     "repeat_count"):
            r = m[scope][name]
            rows.append([f"{scope} / {name}", *(f"{r[x]:.4f}" for x in ("precision", "recall", "ndcg", "auc")),
                         f"{100 * r['coverage']:.1f}%", f"{r['users']:,}"])
    return rows


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recommender", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs, requests and rounds (to try the script)")
    ap.add_argument("--data", type=Path, default=DATA, help="the Online Retail CSV (.gz)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    settings = TrainSettings()
    if args.quick:
        settings = settings.replace(epochs=3, blend_weights=(0.0, 1.0), blend_half_lives=(365.0,))
    sizes = [1_000, 10_000, 100_000]
    requests, rounds = (50, 1) if args.quick else (400, 2)
    info_m = machine_info()
    import lightfm
    import pyarrow as pa
    import scipy

    info_m["versions"].update({"lightfm": getattr(lightfm, "__version__", "?"), "scipy": scipy.__version__,
                               "pyarrow": pa.__version__})
    print(f"Vicino recommender benchmark ({'quick' if args.quick else 'full'}): {info_m['cpu_count']} CPUs, "
          f"Python {info_m['python']}, {info_m['date']}")
    started = time.perf_counter()
    results: dict = {"machine": info_m, "profile": "quick" if args.quick else "full", "data": str(args.data),
                     "settings": dataclasses.asdict(settings)}
    errors: dict[str, str] = {}

    def _overrun(signum, frame):
        raise _Overrun(f"benchmark still running after {HARD_LIMIT_S} s")

    signal.signal(signal.SIGALRM, _overrun)
    signal.alarm(HARD_LIMIT_S)
    try:
        log("loading the history")
        h = load_history(args.data)
        events = events_of(h.table)
        info = item_info(events, h.descriptions)
        results["rows"] = len(events)
        log("section 2: training")
        training, model, data = section_training(events, info, settings, rounds)
        results["training"] = training
        log("section 1: scoring")
        results["scoring"] = section_scoring(model, data, sizes, requests, budget_s=120 if not args.quick else 20)
        log("section 3: quality (train_and_publish)")
        results["quality"] = section_quality(args.data, settings)
    except _Overrun as e:
        errors["overrun"] = str(e)
        print(f"\n!! {e}; writing what was measured", flush=True)
    finally:
        signal.alarm(0)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)

    targets = {}
    if "training" in results:
        tr = results["training"]
        targets["train_full_history_s"] = {"value": tr["fit_median_s"], "target": f"<= {T_TRAIN_S:g} s",
                                           "pass": tr["fit_median_s"] <= T_TRAIN_S}
    if "scoring" in results and "10000" in results["scoring"]:
        sc = results["scoring"]["10000"]
        targets["numpy_vs_predict_10k"] = {"value": sc["speedup_vs_lightfm_1t"], "target": f">= {SPEEDUP_AT_10K:g}x",
                                           "pass": sc["speedup_vs_lightfm_1t"] >= SPEEDUP_AT_10K
                                           and sc["same_top10_up_to_ties"] == sc["requests"]}
    test = (results.get("quality") or {}).get("metrics", {}).get("test") or {}
    if test.get("users"):
        a, n = test["all"], test["new"]
        targets["blended_vs_repeat_p10_all"] = {"value": [a["blended"]["precision"], a["repeat"]["precision"]],
                                                "target": "blended > repeat",
                                                "pass": a["blended"]["precision"] > a["repeat"]["precision"]}
        targets["lightfm_vs_popularity_p10_new"] = {
            "value": round(n["blended"]["precision"] / n["popularity"]["precision"], 2), "target": ">= 2x",
            "pass": n["blended"]["precision"] >= 2 * n["popularity"]["precision"]}
        # the stronger peers (recent popularity), reported beside the definitions
        targets["peer_blended_vs_repeat_count_p10_all"] = {
            "value": [a["blended"]["precision"], a["repeat_count"]["precision"]], "target": "blended > repeat_count",
            "pass": a["blended"]["precision"] > a["repeat_count"]["precision"]}
        targets["peer_lightfm_vs_recent_popularity_p10_new"] = {
            "value": round(n["blended"]["precision"] / n["popularity_recent"]["precision"], 2), "target": ">= 2x",
            "pass": n["blended"]["precision"] >= 2 * n["popularity_recent"]["precision"]}
    results["targets"] = targets
    if errors:
        results["errors"] = errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    if "scoring" in results:
        rows = []
        for n, r in results["scoring"].items():
            m = r["median_us"]
            rows.append([f"{int(n):,}", f"{m['numpy']:,.0f}", f"{m['lightfm_1t']:,.0f}", f"{m['lightfm_2t']:,.0f}",
                         f"{r['speedup_vs_lightfm_1t']}x", f"{r['speedup_vs_lightfm_2t']}x",
                         f"{r['same_top10']}/{r['requests']}", f"{r['same_top10_up_to_ties']}/{r['requests']}",
                         f"{m['serving_rank']:,.0f}", f"{r['serving_rank_vs_numpy']}x"])
        print()
        print(table("1. top-10 for one customer, µs per request (median)",
                    ["items", "numpy scorer", "predict 1 thr", "predict 2 thr", "vs 1 thr", "vs 2 thr",
                     "same top 10", "up to ties", "serving rank()", "vs numpy"], rows))
    if "training" in results:
        tr = results["training"]
        print()
        print(table(f"2. training on the full history ({tr['pairs']:,} customer-item pairs, {tr['users']:,} customers, "
                    f"{tr['items']:,} items; {tr['epochs']} epochs, {tr['no_components']} components, "
                    f"{tr['num_threads']} threads)",
                    ["step", "seconds (median)", "rounds"],
                    [["prepare (matrix, features)", f"{tr['prepare_s']:.1f}", "1"],
                     [f"fit, with {tr['user_features']} customer + {tr['item_features']} item features",
                      f"{tr['fit_median_s']:.1f}", " ".join(map(str, tr["fit_s"]))],
                     ["fit, identity only (peer: plain MF)", f"{tr['fit_identity_only_median_s']:.1f}",
                      " ".join(map(str, tr["fit_identity_only_s"]))]]))
    q = results.get("quality")
    if q:
        for split in ("validation", "test"):
            m = q["metrics"].get(split) or {}
            if m.get("users"):
                w = q["windows"]
                span = (f"{w['validation_start'][:10]}..{w['test_start'][:10]}" if split == "validation"
                        else f"{w['test_start'][:10]}..{w['end'][:10]}")
                print()
                print(table(f"3. {split} window {span}, k={m['k']} ({m['users']:,} customers)",
                            ["items / scorer", "p@10", "r@10", "ndcg@10", "auc", "coverage", "customers"],
                            quality_rows(m)))
        print(f"blend tuned on validation: repeat_weight {q['blend']['repeat_weight']:g}, half-life "
              f"{q['blend']['half_life_days']:g} d; {q['reason']}")
    print()
    for name, t in targets.items():
        print(f"target {name}: {t['value']} {t['target']}: {pf(t['pass'])}")
    print(f"JSON: {args.out}  (elapsed {results['elapsed_s']:.0f} s)")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
