"""``omnixan-lb status``: the admin server's live backend table in the terminal.

Reads ``GET /distribution`` and ``GET /routes`` from the admin listener (with
the bearer token when given) and prints what the dashboard shows: per backend
its host, weight, priority, health, circuit, active connections, requests/s,
error rate and p99, one table per pool when the config names pools, then the
routes. ``--watch`` redraws every ``--interval`` seconds until Ctrl-C;
``--json`` prints the distribution as JSON for scripts (no ``rich`` needed).

Exit codes: 0 shown; 1 the admin server could not be read (unreachable,
401, not JSON); 2 a usage problem (``rich`` missing for the table).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table

HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
CIRCUIT_STYLE = {"closed": "green", "half_open": "yellow", "open": "red"}


class StatusError(Exception):
    """The admin server could not be read; the message says why."""


def fetch(admin: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """``GET {admin}/distribution`` as a dict."""
    url, data = _get(admin, "/distribution", token, timeout)
    if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
        raise StatusError(f"{url}: the answer is not a load distribution")
    return data


def fetch_routes(admin: str, token: str | None, timeout: float = 5.0) -> dict[str, Any] | None:
    """``GET {admin}/routes`` as a dict; None from a server without the route (an older version)."""
    try:
        url, data = _get(admin, "/routes", token, timeout)
    except StatusError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        raise StatusError(f"{url}: the answer is not a routes table")
    return data


def _get(admin: str, path: str, token: str | None, timeout: float) -> tuple[str, Any]:
    """``GET {admin}{path}``: the URL and the JSON it answered."""
    url = admin.rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError(f"{url}: 401, the admin token is missing or wrong (--token)") from None
        raise StatusError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"{url}: cannot connect ({reason})") from None
    try:
        return url, json.loads(body)
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON") from None


def _number(value: Any, digits: int, unit: str = "") -> str:
    return "-" if value is None else f"{float(value):.{digits}f}{unit}"


def build_table(distribution: dict[str, Any], source: str, pool: str | None = None) -> Table:
    """The backends of one pool (``pool``: its name in the title, when there are several)."""
    from rich.table import Table

    backends = sorted(distribution["backends"].values(), key=lambda b: str(b.get("backend_id")))
    when = time.strftime("%H:%M:%S", time.localtime(float(distribution.get("timestamp", 0))))
    table = Table(
        title=f"OMNIXAN LB at {source}" + ("" if pool is None else f" · pool {pool}"),
        caption=f"{distribution.get('algorithm')} · {_number(distribution.get('requests_per_second'), 1)} req/s · "
        f"{distribution.get('total_requests')} routed · {distribution.get('queued_requests', 0)} queued · {when}",
    )
    for name, justify in (
        ("Backend", "left"),
        ("Host", "left"),
        ("Weight", "right"),
        ("Priority", "right"),
        ("Health", "left"),
        ("Circuit", "left"),
        ("Active", "right"),
        ("Req/s", "right"),
        ("Errors", "right"),
        ("p99", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for b in backends:
        health = "draining" if b.get("draining") else str(b.get("health_status"))
        circuit = str(b.get("circuit_state"))
        table.add_row(
            str(b.get("backend_id")),
            f"{b.get('host')}:{b.get('port')}",
            f"{b.get('weight'):g}",
            str(b.get("priority")),
            f"[{HEALTH_STYLE.get(health, 'yellow')}]{health}[/]",
            f"[{CIRCUIT_STYLE.get(circuit, 'yellow')}]{circuit.replace('_', '-')}[/]",
            str(b.get("active_connections")),
            _number(b.get("requests_per_second"), 1),
            _number(100 * float(b.get("error_rate") or 0.0), 1, " %"),
            _number(b.get("p99_latency_ms"), 1, " ms"),
        )
    if not backends:
        table.add_row("(no backends)", *[""] * 9)
    return table


def build_workers_table(distribution: dict[str, Any]) -> Table | None:
    """One row per worker process (``workers: N``), or None with one process."""
    from rich.table import Table

    workers = distribution.get("workers") or []
    if not workers:
        return None
    table = Table(title="Workers")
    for name in ("Worker", "PID", "State", "Restarts", "Routed", "Req/s", "In flight", "Connections"):
        table.add_column(name, justify="left" if name in ("PID", "State") else "right")
    for w in workers:
        state = "[green]up[/]" if w.get("up") else "[red]restarting[/]"
        table.add_row(
            str(w.get("index")),
            str(w.get("pid") if w.get("pid") is not None else "-"),
            state,
            str(w.get("restarts")),
            str(w.get("total_requests")),
            _number(w.get("requests_per_second"), 1),
            str(w.get("in_flight")),
            str(w.get("connections")),
        )
    return table


def build_routes_table(routes: dict[str, Any] | None) -> Table | None:
    """The routes in match order, or None without routes."""
    from rich.table import Table

    rows = (routes or {}).get("routes") or []
    if not rows:
        return None
    errors = (routes or {}).get("filter_errors") or {}
    caption = ", ".join(f"{name}: {count}" for name, count in sorted(errors.items()))
    table = Table(title="Routes (first match wins)", caption=f"filter errors: {caption}" if caption else None)
    for name in ("#", "Name", "Match", "To", "Filters"):
        table.add_column(name, justify="right" if name == "#" else "left")
    for r in rows:
        redirect = r.get("redirect")
        to = f"redirect {redirect.get('status')} {redirect.get('to')}" if redirect else f"pool {r.get('pool')}"
        if r.get("strip_prefix"):
            to += f" (strip {r['strip_prefix']})"
        match = {k: v for k, v in (r.get("match") or {}).items() if v not in (None, {}, [])}
        table.add_row(
            str(r.get("index")),
            str(r.get("name")),
            ", ".join(f"{k}={v}" for k, v in match.items()) or "every request",
            to,
            ", ".join(r.get("filters") or []) or "-",
            end_section=False,
        )
    return table


def build_view(distribution: dict[str, Any], source: str, routes: dict[str, Any] | None = None) -> Group:
    """The backends' table (one per pool when there are several), the routes', and the workers'
    when there are several."""
    from rich.console import Group

    pools = distribution.get("pools") or {"default": distribution}
    several = len(pools) > 1
    parts: list[Any] = [build_table(view, source, name if several else None) for name, view in pools.items()]
    for extra in (build_routes_table(routes), build_workers_table(distribution)):
        if extra is not None:
            parts.append(extra)
    return Group(*parts)


def _view(admin: str, token: str | None) -> Group:
    return build_view(fetch(admin, token), admin, fetch_routes(admin, token))


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe: no 80-column squeeze
    return console


def run(admin: str, token: str | None, *, watch: bool = False, as_json: bool = False, interval: float = 1.0) -> int:
    """The ``status`` command; returns the exit code."""
    if as_json:
        try:
            print(json.dumps(fetch(admin, token), indent=2, sort_keys=True))
        except StatusError as exc:
            print(f"omnixan-lb status: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        console = _console()
    except ImportError:
        print(
            "omnixan-lb status: the table needs rich: pip install 'omnixan-lb[server]' (or use --json)", file=sys.stderr
        )
        return 2
    try:
        if not watch:
            console.print(_view(admin, token))
            return 0
        if console.is_terminal:
            from rich.live import Live

            with Live(_view(admin, token), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(_view(admin, token), refresh=True)
        while True:  # not a terminal: one table after another
            console.print(_view(admin, token))
            sys.stdout.flush()
            time.sleep(interval)
    except StatusError as exc:
        print(f"omnixan-lb status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
