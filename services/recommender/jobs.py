"""The recommender's periodic jobs, offered to the scheduler (services/cli/job_catalog.py hands them
over; the scheduler never imports this service): retraining through the model gate, the export
of the interaction streams to the Parquet log, erasures applied to the written log and to the
kept model versions, and the KPI roll-ups. `vicino jobs run NAME` runs the same functions in the foreground."""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict

from vicino.services.kernel.jobs import JobContext, JobDefinition

from .adapters.erasure_register import ErasureRegister
from .adapters.parquet_log import apply_erasures
from .adapters.redis_keys import ERASURES_APPLIED, MODELS_SCRUBBED
from .settings import RecommenderSettings
from .workers.exporter import Exporter


async def export_history(ctx: JobContext, settings: RecommenderSettings) -> dict:
    """What the interaction streams hold now, into the Parquet log (shards another exporter,
    such as `recommender-worker`, is draining are skipped: it has them)."""
    return asdict(await Exporter(ctx.redis, settings).run_once())


async def apply_pending_erasures(ctx: JobContext, settings: RecommenderSettings) -> dict:
    """Rewrites the log's files still holding rows of erased customers, when the register has
    changed since the last run that finished (a scan of every file otherwise costs for nothing)."""
    register = await ErasureRegister(ctx.redis, settings.erasure_register_key()).all_digests()
    seen = f"{len(register)}:{max(register.values(), default=0.0)!r}"
    last = await ctx.redis.get(ERASURES_APPLIED)
    if last is not None and (last.decode() if isinstance(last, bytes) else last) == seen:
        return {"erased_customers": len(register), "new_since_last_run": False}
    report = await asyncio.to_thread(apply_erasures, settings.history_dir, register, ctx.progress,
                                     key=settings.erasure_register_key())
    await ctx.redis.set(ERASURES_APPLIED, seen)
    return {"erased_customers": len(register), "new_since_last_run": True, **asdict(report)}


async def retrain(ctx: JobContext, settings: RecommenderSettings) -> dict:
    """The CLI's `vicino train --data <history dir> --publish`: the same entry point, publishing
    only when the gate passes (never forced), without erased customers' rows, with a learned row
    only for customers with personalisation consent; then the newest VICINO_MODEL_KEEP versions stay."""
    from vicino.models.data import CustomerPolicy, DataError
    from vicino.models.pipeline import TrainSettings, train_and_publish  # LightFM: only when this job runs
    from vicino.services.runtime.redis_client import open_sync

    from .adapters.training_inputs import erased_customers, personalised_among

    def train():
        redis = open_sync(settings.redis_url)
        try:
            as_of = time.time()  # before the read: an erasure recorded after it is scrubbed later
            policy = CustomerPolicy(erased_customers(redis), as_of, lambda ids: personalised_among(redis, ids),
                                    settings.erasure_register_key())
            return train_and_publish(settings.history_dir, settings.model_dir, publish=True, settings=TrainSettings(),
                                     progress=ctx.progress, customers=policy, keep=settings.model_keep)
        finally:
            redis.close()

    try:
        report = await asyncio.to_thread(train)
    except DataError as e:
        raise RuntimeError(f"no history to train on in {settings.history_dir}: {e}") from None
    return {"version": report.version, "published": report.published, "gate_passed": report.gate_passed,
            "reason": report.reason, "current": report.current, "rows": report.data_window.get("rows", 0),
            "erased_rows_dropped": report.data_window.get("erased_rows_dropped", 0),
            "users_without_learned_row": report.data_window.get("users_without_learned_row", 0),
            "pruned": report.pruned}


def scrub_model_dir(model_dir: str, register: dict[str, float], key: bytes) -> dict:
    """Every kept version without the customers of `register` (see `scrub_version`)."""
    from vicino.services.kernel.contracts.model_artifact import ArtifactError, list_versions, scrub_version

    removed, unreadable = 0, []
    for version in list_versions(model_dir):
        try:
            removed += scrub_version(model_dir, version, register, key)
        except (ArtifactError, FileNotFoundError):  # pruned meanwhile, or broken: never served either way
            unreadable.append(version)
    return {"customers_removed": removed, "unreadable_versions": unreadable}


async def scrub_models(ctx: JobContext, settings: RecommenderSettings) -> dict:
    """Removes erased customers from every kept model version, when the register or the set of
    versions changed since the last run that finished (a new version may have been trained
    while an erasure was recorded)."""
    from vicino.services.kernel.contracts.model_artifact import list_versions

    register = await ErasureRegister(ctx.redis, settings.erasure_register_key()).all_digests()
    versions = await asyncio.to_thread(list_versions, settings.model_dir)
    seen = hashlib.sha256(f"{len(register)}:{max(register.values(), default=0.0)!r}:{','.join(versions)}"
                          .encode()).hexdigest()
    last = await ctx.redis.get(MODELS_SCRUBBED)
    if last is not None and (last.decode() if isinstance(last, bytes) else last) == seen:
        return {"versions": len(versions), "new_since_last_run": False}
    report = await asyncio.to_thread(scrub_model_dir, settings.model_dir, register, settings.erasure_register_key())
    await ctx.redis.set(MODELS_SCRUBBED, seen)
    return {"versions": len(versions), "new_since_last_run": True, **report}


async def kpi_rollup(ctx: JobContext, settings: RecommenderSettings) -> dict:
    """The daily KPI reports of the days whose figures are final and not rolled up yet."""
    from vicino.services.kernel.clock import SystemClock

    from .wiring import build_kpis

    return await build_kpis(settings, ctx.redis, SystemClock()).roll_up(ctx.progress)


def recommender_jobs(settings: RecommenderSettings) -> list[JobDefinition]:
    async def _export(ctx: JobContext) -> dict:
        return await export_history(ctx, settings)

    async def _erasures(ctx: JobContext) -> dict:
        return await apply_pending_erasures(ctx, settings)

    async def _retrain(ctx: JobContext) -> dict:
        return await retrain(ctx, settings)

    async def _kpis(ctx: JobContext) -> dict:
        return await kpi_rollup(ctx, settings)

    async def _scrub(ctx: JobContext) -> dict:
        return await scrub_models(ctx, settings)

    return [
        JobDefinition("retrain", "train the model on the Parquet log and publish the version if it passes the gate",
                      "daily 03:30", _retrain, long=True, lease_s=600.0),
        JobDefinition("export_history", "move the interaction streams into the Parquet log (catch-up for "
                      "deployments without a continuously running exporter)", "every 5m", _export),
        JobDefinition("apply_erasures", "rewrite the Parquet files that still hold rows of erased customers",
                      "every 1h", _erasures, long=True, lease_s=600.0),
        JobDefinition("scrub_models", "remove erased customers from every kept model version (their id and "
                      "learned row)", "every 5m", _scrub, lease_s=600.0),
        JobDefinition("kpi_rollup", "store the KPI report of each day whose conversion window has closed",
                      "daily 01:15", _kpis, long=True, lease_s=600.0),
    ]
