"""The review's attacks once more, in a real headless Chromium (Debian's, driven by Playwright), against an
admin listener in its default setup: on loopback, without a token.

- Cross-site requests: a page served from another 127.0.0.1 port submits HTML forms (text/plain and
  urlencoded) and ``no-cors`` fetches to POST /backends and POST /backends/{id}/drain, and tries a CORS
  fetch as application/json (which needs a preflight).
- DNS rebinding: a page of rebind.test (served to the browser by the "attacker", then the name resolves
  to 127.0.0.1) calls the admin API as its own same-origin server.

Each attack runs with the guards (nothing changes; for the cross-site page, also with the Content-Type
rule alone), then with the guards switched off: the control, where the same page does change the
backends, so the browser really sent what the guarded runs refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from playwright.async_api import Browser, async_playwright

from admin_helpers import CHROMIUM, CHROMIUM_ARGS, Live, SlowBackend, live_server
from load_balancing_module.server.admin.guard import Refusal, RequestGuard
from servers import AioServer

REBIND = "rebind.test"
# Chromium's own Private/Local Network Access checks would stop this rebound page before it reached the
# admin (the page counts as public, its requests go to loopback). Other browsers have no such check, and
# it has had gaps; the admin API must refuse the page on its own, so the test switches the check off.
NO_PRIVATE_NETWORK_CHECKS = (
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults"
)


class NoGuard(RequestGuard):
    """The control: every request passes, as before the guards."""

    def check(self, method: str, path: str, headers: Any, *, routed: bool = True) -> Refusal | None:
        return None


class NoOriginRule(RequestGuard):
    """The guards without the Origin rule: what Host and Content-Type stop on their own."""

    def check(self, method: str, path: str, headers: Any, *, routed: bool = True) -> Refusal | None:
        without_origin = CIMultiDict(headers)
        without_origin.popall("Origin", None)
        return super().check(method, path, CIMultiDictProxy(without_origin), routed=routed)


class AttackerSite(AioServer):
    """Serves ``page`` at / from its own 127.0.0.1 port (another origin than the admin's)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.page, content_type="text/html")


def csrf_page(admin: str, victim: str) -> str:
    """Forms into hidden frames, no-cors fetches, and a CORS fetch; ``attack()`` resolves when the browser
    has its answers (a frame's load, a fetch's opaque response) and says what became of each."""
    # text/plain sends name=value: the "=" lands in a string of the metadata, and the JSON holds.
    form_name, form_value = '{"host": "127.0.0.1", "port": 9, "metadata": {"pad": "', '"}}'
    add_by_fetch = json.dumps({"host": "127.0.0.1", "port": 10})
    add_typed = json.dumps({"host": "127.0.0.1", "port": 13})  # its Content-Type header is dropped (no-cors)
    drain = f"{admin}/backends/{victim}/drain"
    return f"""<!doctype html><html><body>
<form id="f1" method="POST" action="{admin}/backends" enctype="text/plain" target="t1">
  <input name='{form_name}' value='{form_value}'></form>
<form id="f2" method="POST" action="{admin}/backends" target="t2">
  <input name="host" value="127.0.0.1"><input name="port" value="11"></form>
<form id="f3" method="POST" action="{drain}" enctype="text/plain" target="t3"></form>
<form id="f4" method="POST" action="{drain}" target="t4"><input name="timeout" value="0"></form>
<iframe name="t1"></iframe><iframe name="t2"></iframe><iframe name="t3"></iframe><iframe name="t4"></iframe>
<script>
async function attack() {{
  const results = {{}};
  const loads = [1, 2, 3, 4].map((i) => new Promise((resolve) => {{
    document.querySelector(`iframe[name=t${{i}}]`).addEventListener("load", () => resolve(), {{once: true}});
  }}));
  for (const i of [1, 2, 3, 4]) document.getElementById(`f${{i}}`).submit();
  await Promise.all(loads);
  results.forms = "answered";
  const noCors = [["{admin}/backends", {json.dumps(add_by_fetch)}, {{}}],
                  ["{admin}/backends", {json.dumps(add_typed)}, {{"Content-Type": "application/json"}}],
                  ["{drain}", "", {{}}]];
  for (const [url, body, headers] of noCors) {{
    const response = await fetch(url, {{method: "POST", mode: "no-cors", body, headers}});
    results[url + " " + body] = response.type;
  }}
  try {{
    await fetch("{admin}/backends", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                     body: {json.dumps(add_by_fetch)}}});
    results.cors = "sent";
  }} catch (error) {{
    results.cors = "refused by the browser";
  }}
  return results;
}}
</script></body></html>"""


def rebinding_page() -> str:
    """The attacker's page on rebind.test: once the name resolves to 127.0.0.1, its own origin is the admin."""
    add = json.dumps({"host": "127.0.0.1", "port": 12})
    return f"""<!doctype html><html><body><script>
async function attack() {{
  const read = await fetch("/distribution");
  const write = await fetch("/backends", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                          body: {json.dumps(add)}}});
  const metrics = await fetch("/metrics");
  return {{read: read.status, readable: await read.text(), write: write.status, metrics: metrics.status}};
}}
</script></body></html>"""


@contextlib.asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    async with async_playwright() as playwright:
        # Playwright gives each launch a fresh, temporary profile (user-data-dir).
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args])
        try:
            yield browser
        finally:
            await browser.close()


async def backends(live: Live) -> list[str]:
    status, listed = await live.api("GET", "/backends")
    assert status == 200
    return sorted(b["backend_id"] for b in listed)


async def run_csrf(browser: Browser, site: AttackerSite) -> dict[str, str]:
    """The attack in a new tab; every form and no-cors fetch got an answer (the browser sent it)."""
    page = await browser.new_page()
    try:
        await page.goto(f"http://127.0.0.1:{site.port}/")
        results: dict[str, str] = await page.evaluate("attack()")
    finally:
        await page.close()
    assert results["forms"] == "answered", results
    assert [v for k, v in results.items() if k.startswith("http")] == ["opaque"] * 3, results
    return results


async def test_a_cross_site_page_cannot_change_the_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")], ["drain_timeout: 0"], token=False) as live:
        victim = live.backend_id(live.backends[0])
        site = await AttackerSite(csrf_page(live.admin, victim)).start()
        try:
            async with chromium() as browser:
                before = await backends(live)
                results = await run_csrf(browser, site)
                assert results["cors"] == "refused by the browser", results
                assert await backends(live) == before == [victim]
                assert (await live.api("GET", f"/backends/{victim}"))[1]["draining"] is False

                live.server.admin.guard = NoOriginRule("127.0.0.1", [])  # the Content-Type rule on its own
                results = await run_csrf(browser, site)
                assert await backends(live) == before, results
                assert (await live.api("GET", f"/backends/{victim}"))[1]["draining"] is False

                live.server.admin.guard = NoGuard("127.0.0.1", [])  # the control: the same page, no guards
                results = await run_csrf(browser, site)
                assert results["cors"] == "refused by the browser"  # no preflight is granted, guards or not
                assert await backends(live) == ["127.0.0.1:10", "127.0.0.1:13", "127.0.0.1:9"], results  # drained
        finally:
            await site.stop()


async def test_a_rebound_page_cannot_read_or_change_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_server(tmp_path, monkeypatch, [SlowBackend("a")], token=False) as live:
        port = live.server.admin.port
        origin = f"http://{REBIND}:{port}"
        async with chromium(f"--host-resolver-rules=MAP {REBIND} 127.0.0.1", NO_PRIVATE_NETWORK_CHECKS) as browser:
            page = await browser.new_page()
            # The attacker's server answers the first load of its page; the browser then finds the name at
            # 127.0.0.1 (--host-resolver-rules), and every later request of the page goes to the admin.
            await page.route(f"{origin}/", lambda route: route.fulfill(body=rebinding_page(), content_type="text/html"))
            before = await backends(live)
            await page.goto(f"{origin}/")
            results = await page.evaluate("attack()")
            assert (results["read"], results["write"], results["metrics"]) == (421, 421, 421), results
            assert json.loads(results["readable"])["field"] == "Host"
            assert await backends(live) == before

            live.server.admin.guard = NoGuard("127.0.0.1", [])  # the control
            results = await page.evaluate("attack()")
            assert (results["read"], results["write"], results["metrics"]) == (200, 201, 200), results
            assert set(json.loads(results["readable"])["backends"]) == set(before)  # it read the admin's data
            assert await backends(live) == sorted([*before, "127.0.0.1:12"])
