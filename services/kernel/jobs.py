"""What a scheduled job is, so that a service can offer jobs that the scheduler runs without
either importing the other: a name, a default schedule, and an async callable that does the
work and returns a short summary. The composition root (services/cli/job_catalog.py) collects the
jobs of every service and hands them to the scheduler and to `vicino jobs`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class JobContext:
    """Handed to a job run: the shared Redis client (async), a progress callback (a bar in the
    foreground, nothing under the scheduler) and the job's logger."""

    redis: Any
    progress: Progress = no_progress
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vicino.jobs"))


JobCallable = Callable[[JobContext], Awaitable[dict]]


@dataclass(frozen=True)
class JobDefinition:
    name: str
    description: str
    schedule: str  # "every 5m", "daily 03:30" or "off" (the scheduler parses it)
    run: JobCallable
    long: bool = False  # shows a progress bar under `vicino jobs run`
    lease_s: float = 120.0  # the run lock's lease, renewed while the job runs
