"""Every Redis key the scheduler owns, all under the `{jobs}` hash tag (one Cluster slot: a
run's lock, occurrence claim and record are touched by one script).

- `vicino:{jobs}:lock:<job>`        string: the running run's token (JSON), with a lease (PX)
- `vicino:{jobs}:occurrence:<job>:<kind>`  string: the latest scheduled occurrence claimed
- `vicino:{jobs}:last`              hash job -> JSON of its latest run (running or ended)
- `vicino:{jobs}:last_ok`           hash job -> JSON of its latest successful run
- `vicino:{jobs}:runs:<job>`        list: JSON of its ended runs, newest first (capped)
"""
from __future__ import annotations

PREFIX = "vicino:{jobs}"
LAST = f"{PREFIX}:last"
LAST_OK = f"{PREFIX}:last_ok"


def lock_key(job: str) -> str:
    return f"{PREFIX}:lock:{job}"


def occurrence_key(job: str, schedule_kind: str) -> str:
    # per kind of schedule: occurrences of "every" and "daily" do not compare with each other
    return f"{PREFIX}:occurrence:{job}:{schedule_kind}"


def runs_key(job: str) -> str:
    return f"{PREFIX}:runs:{job}"
