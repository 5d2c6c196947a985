"""`make loadtest FAILOVER_AT=S` (`python -m loadtests.run --failover-at S`): the load test on a
real 3-master, 3-replica Redis Cluster (`cluster-node-timeout 2000`, AOF every second) whose
first master, the only node `VICINO_REDIS_URL` names, is SIGKILLed S seconds into the load.

Reported beside the usual summary: when the master died, when its replica was promoted, how
long each service took to answer /readyz again (the seconds without service), and the pushes
lost and doubled, reconciled from Redis and the provider stand-in: every decision that made a
push job must reach the stand-in exactly once, unless its delivery ended otherwise on purpose and
on record (suppressed: the visit ended first, the device was removed...; a refused token)."""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.deliveries import customer_deliveries_key
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from vicino.services.runtime.redis_client import open_sync

CUSTOMER_SHARDS = 16  # the services' default (VICINO_CUSTOMER_SHARDS); the run does not change it


# how a delivery ends without reaching the provider on purpose, on record (a push after the
# visit ended, for a removed device, an erased customer; a token the provider refused). Failed
# or expired deliveries are losses: the stand-in accepts everything and the run is shorter than
# a push's lifetime.
ENDED_ON_PURPOSE = frozenset({"suppressed", "token_invalid"})


class Failover:
    def __init__(self, data_dir: Path, at_s: float) -> None:
        self.at_s = at_s
        self.cluster = EmbeddedRedisCluster(data_dir, replicas=1, node_timeout_ms=2000)
        self.report: dict = {"at_s": at_s}
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    def start(self) -> str:
        """Starts the cluster; returns the URL the stack gets: the master that will die, alone."""
        self.cluster.start()
        victim = self.cluster.nodes[0]
        self.report.update({"masters": 3, "replicas_per_master": 1, "victim_port": victim.port})
        return victim.url

    @property
    def seeds_url(self) -> str:
        return self.cluster.seeds_url

    def pids(self) -> dict[str, int]:
        return {f"redis-{i}": n.proc.pid for i, n in enumerate(self.cluster.nodes) if n.proc is not None}

    def arm(self, service_urls: dict[str, str]) -> None:
        """Kills the master `at_s` seconds from now, in a thread, then times the recovery."""
        self._thread = threading.Thread(target=self._run, args=(service_urls,), name="failover", daemon=True)
        self._thread.start()

    def _run(self, service_urls: dict[str, str]) -> None:
        if self._cancel.wait(self.at_s):
            return
        victim = self.cluster.nodes[0]
        self.cluster.kill(victim)
        killed = time.monotonic()
        self.report["killed"] = True
        try:
            self.report["promoted_after_s"] = round(self.cluster.wait_healthy(30), 2)
        except RuntimeError as e:
            self.report["error"] = str(e)
            return
        promoted = time.monotonic()
        ready: dict[str, float] = {}
        with httpx.Client(timeout=2) as client:
            while len(ready) < len(service_urls) and time.monotonic() - promoted < 60 and not self._cancel.is_set():
                for name, url in service_urls.items():
                    if name not in ready:
                        try:
                            if client.get(url + "/readyz").status_code == 200:
                                ready[name] = round(time.monotonic() - promoted, 2)
                        except httpx.HTTPError:
                            pass
                time.sleep(0.1)
        self.report["ready_after_promotion_s"] = ready
        self.report["not_ready"] = sorted(set(service_urls) - set(ready))
        self.report["seconds_without_service"] = round(max(ready.values(), default=0.0) + promoted - killed, 2)

    def join(self, timeout_s: float = 90) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def reconcile(self, sink_url: str, settle_s: float = 30.0) -> dict:
        """Pushes lost and doubled: decisions with a push job against what the stand-in received.
        The last decisions' pushes may still be on their way: recounted until none is missing or
        `settle_s` has passed."""
        deadline = time.monotonic() + settle_s
        while True:
            out = self._count(sink_url)
            if (out["lost"] == 0 and out["dead_letters"] == 0) or time.monotonic() > deadline:
                return out
            time.sleep(1.0)

    def _count(self, sink_url: str) -> dict:
        client = open_sync(self.seeds_url)
        try:
            sent: dict[str, str] = {}  # decision id -> customer, of every decision that made a push job
            for shard in range(CUSTOMER_SHARDS):
                for _, fields in client.xrange(decisions_stream_key(shard)):
                    d = DecisionV1.from_stream_fields(fields)
                    if d.outcome == "send":
                        sent[d.decision_id] = d.customer_id
            # entries dead-lettered on the way (a visit event the worker gave up on, a push job the
            # gateway gave up on) are losses too, before any decision or push could show them
            dead = sum(client.xlen(k) for k in client.scan_iter(match="vicino:*:dead", count=1000, type="stream"))
            received: Counter[str] = Counter()
            for rec in httpx.get(f"{sink_url}/_control/received", params={"since": 0}, timeout=10).json():
                data = ((rec.get("json") or {}).get("message") or {}).get("data") or {}
                if data.get("decision_id") and rec.get("status") == 200:
                    received[data["decision_id"]] += 1
            # a push job not at the provider is lost unless its delivery ended otherwise on record
            # (suppressed because the visit ended first, expired, refused token...)
            ended: Counter[str] = Counter()
            missing = []
            for decision_id in sorted(set(sent) - set(received)):
                status = self._delivery_status(client, sent[decision_id], decision_id)
                if status is not None and status.split(":")[0] in ENDED_ON_PURPOSE:
                    ended[status] += 1
                else:
                    missing.append(f"{decision_id} ({status or 'no delivery record'})")
        finally:
            client.close()
        doubled = {d: n for d, n in received.items() if n > 1}
        return {"push_jobs": len(sent), "pushed": len(set(received) & set(sent)), "ended_otherwise": dict(ended),
                "dead_letters": dead, "lost": len(missing), "lost_decisions": missing[:20],
                "doubled": len(doubled), "doubled_decisions": dict(list(doubled.items())[:20])}

    @staticmethod
    def _delivery_status(client, customer_id: str, decision_id: str) -> str | None:
        for raw in client.hgetall(customer_deliveries_key(customer_id, CUSTOMER_SHARDS)).values():
            rec = orjson.loads(raw)
            if rec.get("decision_id") == decision_id:
                return f"{rec.get('status')}: {rec.get('reason')}" if rec.get("status") == "suppressed" else rec.get("status")
        return None

    def stop(self) -> None:
        self._cancel.set()
        self.cluster.stop()
