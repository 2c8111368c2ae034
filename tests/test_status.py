"""``omnixan-lb status`` (the real console script) against a live admin server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from admin_helpers import TOKEN, Live, SlowBackend, live_server

EXE = Path(sys.executable).parent / "omnixan-lb"


async def status(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "status", *args, stdout=pipe, stderr=pipe, env={**os.environ, **(env or {})}
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return await proc.wait(), out.decode(), err.decode()


async def traffic(live: Live, n: int) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(n):
            async with client.get(live.proxy + "/") as response:
                assert response.status == 200


async def test_table_json_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a"), SlowBackend("b")]) as live:
        a, b = (live.backend_id(x) for x in live.backends)
        await traffic(live, 10)
        code, out, err = await status("--admin", live.admin, "--token", TOKEN)
        assert code == 0, err
        assert f"OMNIXAN LB at {live.admin}" in out and "round_robin" in out
        for header in ("Backend", "Host", "Weight", "Priority", "Health", "Circuit", "Active", "Req/s", "Errors"):
            assert header in out
        rows = [line for line in out.splitlines() if a in line or b in line]
        assert len(rows) == 2 and all("healthy" in r and "closed" in r and " ms" in r for r in rows)

        code, out, err = await status("--admin", live.admin + "/", "--json", env={"OMNIXAN_ADMIN_TOKEN": TOKEN})
        assert code == 0, err
        data = json.loads(out)
        assert set(data["backends"]) == {a, b} and data["total_requests"] == 10
        assert sum(x["total_requests"] for x in data["backends"].values()) == 10

        code, out, err = await status("--admin", live.admin, "--token", "wrong")
        assert code == 1 and "401" in err and "token" in err and out == ""
        await live.server.admin.stop()
        code, out, err = await status("--admin", live.admin, "--json", "--token", TOKEN)
        assert code == 1 and "cannot connect" in err


async def test_watch_redraws_until_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")]) as live:
        proc = await asyncio.create_subprocess_exec(
            str(EXE),
            "status",
            "--admin",
            live.admin,
            "--token",
            TOKEN,
            "--watch",
            "--interval",
            "0.05",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            seen: list[str] = []
            while sum("routed" in line for line in seen) < 2:  # the caption of each table
                seen.append((await asyncio.wait_for(proc.stdout.readline(), 10)).decode())
            await traffic(live, 3)
            while not any(" 3 routed" in line for line in seen):  # a later table shows the new requests
                seen.append((await asyncio.wait_for(proc.stdout.readline(), 10)).decode())
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_pools_and_routes_are_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with SlowBackend("api") as api:
        extra = [
            "pools:",
            "  api:",
            "    algorithm: {algorithm_type: least_connections}",
            f"    backends: [{{host: 127.0.0.1, port: {api.port}}}]",
            "routes:",
            "  - {name: to-api, match: {path_prefix: /api/}, pool: api, strip_prefix: /api}",
            "  - {name: moved, match: {host: old.example.test},",
            "     redirect: {to: 'https://new.example.test', status: 301}}",
        ]
        async with live_server(tmp_path, monkeypatch, [SlowBackend("a")], extra) as live:
            code, out, err = await status("--admin", live.admin, "--token", TOKEN)
            assert code == 0, err
            assert f"OMNIXAN LB at {live.admin} · pool default" in out
            assert f"OMNIXAN LB at {live.admin} · pool api" in out and "least_connections" in out
            assert live.backend_id(live.backends[0]) in out and live.backend_id(api) in out
            assert "Routes (first match wins)" in out
            rows = [line for line in out.splitlines() if "to-api" in line or "moved" in line]
            assert len(rows) == 2, out
            assert "path_prefix=/api/" in rows[0] and "pool api (strip /api)" in rows[0]
            assert "host=old.example.test" in rows[1] and "redirect 301 https://new.example.test" in rows[1]

            code, out, err = await status("--admin", live.admin, "--json", "--token", TOKEN)
            assert code == 0, err
            assert set(json.loads(out)["pools"]) == {"default", "api"}
