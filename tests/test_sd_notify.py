"""systemd's notifications (server/notify.py): the messages, and ``serve`` sending them to a real
unix datagram socket as systemd would read it (the sender's pid too, as NotifyAccess=main checks)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from load_balancing_module.server.notify import Notifier, message, socket_address, watchdog_interval

# -- the messages -------------------------------------------------------------------------


def test_a_message_is_key_value_lines_and_a_value_cannot_add_a_line() -> None:
    assert message(READY=1, STATUS="serving") == b"READY=1\nSTATUS=serving"
    assert message(STATUS="a\nREADY=1") == b"STATUS=a READY=1"


def test_the_socket_name_a_path_or_an_abstract_name() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/42") == "\0/org/freedesktop/systemd1/notify/42"
    assert socket_address("@") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_the_watchdog_pings_at_half_the_period_and_only_in_its_process() -> None:
    assert watchdog_interval("4000000", None, 7) == 2.0
    assert watchdog_interval("4000000", "7", 7) == 2.0
    assert watchdog_interval("4000000", "8", 7) is None  # asked of another process
    assert watchdog_interval(None, None, 7) is None
    assert watchdog_interval("0", None, 7) is None
    assert watchdog_interval("soon", None, 7) is None


def test_the_environment_is_taken_so_children_do_not_speak_to_systemd() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert (notifier.address, notifier.watchdog_every) == ("\0x", 0.5)
    assert env == {"PATH": "/bin"}
    assert not Notifier.from_environ({}).enabled
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "nonsense"}).enabled


def test_without_a_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier(None, 1.0)
    assert notifier.watchdog_every is None
    assert not notifier.ready("serving")


def test_a_send_that_fails_is_logged_once_and_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING):
        assert not notifier.ready("serving")
        assert not notifier.stopping()
    assert len([r for r in caplog.records if "sd_notify_failed" in r.getMessage()]) == 1
    notifier.close()


def test_a_full_queue_does_not_block(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(tmp_path / "n"))
        notifier = Notifier(str(tmp_path / "n"))
        started = time.monotonic()
        sent = [notifier.send(WATCHDOG=1) for _ in range(5000)]  # nobody reads: the queue fills
        assert time.monotonic() - started < 5
        assert sent[0] and not sent[-1]
        notifier.close()


# -- serve, as systemd sees it ----------------------------------------------------------------


class Listener:
    """The socket systemd would hold: every datagram with the pid that sent it (SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.seen: list[tuple[int, dict[str, str]]] = []

    def next(self, timeout: float = 20.0) -> tuple[int, dict[str, str]]:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        pid = next(struct.unpack("3i", d)[0] for lvl, kind, d in ancillary if kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.seen.append((pid, fields))
        return pid, fields

    def expect(self, key: str) -> dict[str, str]:
        """The next message but watchdog pings, which must carry ``key``."""
        while True:
            _, fields = self.next()
            if fields != {"WATCHDOG": "1"}:
                assert key in fields, f"expected {key}=, got {fields}"
                return fields


CONFIG = """\
listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0", token_env: null}
health_check: {enabled: false}
drain_timeout: 1
workers: WORKERS
backends:
  - {host: 127.0.0.1, port: 9}
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket path fits sun_path (108 bytes), which tmp_path may not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sdn") as name:
        yield Path(name)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_notifies_ready_reloading_stopping_and_the_watchdog(
    tmp_path: Path, short_dir: Path, workers: int
) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(CONFIG.replace("WORKERS", str(workers)))
    if workers == 1:
        address, name = str(short_dir / "notify"), str(short_dir / "notify")
    else:  # the abstract namespace, as systemd names its socket
        name = f"@omnixan-lb-test-{os.getpid()}"
        address = "\0" + name[1:]
    systemd = Listener(address)
    env = {**os.environ, "NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"}
    exe = Path(sys.executable).parent / "omnixan-lb"
    proc = subprocess.Popen([str(exe), "serve", "--config", str(config), "--log-level", "warning"], env=env)
    try:
        ready = systemd.expect("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("serving on port ")
        if workers > 1:
            assert ready["MAINPID"] == str(proc.pid)
        pings = 0
        while pings < 2:  # every 0.1 s
            _, fields = systemd.next()
            pings += fields == {"WATCHDOG": "1"}

        before = time.monotonic_ns() // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = systemd.expect("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) >= before
        assert systemd.expect("READY")["STATUS"] == "serving"

        config.write_text("listen: [not a config\n")  # refused: READY=1 all the same, the old config runs
        proc.send_signal(signal.SIGHUP)
        systemd.expect("RELOADING")
        assert "refused" in systemd.expect("READY")["STATUS"]

        proc.send_signal(signal.SIGTERM)
        assert systemd.expect("STOPPING")["STOPPING"] == "1"
        assert proc.wait(30) == 0
        # Only the main process spoke (the workers were started without NOTIFY_SOCKET).
        assert {pid for pid, _ in systemd.seen} == {proc.pid}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.sock.close()
