"""The library installed without its extras: ``pip install omnixan-lb`` and nothing more.

It routes and completes a request, runs ``lb.call`` against real local TCP backends and a TCP health
check, with the in-memory store; then checks that no extra's module was imported, that each name of
an extra says which one to install, and that ``omnixan-lb serve`` says which extra it needs (exit 2).

Two ways to run it (not collected by pytest):

- ``python tests/lean_smoke.py`` in a virtual environment holding only the wheel and its declared
  dependencies (``make lean``, run by ``.ci/run``): the extras are truly absent, and the
  ``omnixan-lb`` script next to the interpreter is run as well;
- ``python tests/lean_smoke.py --refuse`` where the extras are installed: a ``sys.meta_path``
  finder refuses their imports first (tests/test_lean_install.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# The top-level modules of the extras ([server], [metrics], [redis], [aiohttp], [httpx]).
EXTRAS = ("prometheus_client", "redis", "yaml", "aiohttp", "httptools", "uvloop", "rich", "cryptography", "httpx")
SERVE_MESSAGE = "omnixan-lb serve needs the proxy's dependencies: pip install 'omnixan-lb[server]' (missing: "


class Refuse:
    """A meta path finder that makes the import of every extra's module fail, as if not installed."""

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> None:
        if name.partition(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"lean smoke: FAILED: {what}")


def raises_naming(extra: str, action: Callable[[], object]) -> None:
    """``action`` raises an ImportError whose message says ``pip install 'omnixan-lb[extra]'``."""
    try:
        action()
    except ImportError as exc:
        check(f"pip install 'omnixan-lb[{extra}]'" in str(exc), f"the error names [{extra}]: {exc}")
        return
    check(False, f"no ImportError naming [{extra}]")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


async def use_the_library() -> None:
    from load_balancing_module import (
        BackendConfig,
        HealthCheckConfig,
        HealthState,
        LoadBalancingModule,
        LoadBalancingModuleConfig,
        MemoryStore,
        Request,
        RouteResult,
    )

    servers = [await asyncio.start_server(echo, "127.0.0.1", 0) for _ in range(3)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False))
    async with LoadBalancingModule(config) as lb:
        check(isinstance(lb.store, MemoryStore), "the in-memory store by default")
        ids = [await lb.add_backend(BackendConfig(host="127.0.0.1", port=port)) for port in ports]

        route = await lb.route_request(Request(client_ip="10.0.0.7"))
        check(route.backend_id in ids, "a route to one of the backends")
        await lb.complete_request(route, success=True, latency_ms=1.5)

        async def ask(route: RouteResult) -> str:
            reader, writer = await asyncio.open_connection(route.host, route.port)
            writer.write(f"{route.backend_id}\n".encode())
            answer = await reader.readline()
            writer.close()
            return answer.decode().strip()

        answers = [await lb.call(Request(client_ip=f"10.0.0.{n}"), ask) for n in range(6)]
        check(set(answers) == set(ids), f"calls spread over every backend: {answers}")
        check((await lb.health_check(ids[0])).status is HealthState.HEALTHY, "a TCP health check passes")
        distribution = await lb.get_load_distribution()
        check(distribution.total_requests == 7, f"7 requests counted: {distribution.total_requests}")
    for server in servers:
        server.close()
        await server.wait_closed()


def the_extras_say_their_name() -> None:
    from load_balancing_module import HealthCheckConfig, LoadBalancingModule, LoadBalancingModuleConfig, RedisStore

    def metrics() -> object:
        from load_balancing_module import register_metrics

        return register_metrics

    raises_naming("metrics", metrics)
    raises_naming("metrics", lambda: __import__("load_balancing_module").LoadBalancerCollector)
    names: dict[str, object] = {}
    exec("from load_balancing_module import *", names)  # every name that needs no extra
    check("LoadBalancingModule" in names and "register_metrics" not in names, "import * without the extras")
    raises_naming("httpx", lambda: __import__("load_balancing_module.integrations.httpx"))
    raises_naming("aiohttp", lambda: __import__("load_balancing_module.integrations.aiohttp"))
    raises_naming("redis", lambda: RedisStore("redis://127.0.0.1:6379/0"))
    http_check = LoadBalancingModuleConfig(health_check=HealthCheckConfig(type="http"))
    raises_naming("aiohttp", lambda: LoadBalancingModule(http_check))


def the_command_line() -> None:
    from load_balancing_module import cli

    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        cli.main(["--version"])
    check(out.getvalue().startswith("omnixan-lb "), f"--version works: {out.getvalue()!r}")
    for command in (["serve", "--config", "lb.yaml"], ["check", "--config", "lb.yaml"], ["demo"]):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = cli.main(command)
        lines = err.getvalue().splitlines()
        check(code == 2, f"omnixan-lb {command[0]} exits with 2, not {code}")
        check(len(lines) == 1 and "pip install 'omnixan-lb[server]' (missing: " in lines[0], f"one line: {lines}")
    check(lines[0].startswith("omnixan-lb demo needs the proxy's dependencies"), lines[0])


def the_installed_script() -> None:
    """The ``omnixan-lb`` entry point of this environment, as a user runs it."""
    script = Path(sys.executable).parent / "omnixan-lb"
    check(script.exists(), f"{script} is installed")
    done = subprocess.run([str(script), "serve", "-c", "lb.yaml"], capture_output=True, text=True, timeout=60)
    check(done.returncode == 2, f"omnixan-lb serve exits with 2: {done.returncode} {done.stderr}")
    check(done.stderr.startswith(SERVE_MESSAGE) and done.stderr.count("\n") == 1, f"the message: {done.stderr!r}")
    check("Traceback" not in done.stderr, "no traceback")
    print(done.stderr.strip())


def main(argv: list[str]) -> int:
    refuse = "--refuse" in argv
    if refuse:
        sys.meta_path.insert(0, Refuse())
    import load_balancing_module
    from load_balancing_module import build

    asyncio.run(use_the_library())
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in EXTRAS)
    check(not loaded, f"the library imported no extra's module: {loaded}")
    check(not any(name.startswith("load_balancing_module.server") for name in sys.modules), "no proxy module")
    the_extras_say_their_name()
    the_command_line()
    if not refuse:
        check("site-packages" in load_balancing_module.__file__, "the installed package, not the source tree")
        the_installed_script()
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in EXTRAS)
    check(not loaded, f"still no extra's module: {loaded}")
    print(f"lean smoke: ok ({load_balancing_module.__file__}, {build.build_kind()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
