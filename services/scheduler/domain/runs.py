"""A job run's record, as the run log keeps it and GET /v1/jobs shows it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Outcome = Literal["running", "ok", "failed", "lost"]
Trigger = Literal["schedule", "manual", "api"]
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class JobRun:
    job: str
    run_id: str
    trigger: Trigger
    host: str
    started_at: float
    outcome: Outcome = "running"
    ended_at: float | None = None
    error: str | None = None
    summary: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else round(self.ended_at - self.started_at, 3)

    def finished(self, at: float, summary: dict) -> "JobRun":
        return replace(self, outcome="ok", ended_at=at, summary=summary)

    def failed(self, at: float, error: BaseException) -> "JobRun":
        text = f"{type(error).__name__}: {error}"
        return replace(self, outcome="failed", ended_at=at, error=text[:MAX_ERROR_CHARS])

    def as_seen(self, lock_held: bool) -> "JobRun":
        """A run recorded as running whose lock is gone died with its process: lost."""
        if self.outcome == "running" and not lock_held:
            return replace(self, outcome="lost", error="the process running it stopped before it ended")
        return self

    def to_dict(self) -> dict:
        return {**asdict(self), "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, d: dict) -> "JobRun":
        d = {k: v for k, v in d.items() if k != "duration_s"}
        return cls(**d)
