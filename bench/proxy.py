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
- ``omnixan-py``: the same as ``omnixan`` on the pure-Python source (``src``);
- ``nginx-2w``: nginx as ``nginx`` but ``worker_processes 2`` and ``listen ...
  reuseport`` (one listening socket per worker, as omnixan's workers have);
- ``omnixan-2w``: ``omnixan`` (compiled, no access log) with ``workers: 2``: a
  supervisor and 2 workers on SO_REUSEPORT sockets (docs/workers.md).

Same wrk settings for all (1 thread, 50 and 200 connections, ``--duration``
seconds). CPU pinning: each single-process proxy under test on CPU 0; wrk and
the backends on CPU 1 (this machine has two cores). ``nginx-2w`` and
``omnixan-2w`` are not pinned: their processes may run on either core, beside
wrk and the backends on CPU 1. On a 2-core machine that measures what the
extra processes cost, not how the proxy scales with cores. Prints requests/s,
p50 and p99 latency (medians over the repetitions), the proxy's CPU seconds
per 10,000 requests and the ratios to nginx (to ``nginx-2w`` for the two
2-worker targets). The CPU is that of every process in the proxy's tree (found
by parent pid in ``/proc``: nginx's master and workers, omnixan's supervisor
and workers), each one's own utime + stime plus the cutime + cstime of the
children it has reaped, from ``/proc/<pid>/stat`` before and after each wrk
run, divided by the requests wrk completed. After the last run it reads the
memory of each of those processes: VmRSS (``/proc/<pid>/status``), and Rss and
Pss (``/proc/<pid>/smaps_rollup``; Pss splits each shared page, such as the
workers' shared-memory state region and the shared libraries, between the
processes that map it).

Only processes this script starts are stopped, by PID. It refuses to start if
one of its ports is already taken (another run of it, say).

    .venv/bin/python bench/proxy.py                 # 3 reps x 8 s (about 7 minutes)
    .venv/bin/python bench/proxy.py --reps 1 --duration 2 --connections 50   # a smoke run
    .venv/bin/python bench/proxy.py --only workers  # nginx-2w and omnixan-2w alone (about 2 minutes)
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
NGINX_2W_PORT = 19181
HAPROXY_PORT = 19185
OMNIXAN_PORT = 19190
OMNIXAN_ADMIN = 19191
OMNIXAN_LOG_PORT = 19192
OMNIXAN_LOG_ADMIN = 19193
OMNIXAN_PY_PORT = 19194
OMNIXAN_PY_ADMIN = 19195
OMNIXAN_2W_PORT = 19196
OMNIXAN_2W_ADMIN = 19197
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

    def start(self, args: list[str], cpu: int | None, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``args`` pinned to ``cpu`` (taskset execs it: same pid), or unpinned if ``cpu`` is None."""
        pinned = [] if cpu is None else ["taskset", "-c", str(cpu)]
        proc = subprocess.Popen([*pinned, *args], **kwargs)  # type: ignore[call-overload]
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
worker_processes {workers};
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
    listen 127.0.0.1:{port}{listen_options};
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
{workers}"""


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


def start_nginx(
    procs: Processes, workdir: Path, name: str, body: str, cpu: int | None, workers: int = 1
) -> subprocess.Popen[bytes]:
    d = workdir / name
    d.mkdir()
    (d / "nginx.conf").write_text(NGINX_MAIN.format(dir=d, body=body, workers=workers))
    return procs.start(
        ["nginx", "-c", str(d / "nginx.conf")], cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_haproxy(procs: Processes, workdir: Path, cpu: int) -> subprocess.Popen[bytes]:
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(BACKEND_PORTS, 1))
    path = workdir / "haproxy.cfg"
    path.write_text(HAPROXY_CONFIG.format(port=HAPROXY_PORT, servers=servers))
    log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - kept open for the process's life
    return procs.start(["haproxy", "-db", "-f", str(path)], cpu, stdout=log, stderr=log)


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process in ``/proc``. The CPU seconds are the
    process's own utime + stime plus cutime + cstime: the times of its children that have exited
    and been reaped (they count nowhere else once gone; a live child's count in its own line)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15, cutime 16, cstime 17
        cpu = sum(int(f) for f in fields[11:15]) / ticks
        stats[int(entry.name)] = (int(fields[1]), cpu)
    return stats


def process_tree(pid: int, stats: dict[int, tuple[int, float]] | None = None) -> list[int]:
    """``pid`` and its live descendants, by parent pid (``/proc/<pid>/task/*/children`` needs a
    kernel built with CONFIG_PROC_CHILDREN, which not all are), parents before their children."""
    stats = process_table() if stats is None else stats
    tree, i = [pid], 0
    while i < len(tree):
        tree.extend(sorted(child for child, (parent, _) in stats.items() if parent == tree[i]))
        i += 1
    return tree if pid in stats else []


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (nginx's workers are children of its
    master; omnixan's workers, of its supervisor), each process's own times summed, with those of
    the children each has reaped: a worker that dies and is replaced between two readings still
    counts, in its parent's cutime + cstime."""
    stats = process_table()
    return sum(stats[p][1] for p in process_tree(pid, stats))


def _kb(text: str, key: str) -> int | None:
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def _role(pid: int, root: bool, has_children: bool) -> str:
    """What a process of a proxy's tree is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    line = " ".join(words)
    if line.startswith("nginx: "):  # nginx renames its processes: "nginx: master process ..."
        return line.split()[1]
    if "load_balancing_module.server.worker" in words:
        index = words[words.index("--index") + 1] if "--index" in words[:-1] else "?"
        return f"worker {index}"
    if root:
        return "supervisor" if has_children else "process"
    return "child"


STATE_REGION = "omnixan-lb-state"  # the name of the workers' shared-memory region (state/shared.py)


def _region_rss_kb(pid: int) -> int | None:
    """Resident kB of the shared-memory state region in ``pid`` (``/proc/<pid>/smaps``), None if
    it maps none. Each process that has read a page of it counts that page in its Rss."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    total, inside, found = 0, False, False
    for line in text.splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: address range, ..., path
            inside = STATE_REGION in line
            found = found or inside
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total if found else None


def process_memory(pid: int) -> list[dict[str, Any]]:
    """The memory of ``pid`` and of each live descendant: VmRSS from ``/proc/<pid>/status``; Rss, Pss
    and private (Private_Clean + Private_Dirty: pages no other process maps, what one more such
    process costs) from ``/proc/<pid>/smaps_rollup``; the part of Rss that is the shared-memory
    state region, from ``/proc/<pid>/smaps``; in kB, None where unreadable or absent."""
    stats = process_table()
    tree = process_tree(pid, stats)
    rows = []
    for p in tree:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            rollup = ""
        has_children = any(parent == p for parent, _ in stats.values())
        clean, dirty = _kb(rollup, "Private_Clean"), _kb(rollup, "Private_Dirty")
        rows.append(
            {
                "pid": p,
                "role": _role(p, p == pid, has_children),
                "vmrss_kb": _kb(status, "VmRSS"),
                "rss_kb": _kb(rollup, "Rss"),
                "pss_kb": _kb(rollup, "Pss"),
                "private_kb": None if clean is None or dirty is None else clean + dirty,
                "region_rss_kb": _region_rss_kb(p),
            }
        )
    return rows


def omnixan_config(port: int, admin: int, backend_ports: Sequence[int], access_log: bool, workers: int = 1) -> str:
    """The serve config the benchmarks run: least_connections, TCP health checks, metrics on;
    ``workers`` is left to its default (1) unless more are asked for."""
    backends = "\n".join(f"  - {{host: 127.0.0.1, port: {p}}}" for p in backend_ports)
    return OMNIXAN_CONFIG.format(
        port=port,
        admin=admin,
        backends=backends,
        access_log=str(access_log).lower(),
        workers=f"workers: {workers}\n" if workers != 1 else "",
    )


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
    procs: Processes,
    workdir: Path,
    port: int,
    admin: int,
    access_log: bool,
    env: dict[str, str] | None = None,
    workers: int = 1,
    cpu: int | None = 0,
) -> subprocess.Popen[bytes]:
    path = workdir / f"omnixan-{port}.yaml"
    path.write_text(omnixan_config(port, admin, BACKEND_PORTS, access_log, workers))
    log = open(workdir / f"omnixan-{port}.log", "wb")  # noqa: SIM115 - kept open for the process's life
    exe = str(Path(sys.executable).parent / "omnixan-lb")
    return procs.start(
        [exe, "serve", "--config", str(path), "--log-level", "warning"], cpu, stdout=log, stderr=log, env=env
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
    return parse_wrk(out, port)


def parse_wrk(out: str, port: int) -> Sample:
    """What wrk printed (with ``--latency``) as a :class:`Sample`; errors it reports are printed."""
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
WORKER_TARGETS = ("nginx-2w", "omnixan-2w")  # 2 worker processes each, unpinned
WORKER_BASELINE = "nginx-2w"
ALL_TARGETS = TARGETS + WORKER_TARGETS
SELECTIONS = {"all": ALL_TARGETS, "single": TARGETS, "workers": WORKER_TARGETS}
PORTS = {
    "direct": BACKEND_PORTS[0],
    "nginx": NGINX_PORT,
    "haproxy": HAPROXY_PORT,
    "omnixan": OMNIXAN_PORT,
    "omnixan+log": OMNIXAN_LOG_PORT,
    "omnixan-py": OMNIXAN_PY_PORT,
    "nginx-2w": NGINX_2W_PORT,
    "omnixan-2w": OMNIXAN_2W_PORT,
}
ADMIN_PORTS = {
    "omnixan": OMNIXAN_ADMIN,
    "omnixan+log": OMNIXAN_LOG_ADMIN,
    "omnixan-py": OMNIXAN_PY_ADMIN,
    "omnixan-2w": OMNIXAN_2W_ADMIN,
}
PINNING = (
    "single-process proxies under test on CPU 0; nginx-2w and omnixan-2w not pinned (either CPU); "
    "wrk and the two nginx backends on CPU 1"
)
WORKERS_NOTE = (
    "nginx-2w and omnixan-2w run 2 worker processes each, unpinned, on a machine of {cores} cores where "
    "wrk and the backends also run: this measures what the extra processes cost, not how the proxy "
    "scales with cores"
)


def baseline_of(target: str) -> str:
    return WORKER_BASELINE if target in WORKER_TARGETS else BASELINE


def start_target(name: str, procs: Processes, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """Start the proxy ``name`` measures (None for ``direct``, which is a backend)."""
    servers = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
    if name == "direct":
        return None
    if name == "nginx":
        body = PROXY_BODY.format(servers=servers, port=NGINX_PORT, listen_options="")
        return start_nginx(procs, workdir, "proxy", body, cpu=0)
    if name == "nginx-2w":
        body = PROXY_BODY.format(servers=servers, port=NGINX_2W_PORT, listen_options=" reuseport")
        return start_nginx(procs, workdir, "proxy-2w", body, cpu=None, workers=2)
    if name == "haproxy":
        return start_haproxy(procs, workdir, cpu=0)
    port, admin = PORTS[name], ADMIN_PORTS[name]
    if name == "omnixan":
        return start_omnixan(procs, workdir, port, admin, False, env)
    if name == "omnixan+log":
        return start_omnixan(procs, workdir, port, admin, True, env)
    if name == "omnixan-py":
        return start_omnixan(procs, workdir, port, admin, False, env=pure_env())
    if name == "omnixan-2w":
        return start_omnixan(procs, workdir, port, admin, False, env, workers=2, cpu=None)
    raise ValueError(f"unknown target {name!r}")


def run(
    reps: int = 3,
    duration: int = 8,
    connections: Sequence[int] = (50, 200),
    progress: bool = True,
    targets: Sequence[str] = ALL_TARGETS,
) -> dict[str, Any]:
    """Start everything, measure every target alternating, stop what was started; JSON-serialisable."""
    ensure_tools()
    env = compiled_env()
    targets = [t for t in ALL_TARGETS if t in targets]  # always in the same order
    ports = {name: PORTS[name] for name in targets}
    check_free(sorted({*BACKEND_PORTS, *ports.values(), *(ADMIN_PORTS[t] for t in targets if t in ADMIN_PORTS)}))
    procs = Processes()
    pids: dict[str, int | None] = {}
    samples: dict[str, dict[int, list[Sample]]] = {name: {} for name in targets}
    memory: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="omnixan-bench-") as tmp:
        workdir = Path(tmp)
        try:
            for port in BACKEND_PORTS:
                start_nginx(procs, workdir, f"backend-{port}", BACKEND_BODY.format(port=port), cpu=1)
            for name in targets:
                proc = start_target(name, procs, workdir, env)
                pids[name] = None if proc is None else proc.pid
            for port in ports.values():
                wait_port(port)
            for port in ports.values():  # warm up every path once
                wrk(port, 10, 1)
            for rep in range(reps):
                for conns in connections:
                    for name in targets:
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
            for name in targets:  # after the load, before anything stops
                pid = pids[name]
                if pid:
                    memory[name] = process_memory(pid)
        finally:
            procs.stop_all()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = summarise(samples, connections)
    return {
        "machine": info,
        "command": command_line(),
        "settings": {
            "reps": reps,
            "duration_s": duration,
            "connections": list(connections),
            "wrk_threads": 1,
            "targets": targets,
        },
        "versions": tool_versions(),
        "pinning": PINNING,
        "rows": rows,
        "memory": memory,
        "samples": {name: {str(c): [asdict(x) for x in xs] for c, xs in by.items()} for name, by in samples.items()},
        "wall_s": time.perf_counter() - started,
    }


def summarise(samples: dict[str, dict[int, list[Sample]]], connections: Sequence[int]) -> list[dict[str, Any]]:
    """Medians over the repetitions, and the ratios to the baseline at the same connection count
    (nginx; nginx-2w for the 2-worker targets)."""
    rows = []
    for conns in connections:
        medians: dict[str, dict[str, Any]] = {}
        for name in ALL_TARGETS:
            xs = samples.get(name, {}).get(conns)
            if not xs:
                continue
            cpus = [c for c in (x.cpu_per_10k for x in xs) if c is not None]
            medians[name] = {
                "target": name,
                "connections": conns,
                "baseline": baseline_of(name),
                "rps": statistics.median(x.rps for x in xs),
                "p50_ms": statistics.median(x.p50_ms for x in xs),
                "p99_ms": statistics.median(x.p99_ms for x in xs),
                "cpu_s_per_10k": statistics.median(cpus) if cpus else None,
            }
        for row in medians.values():
            base = medians.get(row["baseline"])
            if base:
                row["rps_ratio"] = row["rps"] / base["rps"]
                row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
                cpu, base_cpu = row["cpu_s_per_10k"], base["cpu_s_per_10k"]
                row["cpu_ratio"] = cpu / base_cpu if cpu is not None and base_cpu else None
            rows.append(row)
    return rows


def table(results: dict[str, Any], targets: Sequence[str] = TARGETS, baseline: str = BASELINE) -> str:
    rows = [r for r in results["rows"] if r["target"] in targets]
    if not rows:
        return ""
    vs = f"/{baseline}"
    lines = [
        f"{'target':<13} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/10k':>10} "
        f"{'rps' + vs:>12} {'p99' + vs:>12} {'CPU' + vs:>12}"
    ]
    for r in rows:
        cpu = "-" if r["cpu_s_per_10k"] is None else f"{r['cpu_s_per_10k']:.3f}"
        ratio = "-" if r.get("cpu_ratio") is None else f"{r['cpu_ratio']:.2f}"
        lines.append(
            f"{r['target']:<13} {r['connections']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {cpu:>10} {r.get('rps_ratio', math.nan):>12.2f} "
            f"{r.get('p99_ratio', math.nan):>12.2f} {ratio:>12}"
        )
    return "\n".join(lines)


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


MEMORY_KEYS = ("vmrss_kb", "rss_kb", "pss_kb", "private_kb", "region_rss_kb")


def memory_total(procs: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """Each figure summed over a proxy's processes; None where one of them is missing."""
    values = {k: [p.get(k) for p in procs] for k in MEMORY_KEYS}
    return {k: None if None in v else sum(x for x in v if x is not None) for k, v in values.items()}


def memory_table(results: dict[str, Any]) -> str:
    """One line per process of each proxy: VmRSS, Rss, Pss, private memory and the state region's
    part of Rss in MiB, and each proxy's total (VmRSS, Rss and region totals count a shared page
    once per process)."""
    keys = MEMORY_KEYS
    lines = [
        f"{'target':<13} {'pid':>8} {'process':<12} {'VmRSS MiB':>10} {'Rss MiB':>8} {'Pss MiB':>8} "
        f"{'Priv MiB':>9} {'region MiB':>11}"
    ]
    for name, procs in results.get("memory", {}).items():
        rows = [(str(proc["pid"]), proc["role"], proc) for proc in procs]
        if len(procs) > 1:
            rows.append(("", "total", memory_total(procs)))
        for pid, role, kb in rows:
            sizes = [_mib(kb.get(k)) for k in keys]
            lines.append(
                f"{name:<13} {pid:>8} {role:<12} {sizes[0]:>10} {sizes[1]:>8} {sizes[2]:>8} {sizes[3]:>9} "
                f"{sizes[4]:>11}"
            )
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    info, settings = results["machine"], results["settings"]
    print()
    print(f"machine:  {info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}")
    print(f"command:  {results['command']}")
    load = info.get("load_average")
    if load:
        end = info.get("load_average_end")
        at_end = f", {' '.join(f'{x:.2f}' for x in end)} at end" if end else ""
        print(f"load:     {' '.join(f'{x:.2f}' for x in load)} at start{at_end} (1/5/15 min)")
    print(
        f"wrk:      1 thread, {settings['duration_s']} s per run, {settings['reps']} runs per cell (median shown), "
        "alternating"
    )
    print(f"pinning:  {results['pinning']}")
    print(
        "CPU:      utime + stime of every process of the proxy (its own and its reaped children's) "
        "per 10,000 requests; '-' = no proxy"
    )
    single = table(results, TARGETS, BASELINE)
    if single:
        print()
        print(single)
    workers = table(results, WORKER_TARGETS, WORKER_BASELINE)
    if workers:
        print()
        print(f"2 workers: {WORKERS_NOTE.format(cores=info['cores'])}.")
        print(workers)
    if results.get("memory"):
        print()
        print(
            "memory after the load (Pss divides each shared page among the processes mapping it, on the "
            "whole machine; Priv: pages of this process alone; region: the part of Rss that is omnixan's "
            "shared-memory state region):"
        )
        print(memory_table(results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, nargs="+", default=[50, 200])
    parser.add_argument(
        "--only",
        choices=[k for k in SELECTIONS if k != "all"],
        help="only the single-process targets, or only nginx-2w and omnixan-2w (default: all)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.reps, args.duration, args.connections, targets=SELECTIONS[args.only or "all"])
    print_report(results)
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
