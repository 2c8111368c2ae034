"""``omnixan-lb status``: the admin server's live backend table in the terminal.

Reads ``GET /distribution`` from the admin listener (with the bearer token
when given) and prints what the dashboard shows: per backend its host,
weight, priority, health, circuit, active connections, requests/s, error
rate and p99. ``--watch`` redraws every ``--interval`` seconds until Ctrl-C;
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
    url = admin.rstrip("/") + "/distribution"
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
        data = json.loads(body)
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
        raise StatusError(f"{url}: the answer is not a load distribution")
    return data


def _number(value: Any, digits: int, unit: str = "") -> str:
    return "-" if value is None else f"{float(value):.{digits}f}{unit}"


def build_table(distribution: dict[str, Any], source: str) -> Table:
    from rich.table import Table

    backends = sorted(distribution["backends"].values(), key=lambda b: str(b.get("backend_id")))
    when = time.strftime("%H:%M:%S", time.localtime(float(distribution.get("timestamp", 0))))
    table = Table(
        title=f"OMNIXAN LB at {source}",
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


def build_view(distribution: dict[str, Any], source: str) -> Group:
    """The backends' table, and the workers' below it when there are several."""
    from rich.console import Group

    workers = build_workers_table(distribution)
    backends = build_table(distribution, source)
    return Group(backends) if workers is None else Group(backends, workers)


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
        print("omnixan-lb status: the table needs rich: pip install rich (or use --json)", file=sys.stderr)
        return 2
    try:
        if not watch:
            console.print(build_view(fetch(admin, token), admin))
            return 0
        if console.is_terminal:
            from rich.live import Live

            with Live(build_view(fetch(admin, token), admin), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(build_view(fetch(admin, token), admin), refresh=True)
        while True:  # not a terminal: one table after another
            console.print(build_view(fetch(admin, token), admin))
            sys.stdout.flush()
            time.sleep(interval)
    except StatusError as exc:
        print(f"omnixan-lb status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
