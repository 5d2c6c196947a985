"""The scheduler against a real Redis: one run per job at a time and one run per scheduled
occurrence across replicas, failing jobs recorded and retried while the others go on, the jobs
API, `vicino jobs`, and `vicino serve scheduler` as a process."""
import asyncio
import time

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from vicino.services.cli import app as cli
from vicino.services.kernel.auth import DeviceClaims, TokenSigner
from vicino.services.kernel.jobs import JobContext, JobDefinition
from vicino.services.runtime.redis_client import open_async
from vicino.services.scheduler.adapters.run_store import RunStore
from vicino.services.scheduler.app import create_app
from vicino.services.scheduler.domain.runs import JobRun
from vicino.services.scheduler.settings import SchedulerSettings
from vicino.services.scheduler.wiring import build
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
from tests.support import assert_problem, epoch, served_service, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def settings_for(redis_url: str, **kw) -> SchedulerSettings:
    return SchedulerSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, **kw)


def test_jobs(every: str = "every 10s") -> list[JobDefinition]:
    async def tick(ctx):
        return {"ticks": await ctx.redis.incr("test:ticks")}

    async def boom(ctx):
        await ctx.redis.incr("test:booms")
        raise RuntimeError("boom: the history store is away")

    async def slow(ctx):
        await ctx.redis.incr("test:slow")
        await asyncio.sleep(1.0)
        return {}

    return [JobDefinition("tick", "counts", every, tick), JobDefinition("boom", "always fails", every, boom),
            JobDefinition("slow", "takes a second", "off", slow, lease_s=30)]


test_jobs.__test__ = False  # a factory, not a test


def test_two_replicas_run_each_occurrence_once_and_a_failing_job_stops_nothing(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    s = settings_for(redis_url)
    # wait for the start of a 10 s period so that two occurrences fit in ~20 s
    time.sleep(10 - time.time() % 10 + 0.2)
    with TestClient(create_app(s, test_jobs(), host="replica-a")), \
            TestClient(create_app(s, test_jobs(), host="replica-b")):
        wait_until(lambda: int(r.get("test:booms") or 0) >= 2 and int(r.get("test:ticks") or 0) >= 2, 25, 0.1,
                   "two occurrences of each job")
        time.sleep(0.5)

    async def history():
        client = open_async(redis_url)
        try:
            store = RunStore(client)
            return await store.history("tick", 50), await store.history("boom", 50)
        finally:
            await client.aclose()

    ticks, booms = asyncio.run(history())
    assert int(r.get("test:ticks")) == len(ticks) >= 2
    assert int(r.get("test:booms")) == len(booms) >= 2
    for runs in (ticks, booms):
        occurrences = [int(run.started_at // 10) for run in runs]
        assert len(set(occurrences)) == len(occurrences), "an occurrence ran twice"
        assert {run.host for run in runs} <= {"replica-a", "replica-b"}
        assert all(run.trigger == "schedule" for run in runs)
    assert all(run.outcome == "failed" and run.error == "RuntimeError: boom: the history store is away"
               for run in booms)
    # the failing job was retried at its next occurrence, and the other job kept running beside it
    assert all(run.outcome == "ok" for run in ticks)


def test_the_run_lock_keeps_a_second_runner_out_until_the_first_ends(redis_url):
    s = settings_for(redis_url)

    async def main():
        client = open_async(redis_url)
        try:
            a, b = build(s, client, test_jobs(), host="a").runner, build(s, client, test_jobs(), host="b").runner
            first, second = await asyncio.gather(a.run("slow"), b.run("slow"))
            results = sorted([first, second], key=lambda x: x.status)
            assert [x.status for x in results] == ["locked", "ran"]
            assert results[0].holder["host"] in ("a", "b") and results[0].holder["run_id"] == results[1].run.run_id
            again = await b.run("slow")  # the lock is released at the end
            assert again.status == "ran"
            # a scheduled occurrence is claimed once, even after the run ended
            now = time.time()
            assert (await a.run("tick", "schedule", now=now)).status == "ran"
            assert (await b.run("tick", "schedule", now=now + 1)).status == "done_elsewhere"
            assert (await b.run("tick", "manual")).status == "ran"  # a manual run is not an occurrence
            return int(await client.get("test:slow"))
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 2


def test_jobs_api(redis_url):
    s = settings_for(redis_url)
    device = TokenSigner(TOKEN_SECRET).issue(DeviceClaims("dev-1", "cust-1", "t1", time.time() + 3600))
    with TestClient(create_app(s, test_jobs(), run_schedule=False), raise_server_exceptions=False) as c:
        assert_problem(c.get("/v1/jobs"), 401)
        assert_problem(c.get("/v1/jobs", headers={"Authorization": f"Bearer {device}"}), 403, "admin")
        jobs = {j["name"]: j for j in c.get("/v1/jobs", headers=ADMIN).json()["jobs"]}
        assert set(jobs) == {"tick", "boom", "slow"}
        assert jobs["slow"]["schedule"] == "off" and jobs["tick"]["schedule"] == "every 10s"
        # the next occurrence is the schedule's, the same on every replica, firing here or not
        tick_next = epoch(jobs["tick"]["next_run_at"])  # RFC 3339 UTC
        assert jobs["tick"]["last_run"] is None and tick_next % 10 == 0
        assert tick_next > time.time() - 1 and jobs["slow"]["next_run_at"] is None

        assert c.post("/v1/jobs/slow/runs", headers=ADMIN).status_code == 202
        wait_until(lambda: c.get("/v1/jobs", headers=ADMIN).json()["jobs"][1]["running"] is not None, 5, 0.02,
                   "the run in progress")
        running = c.get("/v1/jobs", headers=ADMIN).json()["jobs"][1]["running"]
        assert abs(epoch(running["started_at"]) - time.time()) < 10 and running["run_id"]
        assert_problem(c.post("/v1/jobs/slow/runs", headers=ADMIN), 409, "slow is running")
        assert c.post("/v1/jobs/boom/runs", headers=ADMIN).status_code == 202

        def ended(name):
            run = {j["name"]: j for j in c.get("/v1/jobs", headers=ADMIN).json()["jobs"]}[name]["last_run"]
            return run if run and run["outcome"] != "running" else None

        wait_until(lambda: ended("slow") and ended("boom"), 10, 0.05, "both runs ended")
        slow, boom = ended("slow"), ended("boom")
        assert slow["outcome"] == "ok" and slow["trigger"] == "api"
        assert epoch(slow["ended_at"]) >= epoch(slow["started_at"]) + 0.9
        assert boom["outcome"] == "failed" and "boom" in boom["error"]
        listed = {j["name"]: j for j in c.get("/v1/jobs", headers=ADMIN).json()["jobs"]}
        assert listed["slow"]["last_success_at"] == slow["ended_at"] and listed["boom"]["last_success_at"] is None

        one = c.get("/v1/jobs/boom", headers=ADMIN).json()
        assert [r["outcome"] for r in one["runs"]] == ["failed"]
        assert epoch(one["runs"][0]["started_at"]) <= epoch(one["runs"][0]["ended_at"])
        assert one["last_success_at"] is None
        assert_problem(c.get("/v1/jobs/nope", headers=ADMIN), 404, "no job 'nope'", "tick")
        assert_problem(c.post("/v1/jobs/nope/runs", headers=ADMIN), 404, "no job 'nope'")
        assert_problem(c.get("/v1/jobs/Not-A-Name", headers=ADMIN), 422)
        assert_problem(c.get("/v1/jobs/boom?limit=0", headers=ADMIN), 422)
        metrics = c.get("/metrics").text
        assert 'vicino_job_runs_total{job="boom",outcome="failed"} 1.0' in metrics
        assert 'vicino_job_runs_total{job="slow",outcome="ok"} 1.0' in metrics


def test_a_run_whose_process_died_shows_as_lost(redis_url):
    s = settings_for(redis_url)

    async def begin_and_vanish():
        client = open_async(redis_url)
        try:
            await RunStore(client).begin(JobRun("tick", "r-dead", "schedule", "gone-1", time.time()), 0.3, None)
        finally:
            await client.aclose()

    asyncio.run(begin_and_vanish())
    with TestClient(create_app(s, test_jobs(), run_schedule=False)) as c:
        tick = lambda: {j["name"]: j for j in c.get("/v1/jobs", headers=ADMIN).json()["jobs"]}["tick"]  # noqa: E731
        assert tick()["last_run"]["outcome"] == "running" and tick()["running"]["host"] == "gone-1"
        wait_until(lambda: tick()["last_run"]["outcome"] == "lost", 5, 0.05, "the lease to run out")
        # and the job can run again
        assert c.post("/v1/jobs/tick/runs", headers=ADMIN).status_code == 202
        wait_until(lambda: tick()["last_run"]["outcome"] == "ok", 5, 0.05, "a new run")


@pytest.fixture
def job_env(redis_url, tmp_path, monkeypatch):
    for k, v in {"VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN, "VICINO_TOKEN_SECRET": TOKEN_SECRET,
                 "VICINO_HISTORY_DIR": str(tmp_path / "history"), "VICINO_MODEL_DIR": str(tmp_path / "models"),
                 "VICINO_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(k, v)
    return tmp_path


ALL_JOBS = {"trim_streams", "reclaim_stuck", "retrain", "export_history", "apply_erasures", "scrub_models", "kpi_rollup"}


def test_vicino_jobs_list_and_run(job_env):
    runner = CliRunner()
    r = runner.invoke(cli, ["jobs", "run", "nope"])
    assert r.exit_code == 2 and "no job 'nope'" in r.output and "trim_streams" in r.output
    r = runner.invoke(cli, ["jobs", "list"])
    assert r.exit_code == 0, r.output
    assert {line.split()[0] for line in r.output.splitlines()[1:] if line and not line.startswith(" ")} == ALL_JOBS
    for name in ("trim_streams", "reclaim_stuck", "export_history", "apply_erasures", "kpi_rollup"):
        r = runner.invoke(cli, ["jobs", "run", name])
        assert r.exit_code == 0 and f"{name}: ok" in r.output, r.output
    # nothing to train on: a failure, said clearly, recorded, and the exit code says so
    r = runner.invoke(cli, ["jobs", "run", "retrain"])
    assert r.exit_code == 1 and "no history to train on" in r.output
    r = runner.invoke(cli, ["jobs", "list"])
    retrain = [line for line in r.output.splitlines() if line.startswith("retrain")][0]
    assert "failed" in retrain and "error: RuntimeError: no history to train on" in r.output


def test_unknown_or_malformed_schedules_refuse_to_start(job_env, monkeypatch):
    monkeypatch.setenv("VICINO_JOB_SCHEDULES", '{"retrian": "daily 02:00"}')
    r = CliRunner().invoke(cli, ["jobs", "list"])
    assert r.exit_code == 2 and "unknown job(s) retrian" in r.output
    monkeypatch.setenv("VICINO_JOB_SCHEDULES", '{"retrain": "nightly"}')
    r = CliRunner().invoke(cli, ["jobs", "list"])
    assert r.exit_code == 2 and "VICINO_JOB_SCHEDULES[retrain]" in r.output


def test_vicino_serve_scheduler_fires_and_shows_its_jobs(redis_url, tmp_path):
    env = {"VICINO_JOB_SCHEDULES": '{"reclaim_stuck": "every 10s", "trim_streams": "off", "retrain": "off", '
                                   '"export_history": "off", "apply_erasures": "off", "scrub_models": "off", "kpi_rollup": "off"}',
           "VICINO_HISTORY_DIR": str(tmp_path / "history"), "VICINO_MODEL_DIR": str(tmp_path / "models")}
    with served_service("scheduler", redis_url, tmp_path, env=env) as url:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=10) as c:
            def reclaim():
                return {j["name"]: j for j in c.get("/v1/jobs").json()["jobs"]}["reclaim_stuck"]

            assert {j["name"] for j in c.get("/v1/jobs").json()["jobs"]} == ALL_JOBS
            assert -1 < epoch(reclaim()["next_run_at"]) - time.time() <= 11  # every 10 s
            wait_until(lambda: (reclaim()["last_run"] or {}).get("outcome") == "ok", 15, 0.2, "a scheduled run")
            assert reclaim()["last_run"]["trigger"] == "schedule"
            assert httpx.get(url + "/v1/jobs").status_code == 401


def test_apply_erasures_job_rewrites_the_log_only_when_the_register_changed(redis_url, tmp_path):
    from vicino.services.kernel.contracts.interactions import InteractionV1
    from vicino.services.recommender.adapters.erasure_register import ErasureRegister
    from vicino.services.kernel.contracts.interaction_log import INTERACTIONS
    from vicino.services.recommender.adapters.parquet_log import ParquetLog, interactions_table
    from vicino.services.recommender.jobs import apply_pending_erasures
    from tests.conftest import make_rec_settings

    settings = make_rec_settings(redis_url, history_dir=str(tmp_path / "history"))
    now = time.time()
    rows = [InteractionV1(event_id=f"e{i}", customer_id=c, channel="web", type="view", item_id="i1",
                          ts=now - 3600, received_at=now - 3600) for i, c in enumerate(["gone", "kept", "later"])]
    log = ParquetLog(settings.history_dir)
    log.write_partitioned(INTERACTIONS, interactions_table(rows), "t")

    async def erase_and_apply(customer: str | None):
        client = open_async(redis_url)
        try:
            if customer:
                await ErasureRegister(client, settings.erasure_register_key()).record([customer], time.time())
            return await apply_pending_erasures(JobContext(client), settings)
        finally:
            await client.aclose()

    first = asyncio.run(erase_and_apply("gone"))
    assert first["new_since_last_run"] and first["rows_dropped"] == 1 and first["files_rewritten"] == 1
    assert sorted(log.read_interactions()["customer_id"].to_pylist()) == ["kept", "later"]
    assert asyncio.run(erase_and_apply(None)) == {"erased_customers": 1, "new_since_last_run": False}
    third = asyncio.run(erase_and_apply("later"))
    assert third["new_since_last_run"] and third["rows_dropped"] == 1
    assert log.read_interactions()["customer_id"].to_pylist() == ["kept"]
