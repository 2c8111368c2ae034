"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against a live proxy with traffic.

Chromium is not optional here: CI installs it (.ci/run), and a machine without it
fails this test loudly rather than skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from admin_helpers import CHROMIUM, CHROMIUM_ARGS, TOKEN, SlowBackend, Traffic, live_server, until

# The README's picture: rewritten only when asked (OMNIXAN_SCREENSHOT=1), so a test run leaves the tree clean.
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"

SPARKLINE = "() => document.getElementById('sparkline-line').getAttribute('points').split(' ').length >= 3"
LIVE_NUMBERS = """(ids) => {
  const rows = [...document.querySelectorAll('#backends tbody tr')];
  if (rows.map((r) => r.dataset.backendId).sort().join() !== [...ids].sort().join()) return false;
  return rows.every((r) => parseFloat(r.querySelector('td[data-field=rps]').textContent) > 0
    && r.querySelector('td[data-field=p99]').textContent.endsWith(' ms')
    && r.querySelector('td[data-field=health]').textContent === 'healthy');
}"""


async def test_dashboard_shows_live_backends_and_drains_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    screenshot = README_SCREENSHOT if os.environ.get("OMNIXAN_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    backends = [SlowBackend(name, delay=0.002) for name in ("alpha", "beta", "gamma")]
    async with live_server(tmp_path, monkeypatch, backends) as live, Traffic(live.proxy, clients=3) as traffic:
        ids = [live.backend_id(b) for b in backends]
        drained = ids[1]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 560})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(live.admin + "/")
                await page.wait_for_selector("#token-dialog[open]")  # the API said 401: the token is asked
                await page.fill("#token", TOKEN)
                await page.click("#token-submit")
                await page.wait_for_function(LIVE_NUMBERS, arg=ids, timeout=10_000)
                assert await page.evaluate("sessionStorage.getItem('omnixan-lb-token')") == TOKEN
                bars = await page.locator("#distribution-chart .bar-row").count()
                assert bars == 3
                await page.wait_for_function(SPARKLINE, timeout=10_000)  # three refreshes: a line to see
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(screenshot), full_page=True)

                await page.click(f'#backends tr[data-backend-id="{drained}"] button.drain')
                await page.wait_for_selector(f'#backends tr[data-backend-id="{drained}"]', state="detached")
                await page.wait_for_selector(f'#removed tr[data-backend-id="{drained}"]')
                assert drained not in live.server.lb.backends
                assert "Drained" in await page.text_content("#message") or ""
                hits = backends[1].hits

                await page.click(f'#removed tr[data-backend-id="{drained}"] button.readd')
                await page.wait_for_selector(f'#backends tr[data-backend-id="{drained}"]')
                assert drained in live.server.lb.backends
                await until(lambda: backends[1].hits > hits, what="traffic on the re-added backend")

                await page.select_option("#algorithm", "least_connections")
                await page.click("#algorithm-apply")
                await until(lambda: live.server.lb.router.kind.value == "least_connections", what="the switch")

                await page.reload()  # the token is kept for the tab: no second prompt
                await page.wait_for_function(LIVE_NUMBERS, arg=ids, timeout=10_000)
                assert not await page.is_visible("#token-dialog")
                assert errors == []
            finally:
                await browser.close()
    assert traffic.failed == 0, (traffic.statuses, traffic.errors[:3])
    assert screenshot.stat().st_size > 10_000


async def test_dashboard_shows_pools_and_routes_and_drains_in_the_pool_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pools: a picker and a table of pools, the routes table, and the backend table, the
    algorithm and a drain of the pool picked."""
    api = [SlowBackend(name) for name in ("api-1", "api-2")]
    for backend in api:
        await backend.start()
    extra = [
        "pools:",
        "  api:",
        "    algorithm: {algorithm_type: least_connections}",
        "    backends:",
        *(f"      - {{host: 127.0.0.1, port: {b.port}}}" for b in api),
        "routes:",
        "  - {name: to-api, match: {path_prefix: /api/}, pool: api, strip_prefix: /api}",
        "  - {name: moved, match: {host: old.example.test}, redirect: {to: 'https://new.example.test', status: 301}}",
    ]
    try:
        async with (
            live_server(tmp_path, monkeypatch, [SlowBackend("main")], extra) as live,
            Traffic(live.proxy, clients=2, path="/api/x") as traffic,
        ):
            api_ids = [live.backend_id(b) for b in api]
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(live.admin + "/")
                    await page.wait_for_selector("#token-dialog[open]")
                    await page.fill("#token", TOKEN)
                    await page.click("#token-submit")
                    await page.wait_for_selector("#pools tbody tr[data-pool=api]")
                    assert await page.is_visible("#pool-picker") and await page.is_visible("#pools-section")
                    pool_names = await page.eval_on_selector_all(
                        "#pools tbody tr", "rows => rows.map(r => r.dataset.pool)"
                    )
                    assert pool_names == ["default", "api"]
                    routes = await page.eval_on_selector_all(
                        "#routes tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
                    )
                    assert routes[0][:4] == ["0", "to-api", "path /api/…", "pool api"]
                    assert routes[0][4] == "strip /api"
                    assert routes[1][:4] == [
                        "1",
                        "moved",
                        "host old.example.test",
                        "redirect 301 → https://new.example.test",
                    ]
                    # The default pool first: its one backend.
                    await page.wait_for_selector(f'#backends tr[data-backend-id="{live.backend_id(live.backends[0])}"]')

                    await page.select_option("#pool", "api")
                    await page.wait_for_function(LIVE_NUMBERS, arg=api_ids, timeout=10_000)  # api's traffic
                    assert await page.input_value("#algorithm") == "least_connections"
                    await page.click(f'#backends tr[data-backend-id="{api_ids[0]}"] button.drain')
                    await page.wait_for_selector(f'#removed tr[data-backend-id="{api_ids[0]}"]')
                    assert api_ids[0] not in live.server.pools["api"].backends
                    assert len(live.server.lb.backends) == 1  # the default pool untouched
                    assert "from pool api" in (await page.text_content("#removed") or "")
                    assert errors == []
                finally:
                    await browser.close()
        assert traffic.failed == 0, (traffic.statuses, traffic.errors[:3])
    finally:
        for backend in api:
            await backend.stop()
