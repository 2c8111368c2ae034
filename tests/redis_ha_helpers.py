"""Real Redis Sentinel and Cluster deployments for the failover tests, on free ports in temp dirs.

Each group's ``up()`` starts its processes with ``redis-server`` (``--sentinel`` for the Sentinels: Debian's
``redis-sentinel`` is the same binary), waits until the deployment is ready, and stops every
process it started, by PID, whatever happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

SERVICE = "mymaster"
READY_TIMEOUT = 15.0  # seconds for a deployment to come up (sentinels find each other every 2 s)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"the failover tests need {name}: apt-get install redis-server redis-tools (.ci/run does it)")
    return path


def free_port(also_free: int = 0) -> int:
    """A free port on 127.0.0.1 (and ``port + also_free`` free too: a Cluster node's bus port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not also_free:
            return port
        if port + also_free <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + also_free))
                except OSError:
                    continue
            return port


def wait_until(what: str, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


class Processes:
    """The processes a deployment started, stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # port -> process

    def start(self, port: int, *args: str, conf: str = "") -> subprocess.Popen[bytes]:
        workdir = self.tmp / str(port)
        workdir.mkdir(exist_ok=True)
        command = [binary("redis-server")]
        if conf:
            (workdir / "redis.conf").write_text(conf)
            command.append(str(workdir / "redis.conf"))
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *args]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
        self.procs[port] = proc
        return proc

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


DATA = ("--save", "", "--appendonly", "no")


class SentinelGroup(Processes):
    """A primary, a replica and three Sentinels (quorum 2) watching it as ``mymaster``."""

    def __init__(self, tmp: Path, down_after_ms: int = 500, failover_timeout_ms: int = 2000) -> None:
        super().__init__(tmp)
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms

    def up(self) -> None:
        """Start the processes and wait until the Sentinels are ready (``close()`` stops them, even if this fails)."""
        down_after_ms, failover_timeout_ms = self.down_after_ms, self.failover_timeout_ms
        self.start(self.master, *DATA, "--repl-diskless-sync-delay", "0")
        wait_until("the primary", lambda: bool(client(self.master).ping()))
        self.start(self.replica, *DATA, "--replicaof", "127.0.0.1", str(self.master))
        wait_until("the replica's sync", lambda: client(self.replica).info("replication")["master_link_status"] == "up")
        # Each Sentinel is told its own id, the others' and the replica up front, so that none has
        # to wait for the hello messages (every 2 s) or the primary's INFO (every 10 s) to find them.
        ids = {port: f"{port:040x}" for port in self.sentinels}
        for port in self.sentinels:
            known = "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}\n"
                for other in self.sentinels
                if other != port
            )
            conf = (
                f"sentinel myid {ids[port]}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica}\n{known}"
            )
            self.start(port, "--sentinel", conf=conf)
        wait_until("the Sentinels to know each other and the replica", self._ready)

    def _ready(self) -> bool:
        for port in self.sentinels:
            sentinel = client(port)
            if len(sentinel.sentinel_sentinels(SERVICE)) < 2 or not sentinel.sentinel_slaves(SERVICE):
                return False
        return True

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinels) + f"/{SERVICE}/0"

    def primary(self) -> int:
        """The port the first Sentinel names as the primary now."""
        return int(client(self.sentinels[0]).sentinel_get_master_addr_by_name(SERVICE)[1])


class ClusterGroup(Processes):
    """A Redis Cluster of three primaries (no replicas) that keeps serving the slots it still has."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.ports = [free_port(also_free=10000) for _ in range(3)]

    def up(self) -> None:
        """Start the nodes and make the Cluster (``close()`` stops them, even if this fails)."""
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            wait_until(f"cluster node {port}", lambda port=port: bool(client(port).ping()))
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=READY_TIMEOUT,
        )
        wait_until("the cluster", self.ok)

    def start_node(self, port: int) -> None:
        conf = (
            "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n"
            "cluster-require-full-coverage no\n"
        )
        self.start(port, *DATA, conf=conf)

    def ok(self) -> bool:
        return all("cluster_state:ok" in _text(client(p).execute_command("CLUSTER INFO")) for p in self.ports)

    def restart(self, port: int) -> None:
        """The node again, from its nodes.conf (its slots back, its data gone: no persistence)."""
        self.start_node(port)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def owner(self, key: str) -> int:
        """The port of the node serving ``key``'s slot."""
        slot = int(client(self.ports[0]).execute_command("CLUSTER KEYSLOT", key))
        for start, end, (_host, port, *_rest), *_ in client(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(port)
        raise AssertionError(f"no node serves slot {slot}")


def _text(reply: object) -> str:
    """CLUSTER INFO as text, whether or not the client parsed it into a dict."""
    if isinstance(reply, dict):
        return "\n".join(f"{k}:{v}" for k, v in reply.items())
    return reply.decode() if isinstance(reply, bytes) else str(reply)
