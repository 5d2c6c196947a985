"""The one entry point: history in, a model version out, published when it earns it.

    train_and_publish(data, model_dir, publish=True) -> TrainReport

used by `vicino train`, the scheduler and the notebooks alike. Steps (see models/README.md):

1. load      the Parquet log (merges applied) or a history file, without erased customers'
             rows (`CustomerPolicy`); item metadata
2. validate  fit on the history before the validation window, score it as serving would,
             tune the blend (repeat weight, half-life) and decide the publication gate:
             the blended model must beat the popularity baseline (precision@k, all items)
3. test      fit on the history before the test window, evaluate the tuned blend and the
             baselines on the test window (the figures reported; not used for any decision)
4. final     fit on the whole history, export, write the version; point CURRENT at it only
             when asked to publish and the gate passed (or `force_publish`); then keep the
             newest `keep` versions (and always the published one)

Customers without personalisation consent (`CustomerPolicy.personalised`) have no identity
feature in any run: they train the shared feature embeddings as cold customers and get no row.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vicino.services.kernel.contracts.model_artifact import (Blend, ModelArtifact, current_version, prune_versions,
                                                             publish as publish_version)
from vicino.services.kernel.contracts.history_file import NON_PRODUCT_CODES, NON_PRODUCT_PREFIXES

from . import artifact, evaluation
from .data import (DEFAULT_CHANNEL_WEIGHTS, DEFAULT_TYPE_WEIGHTS, CustomerPolicy, DataError, Events, events_of,
                   load_history)
from .features import ItemInfo, describe_bands, item_feature_names, item_info, read_catalog
from .split import EvalSet, eval_set, windows
from .training import MatrixParams, ModelParams, TrainingData, fit, prepare

Progress = Callable[[str, int, int], None]   # (stage, done, total)
STAGES = ("load", "validation", "test", "final", "write")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run depends on; stored whole in the manifest."""
    # the interaction matrix
    type_weights: dict = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    channel_weights: dict = field(default_factory=lambda: dict(DEFAULT_CHANNEL_WEIGHTS))
    half_life_days: float = 30.0          # time decay of interaction weights, back from the window's end
    aggregate: str = "sum"                # sum | log1p of each pair's net weight
    user_identity: bool = True            # per-customer embeddings besides the features
    item_identity: bool = True
    user_feature_share: float | None = 0.2    # weight of the features beside the identity (None: equal)
    item_feature_share: float | None = 0.2
    item_activity: bool = True            # item features from recent sales: rank30:<band>, age:<band>
    # LightFM
    no_components: int = 64
    loss: str = "warp"
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 20
    epochs: int = 15
    num_threads: int = 2
    random_state: int = 42
    # split and evaluation
    test_days: int = 30
    validation_days: int = 30
    test_start: str | None = None         # ISO date; default: the last test_days days
    evaluate_test: bool = True            # False skips the test run (a faster scheduled retrain)
    k: int = 10
    popularity_days: float = 30.0         # "popular" = distinct buyers over this many days
    blend_weights: tuple = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 32.0)
    blend_half_lives: tuple = (14.0, 30.0, 90.0, 365.0, 3650.0)
    # publication
    gate_margin: float = 0.0              # blended p@k must exceed popularity p@k × (1 + margin)
    min_validation_users: int = 20
    force_publish: bool = False           # publish even when the gate refuses (said in the report)
    popular_items: int = 500
    catalog: str | None = None            # offer catalogue JSON: item categories, prices, brands

    def matrix(self) -> MatrixParams:
        return MatrixParams(self.type_weights, self.channel_weights, self.half_life_days, self.aggregate,
                            self.user_identity, self.item_identity, self.user_feature_share,
                            self.item_feature_share, self.item_activity)

    def model(self) -> ModelParams:
        return ModelParams(self.no_components, self.loss, self.learning_rate, self.item_alpha, self.user_alpha,
                           self.max_sampled, self.epochs, self.num_threads, self.random_state)

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)


@dataclass
class TrainReport:
    version: str
    path: str
    published: bool
    gate_passed: bool
    reason: str
    current: str | None                   # CURRENT after the run
    windows: dict
    data_window: dict
    blend: dict
    metrics: dict
    seconds: dict
    pruned: list[str] = field(default_factory=list)   # versions deleted after the publication

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A short human summary: the evaluation table and the decision."""
        out = [f"version {self.version} written to {self.path}",
               f"data: {self.data_window.get('rows', 0):,} rows, {self.data_window.get('users', 0):,} customers, "
               f"{self.data_window.get('items', 0):,} items; windows {self.windows}",
               f"blend: repeat_weight {self.blend['repeat_weight']:g}, half-life {self.blend['half_life_days']:g} d"]
        for split in ("validation", "test"):
            m = self.metrics.get(split)
            if m is None:
                out.append(f"{split}: not run")
                continue
            if not m.get("users"):
                out.append(f"{split}: no customer to evaluate" + (f" ({m['note']})" if m.get("note") else ""))
                continue
            out.append(f"{split} ({m['users']:,} customers, k={m['k']}):")
            out.append(" " * 18 + "".join(f"{h:>8}" for h in ("p@k", "r@k", "ndcg", "auc", "cov")))
            for scope in ("all", "new"):
                for name, r in m[scope].items():
                    if r.get("users"):
                        out.append(f"  {scope:<3} {name:<12} " + " ".join(
                            f"{r[x]:7.4f}" if r[x] is not None else "      -"
                            for x in ("precision", "recall", "ndcg", "auc", "coverage")))
        out.append(self.reason)
        out.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return out


@dataclass
class _Run:
    data: TrainingData
    model: object             # the LightFM model (benchmarks and notebooks compare against it)
    art: ModelArtifact
    arrays: dict
    fit_s: float


def _fit_run(events: Events, end: float, info: dict[str, ItemInfo], s: TrainSettings, stage: str,
             progress: Progress | None, learned: set[str] | None = None) -> _Run:
    data = prepare(events, end, info, s.matrix(), learned)
    t = time.perf_counter()
    model = fit(data, s.model(), (lambda d, n: progress(stage, d, n)) if progress else None)
    fit_s = time.perf_counter() - t
    arrays = artifact.export_arrays(model, data)
    fmap = {i: f for i, f in zip(data.item_ids, data.item_feature_lists)}
    manifest = artifact.build_manifest(data, version=f"{stage}-run", data_window={}, settings={}, metrics={},
                                       item_feature_map=fmap, popular_items=[], blend=Blend())
    art = artifact.in_memory(manifest, arrays)
    mean, std = artifact.score_stats(art)
    art.manifest = dataclasses.replace(manifest, blend=Blend(mean, std))
    return _Run(data, model, art, arrays, fit_s)


def _non_product(item: str) -> bool:
    """Postage, fees, adjustments: the codes the importer drops (a UCI file's descriptions name them)."""
    return item in NON_PRODUCT_CODES or item.startswith(NON_PRODUCT_PREFIXES)


def _blend_for(run: _Run, tuned: Blend) -> Blend:
    b = run.art.manifest.blend
    return Blend(b.score_mean, b.score_std, tuned.repeat_weight, tuned.half_life_days)


def _evaluate_window(events: Events, lo: float, hi: float, s: TrainSettings, info, stage: str,
                     progress: Progress | None, learned: set[str] | None) -> tuple[_Run | None, EvalSet | None, str]:
    train = events.before(lo)
    if len(train) == 0:
        return None, None, f"no history before the {stage} window"
    try:
        run = _fit_run(train, lo, info, s, stage, progress, learned)
    except DataError as e:
        return None, None, f"{stage} run: {e}"
    ev = eval_set(train, events.between(lo, hi), run.data.interactions, lo)
    return run, ev, ""


def train_and_publish(data: str | Path, model_dir: str | Path, *, publish: bool,
                      settings: TrainSettings | None = None, progress: Progress | None = None,
                      customers: CustomerPolicy | None = None, keep: int | None = None) -> TrainReport:
    """`customers`: the erasure register and consent of the deployment (None: a history file used
    as it is, every customer with a row); `keep`: after a publication, delete all but the newest
    `keep` versions (never the published one)."""
    s = settings or TrainSettings()
    policy = customers or CustomerPolicy()
    seconds: dict[str, float] = {}
    started = t = time.perf_counter()
    step = lambda name: seconds.__setitem__(name, time.perf_counter() - t)  # noqa: E731
    if progress:
        progress("load", 0, 1)
    history = load_history(data, policy.erased, policy.key)
    events = events_of(history.table)
    learned = set(policy.personalised([u for u in events.user_ids if u is not None])) if policy.personalised is not None else None
    catalog = read_catalog(s.catalog) if s.catalog else None
    info = item_info(events, history.descriptions, catalog)
    win = windows(float(events.ts.min()), float(events.ts.max()), test_days=s.test_days,
                  validation_days=s.validation_days, test_start=s.test_start)
    if progress:
        progress("load", 1, 1)
    step("load")

    # 2. validation: blend tuning and the gate
    t = time.perf_counter()
    tuned = Blend(repeat_weight=0.0, half_life_days=30.0)
    metrics: dict = {"k": s.k, "windows": win.as_dict()}
    run, ev, why = _evaluate_window(events, win.validation_start, win.test_start, s, info, "validation", progress,
                                   learned)
    gate, gate_why = False, why
    if run is not None and ev.n_users:
        model_m = evaluation.model_matrix(run.art, ev)
        tuned, grid = evaluation.tune_blend(model_m, ev, mean=run.art.manifest.blend.score_mean,
                                            std=run.art.manifest.blend.score_std, weights=s.blend_weights,
                                            half_lives=s.blend_half_lives, k=s.k)
        train = events.before(win.validation_start)
        val = evaluation.evaluate(run.art, ev, train, tuned, k=s.k, popularity_days=s.popularity_days, model=model_m)
        val["blend_grid"] = grid
        metrics["validation"] = val
        # the gate asks more than the global popularity: the stronger of the two peers
        blended = val["all"]["blended"]["precision"]
        popular = max(val["all"]["popularity"]["precision"], val["all"]["popularity_recent"]["precision"])
        if ev.n_users < s.min_validation_users:
            gate_why = f"only {ev.n_users} validation customers (< {s.min_validation_users})"
        elif blended > popular * (1 + s.gate_margin):
            gate, gate_why = True, (f"blended p@{s.k} {blended:.4f} > popularity {popular:.4f}"
                                    + (f" × {1 + s.gate_margin:g}" if s.gate_margin else "")
                                    + f" on validation ({ev.n_users} customers)")
        else:
            gate_why = (f"blended p@{s.k} {blended:.4f} does not beat popularity {popular:.4f}"
                        + (f" × {1 + s.gate_margin:g}" if s.gate_margin else "")
                        + f" on validation ({ev.n_users} customers)")
    elif run is not None:
        metrics["validation"] = {"users": 0}
        gate_why = "no validation customer: nobody known to the validation run bought in the validation window"
    else:
        metrics["validation"] = {"users": 0}
    step("validation")

    # 3. test: the reported figures
    t = time.perf_counter()
    if s.evaluate_test:
        run, ev, why = _evaluate_window(events, win.test_start, win.end + 1.0, s, info, "test", progress, learned)
        if run is not None and ev.n_users:
            metrics["test"] = evaluation.evaluate(run.art, ev, events.before(win.test_start), _blend_for(run, tuned),
                                                  k=s.k, popularity_days=s.popularity_days)
            metrics["test_fit_s"] = round(run.fit_s, 2)
        else:
            metrics["test"] = {"users": 0, "note": why or "no test customer"}
    step("test")

    # 4. final: the whole history
    t = time.perf_counter()
    run = _fit_run(events, win.end, info, s, "final", progress, learned)
    step("final")
    t = time.perf_counter()
    if progress:
        progress("write", 0, 1)
    final_blend = _blend_for(run, tuned)
    fmap = {i: f for i, f in zip(run.data.item_ids, run.data.item_feature_lists)}
    for item, inf in sorted(info.items()):   # items of the catalogue or of anonymous sales: for the cold start
        if item not in fmap and not _non_product(item) and (f := item_feature_names(inf)):
            fmap[item] = f
    pop = evaluation.popularity(events, np.arange(len(events.item_ids)), win.end + 1.0, s.popularity_days)
    order = np.lexsort((np.arange(len(pop)), -pop))
    popular_items = [events.item_ids[i] for i in order[:s.popular_items] if pop[i] > 0]
    version = artifact.new_version_name()
    data_window = {"start": win.start, "end": win.end, "rows": len(events), "source": history.source,
                   "format": history.format, "merges_applied": history.merges_applied,
                   "users": run.data.n_users, "items": run.data.n_items, "erased_rows_dropped": history.erased_rows,
                   "users_without_learned_row": int(run.data.n_users - run.data.learned_mask.sum())}
    metrics["gate"] = {"passed": gate, "reason": gate_why}
    metrics["final_fit_s"] = round(run.fit_s, 2)
    settings_doc = asdict(s) | {"features": describe_bands()}
    manifest = artifact.build_manifest(run.data, version=version, data_window=data_window, settings=settings_doc,
                                       metrics=metrics, item_feature_map=fmap, popular_items=popular_items,
                                       blend=final_blend, erasures_as_of=policy.erasures_as_of)
    path = artifact.write(model_dir, manifest, run.arrays)
    if publish and (gate or s.force_publish):
        publish_version(model_dir, version)
        reason = (f"published: {gate_why}" if gate else f"published despite the gate (force_publish): {gate_why}")
        published = True
    elif publish:
        reason, published = f"not published: {gate_why}", False
    else:
        reason, published = f"written, not published (publish not asked); gate {'passes' if gate else 'refuses'}: " \
                            f"{gate_why}", False
    pruned = prune_versions(model_dir, keep) if published and keep is not None else []
    if progress:
        progress("write", 1, 1)
    step("write")
    seconds["total"] = time.perf_counter() - started
    seconds["fit_final"] = run.fit_s
    return TrainReport(version=version, path=str(path), published=published, gate_passed=gate, reason=reason,
                       current=current_version(model_dir), windows=win.as_dict(), data_window=data_window,
                       blend=asdict(final_blend), metrics=metrics, seconds={k: round(v, 2) for k, v in seconds.items()},
                       pruned=pruned)
