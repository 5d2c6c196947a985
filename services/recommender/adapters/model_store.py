"""The published model, as a running replica holds it: loads the version that `CURRENT` names,
checks now and then whether it moved (a new version, a rollback) or its files were rewritten
(erased customers scrubbed), and swaps in a version only once it has loaded whole. A version
that fails to load leaves the previous one serving, and says why."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from vicino.services.kernel.contracts.model_artifact import (ArtifactError, ModelArtifact, current_version, read_version,
                                                             version_stamp)

log = logging.getLogger("vicino.recommender.model")


@dataclass
class ModelStatus:
    serving: str | None = None         # the version in use
    loaded_at: float | None = None
    failed_version: str | None = None  # the last version that could not be loaded
    failure: str | None = None


class ModelHolder:
    def __init__(self, root: str) -> None:
        self.root = root
        self.model: ModelArtifact | None = None
        self.status = ModelStatus()
        self._lock = asyncio.Lock()
        self._stamp: tuple | None = None     # the serving version's files when loaded
        self._failed: tuple | None = None    # (version, stamp) that failed: not retried until it changes

    def _published(self) -> tuple[str | None, tuple | None]:
        wanted = current_version(self.root)
        return wanted, (version_stamp(self.root, wanted) if wanted is not None else None)

    async def refresh(self) -> bool:
        """Loads the published version if it is not the one serving (and did not fail before);
        True when a new version was swapped in."""
        async with self._lock:
            wanted, stamp = await asyncio.to_thread(self._published)
            if wanted == self.status.serving and stamp in (self._stamp, None):  # (back) on the serving version
                self.status.failed_version = self.status.failure = None
                return False
            if wanted is None or (wanted, stamp) == self._failed:  # a version changes only when scrubbed
                return False
            try:
                model = await asyncio.to_thread(read_version, self.root, wanted)
            except ArtifactError as e:
                self._failed = (wanted, stamp)
                self.status.failed_version, self.status.failure = wanted, str(e)
                log.error("model version failed to load; the previous one keeps serving",
                          extra={"fields": {"version": wanted, "serving": self.status.serving, "error": str(e)}})
                return False
            self.model, self._stamp, self._failed = model, stamp, None
            self.status = ModelStatus(serving=wanted, loaded_at=time.time())
            log.info("model version loaded", extra={"fields": {"version": wanted,
                                                                "users": len(model.user_index),
                                                                "items": len(model.manifest.item_ids)}})
            return True

    async def follow(self, stop: asyncio.Event, every_s: float) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:  # the file system hiccuped: keep serving, try again later
                log.exception("model refresh failed")
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass

    def readiness(self) -> str:
        s = self.status
        if s.failure:
            return f"degraded: version {s.failed_version} failed to load ({s.failure}); serving {s.serving or 'no model (popularity fallback)'}"
        return "ok"


class ModelCollector:
    """Prometheus collector of the served model: its age (now − the manifest's `created_at`, when
    training made it), so that a retrain that stopped publishing is seen; and whether the last
    published version failed to load. `holder` is a callable: the holder exists once the app starts."""

    def __init__(self, holder, clock=time.time) -> None:
        self._holder = holder
        self._clock = clock

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        age = GaugeMetricFamily("vicino_model_age_seconds", "age of the served model version (since training "
                                "created it); absent while no model serves (popularity fallback)")
        failed = GaugeMetricFamily("vicino_model_load_failed", "1 while the published version failed to load "
                                   "and an older one (or none) serves")
        holder = self._holder()
        if holder is not None:
            if holder.model is not None:
                age.add_metric([], max(0.0, self._clock() - holder.model.manifest.created_at))
            failed.add_metric([], 1.0 if holder.status.failure else 0.0)
        yield age
        yield failed
