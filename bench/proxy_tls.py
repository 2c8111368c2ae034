"""TLS termination against nginx: both proxies terminate TLS with the same certificate.

nginx (one worker, ``listen ... ssl``, ``ssl_session_cache shared:SSL:10m``, TLS 1.2 and 1.3
with its default ciphers) and ``omnixan-lb serve`` (the compiled build, a TLS listener, TLS
1.2+ with the ``ssl`` module's defaults) each proxy to the same two nginx backends over plain
HTTP; wrk drives them over HTTPS with keep-alive (one handshake per connection), and then, with
``--handshakes``, with ``Connection: close`` (one handshake per request). The plain-HTTP runs of
both, in the same script, show what TLS adds. The certificate (a CA of the script's own, the name
``bench.test`` and the IP 127.0.0.1, an ECDSA P-256 key as trustme makes) is made by the script.

Pinned as bench/proxy.py pins: the proxy under test on CPU 0, wrk and the backends on CPU 1.
Medians of ``--reps`` runs; CPU per request is the proxy's own CPU time over the requests served.

    .venv/bin/python bench/proxy_tls.py                       # c=50, 3 x 8 s per target: about 2 minutes
    .venv/bin/python bench/proxy_tls.py --handshakes --connections 50 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as P  # the nginx backends, process handling and wrk of bench/proxy.py

BACKEND_PORTS = (19401, 19402)
PORTS = {"nginx": 19410, "omnixan": 19411, "nginx-tls": 19412, "omnixan-tls": 19413}
ADMIN = {"omnixan": 19421, "omnixan-tls": 19423}
SAVED = Path(__file__).resolve().parent.parent / "docs" / "img" / "bench" / "tls.json"

NGINX_BODY = """
upstream backends {{ least_conn; {servers} keepalive 64; }}
server {{
    listen 127.0.0.1:{port}{ssl};
    {tls}
    location / {{
        proxy_pass http://backends;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
}}
"""
NGINX_TLS = """ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_timeout 10m;"""

OMNIXAN = """
{listen}
algorithm: least_connections
backends:
{backends}
admin: {{listen: "127.0.0.1:{admin}", token_env: null}}
health_check: {{type: tcp, interval: 5, timeout: 1}}
access_log: false
"""


def certificate(workdir: Path) -> tuple[Path, Path]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("bench.test", "127.0.0.1")
    cert, key = workdir / "bench.pem", workdir / "bench.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def start(name: str, procs: P.Processes, workdir: Path, cert: Path, key: Path, env: dict[str, str]) -> Any:
    tls = name.endswith("-tls")
    port = PORTS[name]
    if name.startswith("nginx"):
        servers = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
        body = NGINX_BODY.format(
            servers=servers,
            port=port,
            ssl=" ssl" if tls else "",
            tls=NGINX_TLS.format(cert=cert, key=key) if tls else "",
        )
        return P.start_nginx(procs, workdir, name, body, cpu=0)
    if tls:
        listen = (
            f'listeners:\n  - address: "127.0.0.1:{port}"\n    tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}'
        )
    else:
        listen = f'listen: "127.0.0.1:{port}"'
    backends = "\n".join(f"  - {{host: 127.0.0.1, port: {p}}}" for p in BACKEND_PORTS)
    path = workdir / f"{name}.yaml"
    path.write_text(OMNIXAN.format(listen=listen, backends=backends, admin=ADMIN[name]))
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
    exe = str(Path(sys.executable).parent / "omnixan-lb")
    return procs.start(
        [exe, "serve", "--config", str(path), "--log-level", "warning"], 0, stdout=log, stderr=log, env=env
    )


def wrk(name: str, connections: int, duration: int, close: bool) -> P.Sample:
    scheme = "https" if name.endswith("-tls") else "http"
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(
        [*args, f"{scheme}://127.0.0.1:{PORTS[name]}/"], check=True, capture_output=True, text=True
    ).stdout
    return P.parse_wrk(out, PORTS[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, nargs="+", default=[50])
    parser.add_argument("--handshakes", action="store_true", help="also a run with Connection: close")
    parser.add_argument("--save", action="store_true", help=f"write the results to {SAVED} (for docs/benchmarks.md)")
    args = parser.parse_args(argv)
    P.ensure_tools()
    env = P.compiled_env()
    P.check_free([*BACKEND_PORTS, *PORTS.values(), *ADMIN.values()])
    procs = P.Processes()
    modes = [False, True] if args.handshakes else [False]
    samples: dict[tuple[str, bool, int], list[P.Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="omnixan-tls-") as tmp:
        workdir = Path(tmp)
        cert, key = certificate(workdir)
        try:
            for port in BACKEND_PORTS:
                P.start_nginx(procs, workdir, f"backend-{port}", P.BACKEND_BODY.format(port=port), cpu=1)
            pids = {name: start(name, procs, workdir, cert, key, env).pid for name in PORTS}
            for port in [*BACKEND_PORTS, *PORTS.values()]:
                P.wait_port(port, timeout=60)
            for name in PORTS:
                wrk(name, 10, 1, False)  # warm up every path once
            for rep in range(args.reps):
                for close in modes:
                    for conns in args.connections:
                        for name in PORTS:
                            before = P.cpu_seconds(pids[name])
                            sample = wrk(name, conns, args.duration, close)
                            sample.cpu_s = P.cpu_seconds(pids[name]) - before
                            samples.setdefault((name, close, conns), []).append(sample)
                            print(
                                f"  rep {rep + 1} {'close' if close else 'keep-alive':<10} c={conns:<3} {name:<12}"
                                f" {sample.rps:>8.0f} req/s  p99 {sample.p99_ms:6.2f} ms"
                                f"  cpu {sample.cpu_per_10k:.2f} s/10k",
                                flush=True,
                            )
        finally:
            procs.stop_all()
    rows = []
    for close in modes:
        for conns in args.connections:
            for name in PORTS:
                rps, p50, p99, cpu = _median(samples[(name, close, conns)])
                mode = "close" if close else "keep-alive"
                rows.append(
                    {
                        "mode": mode,
                        "connections": conns,
                        "target": name,
                        "rps": rps,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "cpu_per_10k": cpu,
                    }
                )
    results = {
        "command": P.command_line(),
        "machine": P.machine_info(),
        "versions": P.tool_versions(),
        "settings": {"reps": args.reps, "duration_s": args.duration, "connections": args.connections},
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    if args.save:
        SAVED.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print()
    print(f"command: {results['command']}")
    print(f"machine: {results['machine']}")
    print(f"versions: {results['versions']}")
    print(
        f"{'connections':<22} {'target':<12} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU s/10k':>9}"
        "  vs nginx (same scheme)"
    )
    for close in modes:
        for conns in args.connections:
            rows = {name: samples[(name, close, conns)] for name in PORTS}
            med = {n: _median(xs) for n, xs in rows.items()}
            for name in PORTS:
                base = med["nginx-tls" if name.endswith("-tls") else "nginx"]
                rps, p50, p99, cpu = med[name]
                ratio = (
                    ""
                    if name.startswith("nginx")
                    else f"{rps / base[0]:.2f}x req/s, {p99 / base[2]:.2f}x p99, {cpu / base[3]:.2f}x CPU"
                )
                mode = f"{'close' if close else 'keep-alive'} c={conns}"
                print(f"{mode:<22} {name:<12} {rps:>8.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>9.2f}  {ratio}")
    return 0


def _median(samples: list[P.Sample]) -> tuple[float, float, float, float]:
    cpus = [s.cpu_per_10k for s in samples if s.cpu_per_10k is not None]
    return (
        statistics.median(s.rps for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
        statistics.median(cpus) if cpus else float("nan"),
    )


if __name__ == "__main__":
    sys.exit(main())
