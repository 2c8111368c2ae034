"""User-space instructions per proxied request, counted by valgrind's callgrind.

Requests per second on a shared VM move by tens of percent from one minute to
the next; instruction counts do not (the same binary, inputs and environment
give the same count whatever else the machine does). So this script measures
the proxy's own cost per request as instructions, for:

- ``reference``: ``bench/reference_proxy.py``, the least a Python reverse
  proxy on uvloop + httptools does (the floor; not a usable proxy);
- ``omnixan-py``: ``omnixan-lb serve``, pure Python;
- ``omnixan``: the compiled build (the default install, ``pip install .``; else ``make compiled``).

Each runs under callgrind behind two nginx backends (bench/proxy.py's), gets
200 warm-up requests and then N requests on 10 keep-alive connections, and is
stopped; a second run without the N requests gives the fixed cost (start-up,
warm-up, shutdown), and the difference divided by N is the figure. Kernel
time (the system calls) is not counted: it is the same for all three, about a
third of a request's CPU time on this machine (bench/proxy.py's CPU figures).

    .venv/bin/python bench/proxy_instructions.py             # N = 2,000: about 5 minutes
    .venv/bin/python bench/proxy_instructions.py --requests 500 --only omnixan

``--variants`` measures the compiled build with edge features on, each against ``plain`` (the
same config without them), in instructions per request:

- ``routes-100``: 100 routes by path prefix, the request matching the last one (every route is
  tried: the worst case of a table without hosts);
- ``hosts-100``: 100 routes, each for a host of its own, the request's host the last one's (the
  host index finds its route at once);
- ``filter``: one route for every request with one trivial request filter
  (``bench/bench_filters.py``: it returns None).

    .venv/bin/python bench/proxy_instructions.py --requests 2000 --variants plain routes-100 hosts-100 filter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as P  # the nginx backends and process handling of bench/proxy.py

ROOT = Path(__file__).resolve().parent.parent
PORT = 19290  # its own ports, beside bench/proxy.py's
ADMIN = 19291
BACKENDS = (19201, 19202)
SAVED = ROOT / "docs" / "img" / "bench" / "edge.json"


async def _client(n: int, connections: int = 10) -> None:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.I)
            await reader.readexactly(int(length.group(1)) if length else 0)
        writer.close()

    await asyncio.gather(*(one(n // connections) for _ in range(connections)))


def _routes(count: int, *, hosts: bool) -> str:
    """``count`` routes to the default pool; the benchmark's request (``GET /`` for Host
    127.0.0.1) matches the last one only."""
    lines = ["routes:"]
    for i in range(count - 1):
        match = f"{{host: svc-{i}.test}}" if hosts else f"{{path_prefix: /svc-{i}/}}"
        lines.append(f"  - {{name: r{i}, match: {match}}}")
    lines.append("  - {name: last, match: {host: 127.0.0.1}}" if hosts else "  - {name: last, match: {path_prefix: /}}")
    return "\n".join(lines) + "\n"


VARIANTS = {
    "plain": "",
    "routes-100": _routes(100, hosts=False),
    "hosts-100": _routes(100, hosts=True),
    "filter": "routes:\n  - {name: all, filters: ['bench_filters:passthrough']}\n",
}


def _command(build: str, config: Path) -> tuple[list[str], dict[str, str]]:
    env = P.pure_env()
    exe = Path(sys.executable)
    if build == "reference":
        return [str(exe), str(ROOT / "bench" / "reference_proxy.py"), str(PORT), *map(str, BACKENDS)], env
    if build == "omnixan":
        env = P.compiled_env()
    bench = str(ROOT / "bench")  # where a variant's filter module is (it holds no package of ours)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{bench}" if env.get("PYTHONPATH") else bench
    return [str(exe.parent / "omnixan-lb"), "serve", "--config", str(config), "--log-level", "warning"], env


def instructions(build: str, workdir: Path, requests: int, variant: str = "plain") -> int:
    """Total instructions of one run of ``build`` (with ``variant``'s config) that proxies
    200 + ``requests`` requests."""
    config = workdir / "omnixan.yaml"
    config.write_text(P.omnixan_config(PORT, ADMIN, BACKENDS, access_log=False) + VARIANTS[variant])
    out = workdir / f"callgrind.{build}.{variant}.{requests}"
    args, env = _command(build, config)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        P.wait_port(PORT, timeout=180)
        asyncio.run(_client(200))
        if requests:
            asyncio.run(_client(requests))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--only",
        choices=("reference", "omnixan-py", "omnixan"),
        nargs="+",
        default=["reference", "omnixan-py", "omnixan"],
    )
    parser.add_argument(
        "--variants",
        choices=tuple(VARIANTS),
        nargs="+",
        help="measure these configs of the compiled build (omnixan) instead of the three builds",
    )
    parser.add_argument("--save", action="store_true", help=f"with --variants: write the results to {SAVED}")
    args = parser.parse_args(argv)
    if args.variants:
        args.only = [f"omnixan:{variant}" for variant in args.variants]
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    P.ensure_tools()
    P.check_free([PORT, ADMIN, *BACKENDS])
    procs = P.Processes()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="omnixan-instr-") as tmp:
        workdir = Path(tmp)
        try:
            for port in BACKENDS:
                P.start_nginx(procs, workdir, f"backend-{port}", P.BACKEND_BODY.format(port=port), cpu=1)
            for port in BACKENDS:
                P.wait_port(port)
            for name in args.only:
                build, _, variant = name.partition(":")
                base = instructions(build, workdir, 0, variant or "plain")
                total = instructions(build, workdir, args.requests, variant or "plain")
                results[name] = (total - base) / args.requests
                print(f"  {name:<11} {results[name]:>10,.0f} instructions per request", flush=True)
        finally:
            procs.stop_all()
    print()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if args.variants:
        plain = results.get("omnixan:plain")
        if args.save:
            saved = {
                "command": P.command_line(),
                "machine": P.machine_info(),
                "requests": args.requests,
                "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "instructions": {name.partition(":")[2]: value for name, value in results.items()},
            }
            SAVED.write_text(json.dumps(saved, indent=1), encoding="utf-8")
        print(f"{'variant':<20} {'instr/request':>14} {'+ over plain':>13}")
        for name, value in results.items():
            extra = f"{value - plain:>+13,.0f}" if plain is not None else f"{'':>13}"
            print(f"{name:<20} {value:>14,.0f} {extra}")
        return 0
    print(f"{'build':<12} {'instr/request':>14} {'x reference':>12}")
    for build, value in results.items():
        ratio = value / results["reference"] if "reference" in results else float("nan")
        print(f"{build:<12} {value:>14,.0f} {ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
