"""The load test's smoke run: `python -m loadtests.run` for 20 seconds with a few users, the way
`make loadtest` runs it (the whole stack as `vicino up` starts it, the FCM-like sink as the
provider, locust headless): no request fails, at least one fix ends as a push at the provider
within the run (an E2E event), the report is written, and no process of the stack is left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT

HARD_TIMEOUT_S = 240


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.e2e
@pytest.mark.timeout(HARD_TIMEOUT_S + 30)
def test_a_short_load_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_")}
    cmd = [sys.executable, "-m", "loadtests.run", "--duration", "12", "--users", "24", "--spawn-rate", "12",
           "--out", str(tmp_path), "--hard-timeout", str(HARD_TIMEOUT_S - 20)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=HARD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the runner stops the stack on SIGTERM
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the load run did not finish within {HARD_TIMEOUT_S} s:\n{out.decode(errors='replace')[-4000:]}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]

    reports = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(reports) == 1, reports
    report = reports[0]
    for name in ("summary.json", "locust_stats.csv", "locust_failures.csv", "locust_stats_history.csv",
                 "locust.html", "locust.log"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    summary = json.loads((report / "summary.json").read_text())

    assert summary["ok"] is True and summary["errors"] == [], summary["errors"]
    assert summary["failures"] == 0, summary["failures_detail"]
    assert summary["endpoints"]["POST /v1/locations"]["count"] > 0
    assert summary["fixes_per_s"] > 0 and summary["requests_per_s"] > 0
    assert summary["e2e"]["count"] >= 1, summary["counters"]
    assert summary["counters"]["pushes_twice"] == 0
    assert summary["e2e_locust"] and summary["e2e_locust"]["count"] >= 1  # the custom event is in locust's stats
    for name in ("geo", "recommender", "recommender-worker", "push", "scheduler", "redis", "sink", "locust"):
        assert summary["processes"][name]["rss_mb_max"], name
    assert summary["redis"]["used_memory"] > 0

    assert summary["leftover_processes"] == []
    pids = {name: p["pid"] for name, p in summary["processes"].items()}
    assert not [name for name, pid in pids.items() if _alive(pid)], "a process of the stack is still running"
