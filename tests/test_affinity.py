"""Affinity cookies: signed, bound to a backend, checked; nothing stored per client."""

from __future__ import annotations

import pytest

from load_balancing_module.server.affinity import AffinityCookies

KEY = b"k" * 32


def test_a_cookie_names_its_backend_and_only_under_its_key() -> None:
    cookies = AffinityCookies(KEY)
    value = cookies.value("10.0.0.5:8080")
    assert cookies.backend_of(value) == "10.0.0.5:8080"
    assert AffinityCookies(b"x" * 32).backend_of(value) is None
    line = cookies.set_cookie("10.0.0.5:8080")
    assert line.startswith(b"Set-Cookie: OMNIXAN_AFFINITY=" + value.encode() + b"; Path=/; HttpOnly")
    assert cookies.set_cookie("10.0.0.5:8080") is line  # made once per backend


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "abc",
        ".",
        "MTAuMC4wLjU6ODA4MA.",
        "MTAuMC4wLjU6ODA4MA.AAAAAAAAAAAAAAAAAAAAAA",
        "!!!.!!!",
        "\u00e9.\u00e9",
        "a" * 600,
    ],
)
def test_a_forged_or_broken_cookie_names_no_backend(forged: str) -> None:
    assert AffinityCookies(KEY).backend_of(forged) is None


def test_a_tampered_backend_id_fails_the_signature() -> None:
    cookies = AffinityCookies(KEY)
    encoded, _, mac = cookies.value("10.0.0.5:8080").partition(".")
    other = cookies.value("10.0.0.6:8080").partition(".")[0]
    assert cookies.backend_of(f"{other}.{mac}") is None and encoded != other


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        AffinityCookies(b"short")


async def test_the_library_routes_to_a_preferred_backend_while_it_is_a_candidate() -> None:
    import random

    from load_balancing_module import (
        BackendConfig,
        FakeClock,
        HealthCheckConfig,
        LoadBalancingModule,
        LoadBalancingModuleConfig,
        Request,
    )

    config = LoadBalancingModuleConfig(health_check=HealthCheckConfig(enabled=False), session_affinity=True)
    lb = LoadBalancingModule(config, clock=FakeClock(), rng=random.Random(2))
    a = await lb.add_backend(BackendConfig(host="a.test", port=80))
    b = await lb.add_backend(BackendConfig(host="b.test", port=80, max_connections=1))
    request = Request(client_ip="10.1.1.1")
    for _ in range(4):  # round robin would alternate: the preference holds
        now = lb.route_now(request, prefer=b)
        assert now is not None and now.backend_id == b
        await lb.complete_request(now, success=True)
        routed = await lb.route_request(request, prefer=b)
        assert routed.backend_id == b
        await lb.complete_request(routed, success=True)
    held = await lb.route_request(request, prefer=b)  # b's one slot is taken: no longer a candidate
    assert (await lb.route_request(request, prefer=b)).backend_id == a
    assert (await lb.route_request(request, prefer="gone.test:80")).backend_id in (a, b)
    await lb.complete_request(held, success=True)
    assert await lb.store.session_count() == 0  # nothing was stored per client


async def test_the_proxys_affinity_cookie_binds_without_storing_anything() -> None:
    from proxy_helpers import AioBackend, get, start_proxy

    async with (
        AioBackend("a") as a,
        AioBackend("b") as b,
        start_proxy([a.port, b.port], session_affinity=True) as proxy,
    ):
        client = proxy.client()
        first = await client.request(get("/"))
        cookie = first.header("Set-Cookie")
        assert cookie is not None and cookie.startswith("OMNIXAN_AFFINITY=") and "HttpOnly" in cookie
        name = first.json()["backend"]
        value = cookie.split(";")[0]
        for _ in range(6):  # round robin would alternate: the cookie holds the client to its backend
            again = await client.request(get("/", f"Cookie: {value}"))
            assert again.json()["backend"] == name and again.header("Set-Cookie") is None
        forged = await client.request(get("/", "Cookie: OMNIXAN_AFFINITY=YWJj.AAAAAAAAAAAAAAAAAAAAAA"))
        assert forged.header("Set-Cookie") is not None  # ignored, and a real one is issued
        for _ in range(2000):  # clients that never return the cookie: nothing is kept for them
            assert (await client.request(get("/"))).status == 200
        assert await proxy.lb.store.session_count() == 0
        await client.close()
