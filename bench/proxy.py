"""Proxy throughput, latency and CPU: omnixan-lb against nginx and HAProxy, behind the same wrk load.

A benchmark, not a test. It installs what it needs (Debian ``nginx``,
``haproxy`` and ``wrk``, as root), starts two nginx backends that answer a
small body, then measures in one run, alternating, ``--reps`` times each:

- ``direct``: wrk straight to one backend (the ceiling);
- ``nginx``: nginx as reverse proxy (1 worker, upstream keepalive, least_conn,
  access log off);
- ``haproxy``: HAProxy as reverse proxy (``nbthread 1``, ``balance leastconn``,
  server-side keep-alive with ``http-reuse always``, no log);
- ``omnixan``: ``omnixan-lb serve``, the compiled build: the default install
  (``pip install .`` compiles the request path with mypyc where a C compiler
  is present, see ``setup.py``), else ``make compiled``'s copy; 1 process, uvloop,
  least_connections, TCP health checks every 5 s, metrics on, access log off;
- ``omnixan+log``: the same with the JSON access log on (to a file);
- ``omnixan-py``: the same as ``omnixan`` on the pure-Python source (``src``).

Same wrk settings for all (1 thread, 50 and 200 connections, ``--duration``
seconds). CPU pinning: the proxy under test on CPU 0; wrk and the backends on
CPU 1 (this machine has two cores). Prints requests/s, p50 and p99 latency
(medians over the repetitions), the proxy's CPU seconds per 10,000 requests
(utime + stime of the proxy process and its children from ``/proc/<pid>/stat``,
read before and after each wrk run, divided by the requests wrk completed) and
the ratios to nginx.

Only processes this script starts are stopped, by PID. It refuses to start if
one of its ports is already taken (another run of it, say).

    .venv/bin/python bench/proxy.py                 # 3 reps x 8 s (about 5 minutes)
    .venv/bin/python bench/proxy.py --reps 1 --duration 2 --connections 50   # a smoke run
    .venv/bin/python bench/proxy.py --json out.json
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    from bench.common import command_line, machine_info, write_json
except ModuleNotFoundError:  # run as a script: python bench/proxy.py
    from common import command_line, machine_info, write_json  # type: ignore[no-redef,import-not-found]

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PORTS = (19101, 19102)
NGINX_PORT = 19180
HAPROXY_PORT = 19185
OMNIXAN_PORT = 19190
OMNIXAN_ADMIN = 19191
OMNIXAN_LOG_PORT = 19192
OMNIXAN_LOG_ADMIN = 19193
OMNIXAN_PY_PORT = 19194
OMNIXAN_PY_ADMIN = 19195
COMPILED_SRC = ROOT / "build" / "compiled" / "src"  # what `make compiled` builds


def ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "haproxy", "wrk", "taskset") if shutil.which(tool) is None]
    if not missing:
        return
    packages = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "taskset": "util-linux"}
    print(f"installing {', '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *(packages[m] for m in missing)], check=True, env=env)


def tool_versions() -> dict[str, str]:
    """The first line each tool prints about its version (nginx writes it to stderr)."""
    versions = {}
    for tool in ("nginx", "haproxy", "wrk"):
        done = subprocess.run([tool, "-v"], capture_output=True, text=True, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        versions[tool] = lines[0].strip() if lines else "unknown"
    return versions


def check_free(ports: Sequence[int]) -> None:
    """Refuse to run beside something already listening on one of our ports."""
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"127.0.0.1:{port} is already in use (another benchmark?); not starting")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Everything this script starts, stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], cpu: int, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *args], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {body}
}}
"""

BACKEND_BODY = """server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello from {port}\\n"; }} }}"""

PROXY_BODY = """
upstream backends {{ least_conn; {servers} keepalive 64; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://backends;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
}}
"""

OMNIXAN_CONFIG = """
listen: "127.0.0.1:{port}"
algorithm: least_connections
backends:
{backends}
admin: {{listen: "127.0.0.1:{admin}", token_env: null}}
health_check: {{type: tcp, interval: 5, timeout: 1}}
metrics_enabled: true
access_log: {access_log}
"""


HAPROXY_CONFIG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend proxy
    bind 127.0.0.1:{port}
    default_backend backends
backend backends
    balance leastconn
    option forwardfor
{servers}
"""


def start_nginx(procs: Processes, workdir: Path, name: str, body: str, cpu: int) -> subprocess.Popen[bytes]:
    d = workdir / name
    d.mkdir()
    (d / "nginx.conf").write_text(NGINX_MAIN.format(dir=d, body=body))
    return procs.start(
        ["nginx", "-c", str(d / "nginx.conf")], cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_haproxy(procs: Processes, workdir: Path, cpu: int) -> subprocess.Popen[bytes]:
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(BACKEND_PORTS, 1))
    path = workdir / "haproxy.cfg"
    path.write_text(HAPROXY_CONFIG.format(port=HAPROXY_PORT, servers=servers))
    log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - kept open for the process's life
    return procs.start(["haproxy", "-db", "-f", str(path)], cpu, stdout=log, stderr=log)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (nginx's worker is a child of its master)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


def omnixan_config(port: int, admin: int, backend_ports: Sequence[int], access_log: bool) -> str:
    """The serve config the benchmarks run: least_connections, TCP health checks, metrics on."""
    backends = "\n".join(f"  - {{host: 127.0.0.1, port: {p}}}" for p in backend_ports)
    return OMNIXAN_CONFIG.format(port=port, admin=admin, backends=backends, access_log=str(access_log).lower())


def pure_env() -> dict[str, str]:
    """The environment that runs the pure Python source, whichever build is installed."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def compiled_env() -> dict[str, str]:
    """The environment that runs the compiled build: the one installed in this environment
    (``pip install .`` compiles it where a C compiler is present; ``make bench`` reinstalls it
    when the source has changed, a script run by hand does not) or, failing that, ``make
    compiled``'s copy in build/compiled. Refuses if neither is compiled."""
    exe = str(Path(sys.executable).parent / "omnixan-lb")
    installed = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for env in (installed, {**os.environ, "PYTHONPATH": str(COMPILED_SRC)}):
        done = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True, check=False)
        if "compiled with mypyc" in done.stdout:
            return env
    raise SystemExit(
        "no compiled build: install one with `pip install .` where a C compiler is present (make test does), "
        "or run `make compiled`"
    )


def start_omnixan(
    procs: Processes, workdir: Path, port: int, admin: int, access_log: bool, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    path = workdir / f"omnixan-{port}.yaml"
    path.write_text(omnixan_config(port, admin, BACKEND_PORTS, access_log))
    log = open(workdir / f"omnixan-{port}.log", "wb")  # noqa: SIM115 - kept open for the process's life
    exe = str(Path(sys.executable).parent / "omnixan-lb")
    return procs.start(
        [exe, "serve", "--config", str(path), "--log-level", "warning"], 0, stdout=log, stderr=log, env=env
    )


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    cpu_s: float | None = None  # the proxy's CPU time during the run (None for "direct")

    @property
    def cpu_per_10k(self) -> float | None:
        return None if self.cpu_s is None or not self.requests else self.cpu_s / self.requests * 10_000


def wrk(port: int, connections: int, duration: int) -> Sample:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"    wrk reported errors on port {port}: {errors.group(0)}")
    return Sample(rps, _latency(out, "50%"), _latency(out, "99%"), requests)


def _latency(out: str, pct: str) -> float:
    value, unit = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


TARGETS = ("direct", "nginx", "haproxy", "omnixan", "omnixan+log", "omnixan-py")
BASELINE = "nginx"


def run(
    reps: int = 3, duration: int = 8, connections: Sequence[int] = (50, 200), progress: bool = True
) -> dict[str, Any]:
    """Start everything, measure every target alternating, stop what was started; JSON-serialisable."""
    ensure_tools()
    env = compiled_env()
    ports = {
        "direct": BACKEND_PORTS[0],
        "nginx": NGINX_PORT,
        "haproxy": HAPROXY_PORT,
        "omnixan": OMNIXAN_PORT,
        "omnixan+log": OMNIXAN_LOG_PORT,
        "omnixan-py": OMNIXAN_PY_PORT,
    }
    check_free(
        [
            *BACKEND_PORTS,
            NGINX_PORT,
            HAPROXY_PORT,
            OMNIXAN_PORT,
            OMNIXAN_ADMIN,
            OMNIXAN_LOG_PORT,
            OMNIXAN_LOG_ADMIN,
            OMNIXAN_PY_PORT,
            OMNIXAN_PY_ADMIN,
        ]
    )
    procs = Processes()
    pids: dict[str, int | None] = {"direct": None}
    samples: dict[str, dict[int, list[Sample]]] = {name: {} for name in TARGETS}
    started = time.perf_counter()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="omnixan-bench-") as tmp:
        workdir = Path(tmp)
        try:
            for port in BACKEND_PORTS:
                start_nginx(procs, workdir, f"backend-{port}", BACKEND_BODY.format(port=port), cpu=1)
            servers = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
            pids["nginx"] = start_nginx(
                procs, workdir, "proxy", PROXY_BODY.format(servers=servers, port=NGINX_PORT), cpu=0
            ).pid
            pids["haproxy"] = start_haproxy(procs, workdir, cpu=0).pid
            pids["omnixan"] = start_omnixan(procs, workdir, OMNIXAN_PORT, OMNIXAN_ADMIN, False, env).pid
            pids["omnixan+log"] = start_omnixan(procs, workdir, OMNIXAN_LOG_PORT, OMNIXAN_LOG_ADMIN, True, env).pid
            pids["omnixan-py"] = start_omnixan(
                procs, workdir, OMNIXAN_PY_PORT, OMNIXAN_PY_ADMIN, False, env=pure_env()
            ).pid
            for port in ports.values():
                wait_port(port)
            for port in ports.values():  # warm up every path once
                wrk(port, 10, 1)
            for rep in range(reps):
                for conns in connections:
                    for name in TARGETS:
                        pid = pids[name]
                        before = cpu_seconds(pid) if pid else None
                        sample = wrk(ports[name], conns, duration)
                        if pid and before is not None:
                            sample.cpu_s = cpu_seconds(pid) - before
                        samples[name].setdefault(conns, []).append(sample)
                        if progress:
                            cpu = sample.cpu_per_10k
                            print(
                                f"  rep {rep + 1} c={conns:<3} {name:<12} {sample.rps:>9.0f} req/s  "
                                f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                                f"cpu {'-' if cpu is None else f'{cpu:.2f}'} s/10k",
                                flush=True,
                            )
        finally:
            procs.stop_all()
    rows = summarise(samples, connections)
    return {
        "machine": info,
        "command": command_line(),
        "settings": {"reps": reps, "duration_s": duration, "connections": list(connections), "wrk_threads": 1},
        "versions": tool_versions(),
        "pinning": "proxy under test on CPU 0; wrk and the two nginx backends on CPU 1",
        "rows": rows,
        "samples": {name: {str(c): [asdict(x) for x in xs] for c, xs in by.items()} for name, by in samples.items()},
        "wall_s": time.perf_counter() - started,
    }


def summarise(samples: dict[str, dict[int, list[Sample]]], connections: Sequence[int]) -> list[dict[str, Any]]:
    """Medians over the repetitions, and the ratios to nginx at the same connection count."""
    rows = []
    for conns in connections:
        medians: dict[str, dict[str, Any]] = {}
        for name in TARGETS:
            xs = samples.get(name, {}).get(conns)
            if not xs:
                continue
            cpus = [c for c in (x.cpu_per_10k for x in xs) if c is not None]
            medians[name] = {
                "target": name,
                "connections": conns,
                "rps": statistics.median(x.rps for x in xs),
                "p50_ms": statistics.median(x.p50_ms for x in xs),
                "p99_ms": statistics.median(x.p99_ms for x in xs),
                "cpu_s_per_10k": statistics.median(cpus) if cpus else None,
            }
        base = medians.get(BASELINE)
        for row in medians.values():
            if base:
                row["rps_ratio"] = row["rps"] / base["rps"]
                row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
                cpu, base_cpu = row["cpu_s_per_10k"], base["cpu_s_per_10k"]
                row["cpu_ratio"] = cpu / base_cpu if cpu is not None and base_cpu else None
            rows.append(row)
    return rows


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'target':<13} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/10k':>10} "
        f"{'rps/nginx':>10} {'p99/nginx':>10} {'CPU/nginx':>10}"
    ]
    for r in results["rows"]:
        cpu = "-" if r["cpu_s_per_10k"] is None else f"{r['cpu_s_per_10k']:.3f}"
        ratio = "-" if r.get("cpu_ratio") is None else f"{r['cpu_ratio']:.2f}"
        lines.append(
            f"{r['target']:<13} {r['connections']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {cpu:>10} {r.get('rps_ratio', math.nan):>10.2f} "
            f"{r.get('p99_ratio', math.nan):>10.2f} {ratio:>10}"
        )
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    info, settings = results["machine"], results["settings"]
    print()
    print(f"machine:  {info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}")
    print(f"command:  {results['command']}")
    print(
        f"wrk:      1 thread, {settings['duration_s']} s per run, {settings['reps']} runs per cell (median shown), "
        "alternating"
    )
    print(f"pinning:  {results['pinning']}")
    print("CPU:      utime + stime of the proxy (and its children) per 10,000 requests; '-' = no proxy")
    print()
    print(table(results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.reps, args.duration, args.connections)
    print_report(results)
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
