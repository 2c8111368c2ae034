"""Consistent hashing quality of IP_HASH: keys moved, load spread, build and lookup cost.

A benchmark, not a test: it prints figures and asserts nothing.

Method
------
The structure measured is the real one, ``HashRing`` from
``load_balancing_module.algorithms.ip_hash``, built with its default number
of points per member (160,000 / N, between 40 and 1,000) for N = 10, 100 and
1,000 members of weight 1 named ``127.0.0.1:10000+i``, then:

- ``removed``: the same members but one (the middle one);
- ``added``: the same members plus one (``127.0.0.1:10000+N``);

each with the points per member the algorithm would use: its default for N
members, then ``default_points(N ± 1, current=...)``, which keeps the count
while the tier has not doubled or halved (as ``ConsistentHash.rebuild``
does). ``added_unsticky`` is the addition with the plain default for N + 1
(160,000 / (N + 1)), to show what the sticky count saves.

1,000,000 keys (client IPv4 addresses ``10.x.y.z``) are hashed once with the
module's ``hash64`` and looked up in all three rings at once with numpy's
``searchsorted`` over the ring's sorted ``hashes``: the same rule as
``HashRing.start`` (first point at or after the key's hash, wrapping to the
first point), vectorised so a million keys take milliseconds.

Figures per N:

- keys moved (share of the million whose owner changed) when one member is
  removed and when one is added, against the minimum 1/N (1/(N+1) for an
  addition), and whether any key moved between two members that both stayed
  (consistent hashing should move none);
- load spread: max/mean and min/mean of the keys per member, and of each
  member's share of the hash space (exact arc lengths, free of the sampling
  noise of a finite key set);
- build time of the ring, cold (the point cache cleared) and after one
  member leaves (warm cache, as in a running balancer);
- lookup cost: ``HashRing.start`` (hash + bisect) on 200,000 keys, one at a time.

Usage::

    .venv/bin/python -m bench.hashing
    .venv/bin/python -m bench.hashing --keys 100000 --json out.json --plot docs/img/bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from load_balancing_module.algorithms.ip_hash import HashRing, default_points, hash64, member_points

try:
    from bench.common import command_line, machine_info, write_json
except ModuleNotFoundError:  # run as a script: python bench/hashing.py
    from common import command_line, machine_info, write_json  # type: ignore[no-redef,import-not-found]

SIZES = (10, 100, 1_000)
KEYS = 1_000_000
LOOKUPS = 200_000  # keys looked up one at a time with HashRing.start for the cost figure
BUILD_REPEATS = 3


class Member:
    """What HashRing reads of a backend: its stable ``key`` and its ``weight``."""

    __slots__ = ("key", "weight")

    def __init__(self, port: int, weight: float = 1.0) -> None:
        self.key = f"127.0.0.1:{port}"
        self.weight = weight


def build_ring(members: Sequence[Member], points: int | None) -> HashRing[Member]:
    """HashRing reads only ``key`` and ``weight`` of its members: a Member stands in for a Backend."""
    return HashRing(members, points)


def make_keys(count: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]


def owners_of(ring: HashRing[Member], key_hashes: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
    """The owner (by name) of every key: HashRing.start, vectorised."""
    hashes = np.array(ring.hashes, dtype=np.uint64)
    i = np.searchsorted(hashes, key_hashes, side="left")
    i[i == len(hashes)] = 0
    names = np.array([m.key for m in ring.owners])
    return names[i]


def arc_shares(ring: HashRing[Member]) -> dict[str, float]:
    """Each member's share of the 64-bit hash space (a point owns the arc ending at it)."""
    hashes = np.array(ring.hashes, dtype=np.uint64)
    arcs = hashes - np.roll(hashes, 1)  # uint64 arithmetic wraps: the first arc is the wrap-around one
    names = [m.key for m in ring.owners]
    shares: dict[str, float] = {}
    for name, arc in zip(names, arcs.astype(np.float64) / 2.0**64, strict=True):
        shares[name] = shares.get(name, 0.0) + float(arc)
    return shares


def time_build(members: Sequence[Member], cold: bool) -> float:
    """Median seconds to build a ring of ``members`` (cold: point cache cleared first)."""
    times = []
    for _ in range(BUILD_REPEATS):
        if cold:
            member_points.cache_clear()
        t0 = time.perf_counter()
        build_ring(members, None)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n: int, keys: Sequence[str], key_hashes: np.ndarray[Any, np.dtype[np.uint64]]) -> dict[str, Any]:
    base = [Member(10_000 + i) for i in range(n)]
    gone = base[n // 2]
    removed = [m for m in base if m is not gone]
    added = [*base, Member(10_000 + n)]
    cold_s = time_build(base, cold=True)
    rebuild_s = time_build(removed, cold=False)
    points = default_points(n)
    rings = {
        "base": build_ring(base, points),
        "removed": build_ring(removed, default_points(n - 1, current=points)),
        "added": build_ring(added, default_points(n + 1, current=points)),
        # what a count that follows N by the unit would do (the code before the sticky default)
        "added_unsticky": build_ring(added, default_points(n + 1)),
    }
    owners = {state: owners_of(ring, key_hashes) for state, ring in rings.items()}
    total = len(key_hashes)
    moved_removed = owners["base"] != owners["removed"]
    moved_added = owners["base"] != owners["added"]
    # Keys that moved between two members that both stayed: consistent hashing moves none.
    extra_removed = int(np.count_nonzero(moved_removed & (owners["base"] != gone.key)))
    extra_added = int(np.count_nonzero(moved_added & (owners["added"] != added[-1].key)))
    _, counts = np.unique(owners["base"], return_counts=True)
    counts = counts.astype(np.float64)
    if len(counts) < n:  # a member with no key at all
        counts = np.concatenate([counts, np.zeros(n - len(counts))])
    arcs = np.array(list(arc_shares(rings["base"]).values()))
    ring = rings["base"]
    sample = keys[:LOOKUPS]
    t0 = time.perf_counter()
    for key in sample:
        ring.start(key)
    lookup_us = (time.perf_counter() - t0) / len(sample) * 1e6
    t0 = time.perf_counter()
    for key in sample:
        hash64(key)
    hash_us = (time.perf_counter() - t0) / len(sample) * 1e6
    return {
        "backends": n,
        "points_per_backend": len(ring.hashes) // n,
        "ring_points": len(ring.hashes),
        "keys": total,
        "moved_on_remove": float(np.count_nonzero(moved_removed)) / total,
        "moved_on_add": float(np.count_nonzero(moved_added)) / total,
        "moved_on_add_unsticky": float(np.count_nonzero(owners["base"] != owners["added_unsticky"])) / total,
        "added_points_per_backend": len(rings["added"].hashes) // (n + 1),
        "minimum_remove": 1.0 / n,
        "minimum_add": 1.0 / (n + 1),
        "removed_member_share": float(np.count_nonzero(owners["base"] == gone.key)) / total,
        "extra_moved_remove": extra_removed,
        "extra_moved_add": extra_added,
        "keys_max_over_mean": float(counts.max() / counts.mean()),
        "keys_min_over_mean": float(counts.min() / counts.mean()),
        "space_max_over_mean": float(arcs.max() * n),
        "space_min_over_mean": float(arcs.min() * n),
        "space_stdev_over_mean": float(arcs.std() * n),
        "build_cold_ms": cold_s * 1000.0,
        "rebuild_after_removal_ms": rebuild_s * 1000.0,
        "lookup_us": lookup_us,
        "hash_us": hash_us,
        "space_shares": sorted(float(a * n) for a in arcs),  # for the plot
    }


def run(sizes: Sequence[int] = SIZES, keys_count: int = KEYS, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    keys = make_keys(keys_count)
    t0 = time.perf_counter()
    key_hashes = np.fromiter((hash64(k) for k in keys), dtype=np.uint64, count=len(keys))
    hashing_s = time.perf_counter() - t0
    results = []
    for n in sizes:
        r = measure(n, keys, key_hashes)
        results.append(r)
        if progress:
            print(
                f"  N={n:<5} moved on remove {r['moved_on_remove']:.4f} (1/N {r['minimum_remove']:.4f}), "
                f"on add {r['moved_on_add']:.4f}; keys max/mean {r['keys_max_over_mean']:.3f}",
                flush=True,
            )
    return {
        "machine": machine_info(),
        "command": command_line(),
        "keys": keys_count,
        "lookups": min(LOOKUPS, keys_count),
        "key_hashing_s": hashing_s,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'N':>6} {'points/N':>8} {'moved -1':>9} {'moved +1':>9} {'1/N':>7} {'extra':>6} "
        f"{'keys max/mean':>13} {'space max/mean':>14} {'space min/mean':>14} {'build ms':>9} "
        f"{'rebuild ms':>10} {'lookup us':>9} {'hash us':>7}"
    ]
    for r in results["results"]:
        lines.append(
            f"{r['backends']:>6,} {r['points_per_backend']:>8} {r['moved_on_remove']:>9.4f} "
            f"{r['moved_on_add']:>9.4f} {r['minimum_remove']:>7.4f} "
            f"{r['extra_moved_remove'] + r['extra_moved_add']:>6} {r['keys_max_over_mean']:>13.3f} "
            f"{r['space_max_over_mean']:>14.3f} {r['space_min_over_mean']:>14.3f} "
            f"{r['build_cold_ms']:>9.1f} {r['rebuild_after_removal_ms']:>10.1f} "
            f"{r['lookup_us']:>9.2f} {r['hash_us']:>7.2f}"
        )
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}")
    print(f"command: {results['command']}")
    print(
        f"{results['keys']:,} keys, hashed once in {results['key_hashing_s']:.1f} s; "
        f"all sizes in {results['wall_s']:.0f} s\n"
    )
    print(table(results))
    print("\nmoved -1 / +1: share of keys whose owner changed when one member left / joined; 1/N: the minimum;")
    print("extra: keys moved between two members that both stayed (should be 0); space: share of the hash space;")
    print("lookup: HashRing.start (hash64 + bisect) per key; hash: hash64 alone")


def plot(results: dict[str, Any], outdir: str | Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    info = results["machine"]
    caption = f"{results['command']}\n{info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}"
    rows = results["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    labels = [f"N={r['backends']:,}" for r in rows]
    xs = range(len(rows))
    left.bar(
        [x - 0.2 for x in xs], [r["moved_on_remove"] * r["backends"] for r in rows], 0.4, label="one member removed"
    )
    left.bar(
        [x + 0.2 for x in xs], [r["moved_on_add"] * (r["backends"] + 1) for r in rows], 0.4, label="one member added"
    )
    left.axhline(1.0, color="black", linewidth=0.8, label="minimum (1/N)")
    left.set_xticks(list(xs))
    left.set_xticklabels(labels)
    left.set_ylabel("keys moved / minimum")
    left.set_title("Keys moved, relative to the minimum")
    left.legend(fontsize=8)
    for r, label in zip(rows, labels, strict=True):
        shares = r["space_shares"]
        ranks = [i / max(len(shares) - 1, 1) for i in range(len(shares))]
        right.plot(ranks, shares, label=f"{label} ({r['points_per_backend']} points each)")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.axhspan(0.99, 1.01, color="green", alpha=0.15, label="within 1 % (Maglev, M > 100 N)")
    right.set_xlabel("members, sorted by share (rank / N)")
    right.set_ylabel("share of the hash space x N")
    right.set_title("Load spread: each member's share of the hash space")
    right.legend(fontsize=8)
    fig.text(0.01, 0.005, caption, fontsize=6.5, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "hashing.png", dpi=110)
    plt.close(fig)
    return ["hashing.png"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--keys", type=int, default=KEYS, help=f"keys to place (default {KEYS:,})")
    parser.add_argument("--size", dest="sizes", type=int, action="append", help="members (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="DIR", help="also write the PNG plot to DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    results = run(args.sizes or SIZES, args.keys)
    print_report(results)
    write_json(results, args.json)
    if args.plot:
        print("plots:", ", ".join(plot(results, args.plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
