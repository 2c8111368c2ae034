"""The proxy's own accept loop: connections handed over, exhaustion counted and backed off."""

from __future__ import annotations

import asyncio
import errno
import socket

from load_balancing_module.server.listener import BACKOFF_MIN, Listener, bind


class Exhausting:
    """A listening socket whose first ``failures`` accepts fail as a host out of descriptors would."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self.sock = sock
        self.failures = failures
        self.attempts = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> tuple[str, int]:
        name: tuple[str, int] = self.sock.getsockname()
        return name

    def accept(self) -> tuple[socket.socket, object]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def close(self) -> None:
        self.sock.close()


async def test_connections_are_handed_over() -> None:
    [sock] = await bind("127.0.0.1", 0)
    accepted: list[socket.socket] = []
    listener = Listener(sock, accepted.append, lambda exc: None)
    listener.start()
    clients = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(3)]
    for _ in range(100):
        if len(accepted) == 3:
            break
        await asyncio.sleep(0.005)
    assert len(accepted) == 3 and all(not c.getblocking() for c in accepted)
    for s in [*clients, *accepted]:
        s.close()
    listener.close()
    assert listener.closed


async def test_exhaustion_is_reported_and_accepting_pauses_then_resumes() -> None:
    [sock] = await bind("127.0.0.1", 0)
    fake = Exhausting(sock, failures=2)
    accepted: list[socket.socket] = []
    errors: list[OSError] = []
    listener = Listener(fake, accepted.append, errors.append)  # type: ignore[arg-type]
    listener.start()
    client = socket.create_connection(("127.0.0.1", listener.port))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(400):
        if accepted:
            break
        await asyncio.sleep(0.005)
    # two failures: a pause of BACKOFF_MIN, then of twice that, then the connection is accepted
    assert len(errors) == 2 and errors[0].errno == errno.EMFILE
    assert len(accepted) == 1 and loop.time() - started >= 3 * BACKOFF_MIN * 0.9
    assert fake.attempts <= 4  # no spinning on the error: one try per pause
    client.close()
    accepted[0].close()
    listener.close()


async def test_binding_a_name_binds_each_of_its_addresses_on_one_port() -> None:
    sockets = await bind("localhost", 0)
    ports = {s.getsockname()[1] for s in sockets}
    assert len(ports) == 1 and len(sockets) >= 1
    for s in sockets:
        s.close()
