"""A Redis Sentinel set of the test's own on loopback: a primary, a replica and three sentinels.

Real redis-server processes (``redis-server --sentinel`` for the sentinels, from Debian's
redis-server package), on free ports, with their files in a temporary directory; ``stop``
kills what it started and removes the directory. ``kill_primary`` is the fault: SIGKILL of
whichever node the sentinels call the master, then a wait until they have promoted another.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

from vterm_project.devstack import free_port

MASTER_NAME = "vterm-primary"


class SentinelSet:
    def __init__(self, *, password: str | None = "redis-pw", sentinel_password: str | None = "sentinel-pw",
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000, master_name: str = MASTER_NAME) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vterm-sentinel-"))
        self.password, self.sentinel_password = password, sentinel_password
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.master_name = master_name
        self.node_ports = [free_port(), free_port()]  # the first starts as the primary
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}  # port -> process

    # -- what clients are given -----------------------------------------------------------

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"sentinel://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def env(self) -> dict[str, str]:
        """REDIS_URL and friends, as a process of the stack is given them."""
        env = {"REDIS_URL": self.url, "REDIS_SENTINEL_MASTER": self.master_name}
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    # -- processes ----------------------------------------------------------------------------

    def start(self) -> SentinelSet:
        primary = self.node_ports[0]
        for port in self.node_ports:
            self._start_node(port, replica_of=None if port == primary else primary)
        self._wait(lambda: self._node(primary).ping(), "the primary to answer")
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self._wait(lambda: all(self._sentinel_knows_all(p) for p in self.sentinel_ports),
                   "every sentinel to know the replica and the other sentinels")
        self.wait_replica_attached()
        return self

    def _spawn(self, port: int, argv: list[str]) -> None:
        log = open(self.dir / f"{port}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_node(self, port: int, replica_of: int | None) -> None:
        data = self.dir / f"node-{port}"
        data.mkdir(exist_ok=True)
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(data), "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
                "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, argv)

    def _start_sentinel(self, port: int, primary: int) -> None:
        data = self.dir / f"sentinel-{port}"
        data.mkdir(exist_ok=True)
        m = self.master_name
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {data}",
                 f"sentinel monitor {m} 127.0.0.1 {primary} 2",
                 f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
                 f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {m} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {m} {self.password}")
        if self.sentinel_password:  # sentinels then also log in to each other with it
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        conf = data / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._spawn(port, [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state and faults ---------------------------------------------------------------------

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=2,
                           socket_connect_timeout=1)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.sentinel_password, socket_timeout=2,
                           socket_connect_timeout=1, decode_responses=True)

    def _sentinel_knows_all(self, port: int) -> bool:
        try:
            state = self._sentinel(port).sentinel_master(self.master_name)
        except redis.RedisError:
            return False
        return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2

    def primary_port(self) -> int | None:
        """The master's port as a majority of the live sentinels report it."""
        votes: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                _host, master_port = self._sentinel(port).sentinel_get_master_addr_by_name(self.master_name)
            except (redis.RedisError, TypeError):
                continue
            votes[int(master_port)] = votes.get(int(master_port), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] >= 2 else None

    def is_master(self, port: int) -> bool:
        try:
            return self._node(port).info("replication")["role"] == "master"
        except redis.RedisError:
            return False

    def replica_port(self) -> int:
        primary = self.primary_port()
        return next(p for p in self.node_ports if p != primary and p in self.procs)

    def signal_node(self, port: int, sig: int) -> None:
        """SIGSTOP / SIGCONT a node (a replica that stops reading its primary's stream)."""
        self.procs[port].send_signal(sig)

    def cut_replicas(self) -> None:
        """The primary drops its replicas' links: what it accepts next reaches none of them
        (a stopped replica would else still find it in its socket's buffer when resumed)."""
        self._node(self.primary_port()).client_kill_filter(_type="replica")

    def inbox_length(self, port: int, prefix: str, backend_id: str) -> int:
        """How many messages a backend's inbox holds on node ``port`` (sessions/redis_state.py's key)."""
        return int(self._node(port).llen(f"{prefix}vterm:backend:{backend_id}:inbox"))

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port."""
        port = self.primary_port()
        assert port is not None, "the sentinels name no primary"
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return port

    def wait_promoted(self, old: int, timeout: float = 60) -> int:
        """Until the sentinels name another primary that answers as one; its port."""
        got: list[int] = []

        def promoted() -> bool:
            port = self.primary_port()
            if port is not None and port != old and self.is_master(port):
                got.append(port)
                return True
            return False
        self._wait(promoted, f"a replica to be promoted in place of {old}", timeout)
        return got[-1]

    def restart_node(self, port: int) -> None:
        """Start a killed node again; the sentinels make it a replica of the new primary."""
        current = self.primary_port()
        self._start_node(port, replica_of=current if current != port else None)
        self._wait(lambda: self._node(port).ping(), f"node {port} to answer")

    def wait_replica_attached(self, timeout: float = 60) -> None:
        """Until the primary has a replica in sync again (the next failover has somewhere to go)."""
        def attached() -> bool:
            port = self.primary_port()
            if port is None:
                return False
            try:
                info = self._node(port).info("replication")
            except redis.RedisError:
                return False
            return info["role"] == "master" and int(info["connected_slaves"]) >= 1 and all(
                v.get("state") == "online" for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))
        self._wait(attached, "a replica in sync with the primary", timeout)

    @staticmethod
    def _wait(predicate, what: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if predicate():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
