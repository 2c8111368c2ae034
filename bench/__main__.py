"""Run the whole benchmark suite and rewrite docs/benchmarks.md with tables and plots.

    .venv/bin/python -m bench                  # all four parts, about 8 minutes on 2 cores
    .venv/bin/python -m bench --quick          # a smoke run of everything, about a minute
    .venv/bin/python -m bench --only simulate --only hashing
    .venv/bin/python -m bench --skip proxy     # no nginx / HAProxy / wrk needed
    .venv/bin/python -m bench --render-only    # rewrite the document from the saved results

Each part's results are saved as JSON beside its plots (docs/img/bench/); a
part that is not run this time is rendered from its last saved results, so
the document always has all four sections, each with its own command,
machine and date. Needs matplotlib (``pip install -e '.[bench]'``; ``make
bench`` does it); the proxy part installs nginx, HAProxy and wrk with apt-get
when missing (as root).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import hashing, proxy, report, routing, simulate
from bench.common import ROOT, command_line, describe_machine, machine_info

PARTS = ("simulate", "hashing", "routing", "proxy")
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img" / "bench"


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_simulate(args: argparse.Namespace) -> dict[str, Any]:
    settings = simulate.QUICK if args.quick else simulate.Settings()
    results = simulate.run(settings)
    simulate.print_report(results)
    simulate.plot(results, args.img)
    return results


def run_hashing(args: argparse.Namespace) -> dict[str, Any]:
    results = hashing.run(keys_count=100_000 if args.quick else hashing.KEYS)
    hashing.print_report(results)
    hashing.plot(results, args.img)
    return results


def run_routing(args: argparse.Namespace) -> dict[str, Any]:
    """The default (pure Python) build in this process, then the compiled build in a child."""
    settings = routing.QUICK if args.quick else routing.Settings()
    raw, cases = asyncio.run(routing.collect(settings))
    routing.print_table(cases, raw["sizes"])
    routing.plot(raw, str(args.img))
    with tempfile.TemporaryDirectory(prefix="omnixan-routing-") as tmp:
        out = Path(tmp) / "compiled.json"
        command = [
            sys.executable,
            str(Path(__file__).parent / "routing.py"),
            "--json",
            str(out),
            *(["--quick"] if args.quick else []),
        ]
        print("\nthe compiled build:", flush=True)
        subprocess.run(command, env=proxy.compiled_env(), check=True)
        raw["compiled"] = json.loads(out.read_text())
    return raw


def run_proxy(args: argparse.Namespace) -> dict[str, Any]:
    reps = 1 if args.quick else args.proxy_reps
    duration = 2 if args.quick else args.proxy_duration
    results = proxy.run(reps, duration)
    proxy.print_report(results)
    return results


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "simulate": run_simulate,
    "hashing": run_hashing,
    "routing": run_routing,
    "proxy": run_proxy,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short runs of everything (figures not for publication)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--skip", action="append", choices=PARTS, default=[], help="skip this part (repeatable)")
    parser.add_argument(
        "--render-only", action="store_true", help="run nothing; rewrite the document from the saved results"
    )
    parser.add_argument("--proxy-reps", type=int, default=3, help="wrk runs per proxy cell (default 3)")
    parser.add_argument("--proxy-duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to write (default docs/benchmarks.md)")
    parser.add_argument("--img", type=Path, default=IMG, help="where plots and JSON go (default docs/img/bench)")
    args = parser.parse_args(argv)
    chosen = [] if args.render_only else [p for p in (args.only or PARTS) if p not in args.skip]
    args.img.mkdir(parents=True, exist_ok=True)
    suite_command = command_line()
    info = machine_info()
    print(f"machine: {describe_machine(info)}\ncommand: {suite_command}\nparts: {', '.join(chosen)}\n", flush=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    for part in chosen:
        print(f"== {part} ==", flush=True)
        t0 = time.perf_counter()
        results = RUNNERS[part](args)
        timings[part] = time.perf_counter() - t0
        results["command"] = suite_command  # the figures come from this command, whatever ran inside
        results["wall_s"] = timings[part]
        results["finished_at"] = now_utc()
        results["quick"] = bool(args.quick)
        (args.img / f"{part}.json").write_text(json.dumps(results, separators=(",", ":")), encoding="utf-8")
        print(f"== {part}: {timings[part]:.0f} s ==\n", flush=True)
    total = time.perf_counter() - started
    parts: dict[str, dict[str, Any]] = {}
    for part in (*PARTS, *report.EXTRA_PARTS):
        path = args.img / f"{part}.json"
        if path.exists():
            parts[part] = json.loads(path.read_text(encoding="utf-8"))
    each = ", ".join(f"{p} {s:.0f} s" for p, s in timings.items())
    suite_file = args.img / "suite.json"
    if set(chosen) == set(PARTS):  # a full run: what the header states until the next one
        full = {
            "command": suite_command,
            "machine": describe_machine(info),
            "finished_at": now_utc(),
            "minutes": total / 60,
            "parts": each,
        }
        suite_file.write_text(json.dumps(full, indent=1), encoding="utf-8")
    summary = ""
    if suite_file.exists():
        full = json.loads(suite_file.read_text(encoding="utf-8"))
        summary = (
            f"Last full run: `{full['command']}` on {full['machine']}, {full['finished_at']}: "
            f"{full['minutes']:.1f} minutes ({full['parts']})."
        )
    if chosen and set(chosen) != set(PARTS):
        summary += f" Then `{suite_command}` re-ran {', '.join(chosen)} ({now_utc()})."
    quick = [p for p, r in parts.items() if r.get("quick")]
    if quick:
        summary += f"\n\n**Quick run (`--quick`) figures in: {', '.join(quick)}.** Not for comparison."
    args.doc.write_text(report.render(parts, summary.strip()), encoding="utf-8")
    print(f"suite: {total:.0f} s ({each}); wrote {args.doc} and plots in {args.img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
