"""Outcome predicates: ``is_failure`` and ``retry_on`` on the module and per call, in ``call()``,
``call_held()`` and ``acquire()``."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from load_balancing_module import LoadBalancingModule, Request, RouteResult, RoutingError
from load_balancing_module.outcome import (
    Outcome,
    default_is_failure,
    default_retry_on,
    retry_predicate,
    status_of,
    was_never_sent,
)
from test_call import drive, make_lb

REQ = Request(client_ip="10.5.5.5")


class Reply:
    """A response as an HTTP client returns it: only its status matters here."""

    def __init__(self, status_code: int, body: str = "") -> None:
        self.status_code = status_code
        self.body = body


def outcome(*, value: Any = None, error: BaseException | None = None) -> Outcome:
    return Outcome("b.test:80", 1, 1.0, value=value, error=error)


@pytest.mark.parametrize(
    ("thing", "failure"),
    [
        (Reply(200), False),
        (Reply(404), False),
        (Reply(429), False),
        (Reply(500), True),
        (Reply(503), True),
        (ConnectionResetError("reset"), True),
        (ConnectionRefusedError("refused"), True),
        (TimeoutError(), True),
        (asyncio.TimeoutError(), True),
        (RuntimeError("whose?"), True),  # the balancer cannot place it: counted, as always
        (ValueError("bad JSON in my code"), False),
        (KeyError("missing"), False),
        (TypeError("wrong call"), False),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("garbage"), True),
        (httpx.LocalProtocolError("a header h11 refuses"), False),  # the request's own fault
        (httpx.UnsupportedProtocol("ftp://"), False),
    ],
)
def test_default_is_failure(thing: Any, failure: bool) -> None:
    made = outcome(error=thing) if isinstance(thing, BaseException) else outcome(value=thing)
    assert default_is_failure(made) is failure


def test_status_of_reads_responses_and_http_errors() -> None:
    request = httpx.Request("GET", "http://a.test/")
    response = httpx.Response(503, request=request)
    assert status_of(response) == 503
    assert status_of(httpx.HTTPStatusError("no", request=request, response=httpx.Response(404))) == 404
    assert status_of(Reply(42)) is None  # not an HTTP status
    assert status_of(7) is None and status_of({"status": 500}) is None and status_of(None) is None

    class Flag:
        status = True  # a bool is not a status

    assert status_of(Flag()) is None


def test_never_sent_only_when_no_connection_was_made() -> None:
    assert was_never_sent(ConnectionRefusedError())
    assert was_never_sent(socket.gaierror(-2, "Name or service not known"))
    assert was_never_sent(httpx.ConnectError("refused"))
    assert was_never_sent(httpx.ConnectTimeout("slow connect"))
    assert not was_never_sent(ConnectionResetError())
    assert not was_never_sent(httpx.ReadTimeout("slow"))
    assert not was_never_sent(TimeoutError())


def test_default_retry_on_gateway_errors_and_failures_only() -> None:
    def judged(made: Outcome) -> Outcome:
        made.failure = default_is_failure(made)
        return made

    assert default_retry_on(judged(outcome(value=Reply(503))))
    assert default_retry_on(judged(outcome(value=Reply(502))))
    assert not default_retry_on(judged(outcome(value=Reply(500))))
    assert not default_retry_on(judged(outcome(value=Reply(404))))
    assert default_retry_on(judged(outcome(error=ConnectionResetError())))
    assert not default_retry_on(judged(outcome(error=ValueError())))


def test_retry_on_from_statuses_and_types() -> None:
    match = retry_predicate([500, ConnectionError])
    assert match(outcome(value=Reply(500)))
    assert not match(outcome(value=Reply(503)))
    assert match(outcome(error=ConnectionResetError()))
    assert not match(outcome(error=TimeoutError()))
    assert retry_predicate(TimeoutError)(outcome(error=TimeoutError()))
    assert retry_predicate(503)(outcome(value=Reply(503)))
    with pytest.raises(ValueError, match="not an HTTP status"):
        retry_predicate([99])
    with pytest.raises(TypeError, match="neither a status code nor an exception type"):
        retry_predicate(["503"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="is_failure must be a callable"):
        LoadBalancingModule(is_failure=404)  # type: ignore[arg-type]


def answers(*statuses: int) -> tuple[list[str], Any]:
    """A call function answering ``statuses`` in turn, recording which backend got each try."""
    seen: list[str] = []

    async def fn(result: RouteResult) -> Reply:
        seen.append(result.backend_id)
        return Reply(statuses[len(seen) - 1], result.backend_id)

    return seen, fn


async def test_a_503_is_retried_and_counted_against_its_backend() -> None:
    lb, clock = await make_lb(n=3)
    seen, fn = answers(503, 200)
    reply = await drive(clock, lb.call(REQ, fn))
    assert reply.status_code == 200 and len(seen) == 2 and seen[0] != seen[1]
    first = lb.backends[seen[0]]
    assert first.failed == 1 and first.successful == 0
    assert lb.backends[seen[1]].successful == 1
    assert all(b.in_flight == 0 for b in lb.backends.values())


async def test_a_500_is_a_failure_but_not_retried_by_default() -> None:
    lb, clock = await make_lb(n=3)
    seen, fn = answers(500, 200)
    reply = await drive(clock, lb.call(REQ, fn))
    assert reply.status_code == 500 and len(seen) == 1
    assert lb.backends[seen[0]].failed == 1


async def test_a_404_is_neither_a_failure_nor_retried() -> None:
    lb, clock = await make_lb(n=3)
    seen, fn = answers(404, 200)
    reply = await drive(clock, lb.call(REQ, fn))
    assert reply.status_code == 404 and len(seen) == 1
    backend = lb.backends[seen[0]]
    assert backend.successful == 1 and backend.failed == 0


async def test_a_value_error_in_user_code_is_raised_unchanged_and_not_retried() -> None:
    lb, clock = await make_lb(n=3)
    tries = 0

    async def fn(result: RouteResult) -> None:
        nonlocal tries
        tries += 1
        raise ValueError("my parsing")

    with pytest.raises(ValueError, match="my parsing"):
        await drive(clock, lb.call(REQ, fn))
    assert tries == 1
    assert sum(b.failed for b in lb.backends.values()) == 0
    assert lb.counters["retries"] == 0


async def test_retry_on_set_on_the_module_and_per_call() -> None:
    lb, clock = await make_lb(n=3)
    lb_500 = LoadBalancingModule(lb.config, clock=clock, retry_on=[500])
    for backend in lb.backends.values():
        await lb_500.add_backend(backend.config)
    seen, fn = answers(500, 200)
    assert (await drive(clock, lb_500.call(REQ, fn))).status_code == 200
    seen, fn = answers(503, 200)  # the module's retry_on names 500 only
    assert (await drive(clock, lb_500.call(REQ, fn))).status_code == 503
    seen, fn = answers(503, 200)  # per call, a callable
    reply = await drive(clock, lb_500.call(REQ, fn, retry_on=lambda o: o.status == 503))
    assert reply.status_code == 200 and len(seen) == 2


async def test_is_failure_per_call_spares_the_backend() -> None:
    lb, clock = await make_lb(n=2)
    seen, fn = answers(503)
    reply = await drive(clock, lb.call(REQ, fn, is_failure=lambda o: o.error is not None))
    assert reply.status_code == 503 and len(seen) == 1  # not a failure: not retried either
    assert lb.backends[seen[0]].failed == 0 and lb.backends[seen[0]].successful == 1


async def test_not_idempotent_is_retried_only_when_never_sent() -> None:
    lb, clock = await make_lb(n=3)
    tries: list[str] = []

    async def reset(result: RouteResult) -> None:
        tries.append(result.backend_id)
        raise ConnectionResetError("reset after the request went out")

    with pytest.raises(RoutingError):
        await drive(clock, lb.call(REQ, reset, idempotent=False))
    assert len(tries) == 1

    tries.clear()

    async def refused_then_ok(result: RouteResult) -> str:
        tries.append(result.backend_id)
        if len(tries) == 1:
            raise ConnectionRefusedError("nobody listens")
        return "done"

    assert await drive(clock, lb.call(REQ, refused_then_ok, idempotent=False)) == "done"
    assert len(tries) == 2
    assert lb.retry_budget.active == 0


async def test_the_last_answer_stands_when_no_backend_is_left() -> None:
    lb, clock = await make_lb(n=2, max_retries=5)
    seen, fn = answers(503, 503, 503)
    reply = await drive(clock, lb.call(REQ, fn))
    assert reply.status_code == 503 and len(seen) == 2  # both backends tried, the last 503 returned


async def test_call_held_keeps_the_slot_until_completed_and_discards_replaced_answers() -> None:
    lb, clock = await make_lb(n=3)
    _seen, fn = answers(503, 200)
    discarded: list[int] = []

    async def discard(reply: Reply) -> None:
        discarded.append(reply.status_code)

    held = await drive(clock, lb.call_held(REQ, fn, discard=discard))
    assert held.value.status_code == 200 and held.open and discarded == [503]
    backend = lb.backends[held.result.backend_id]
    assert backend.in_flight == 1  # the body is still being read: the slot is held
    lb.complete_now(held.result, success=not held.outcome.failure, latency_ms=held.outcome.latency_ms)
    assert backend.in_flight == 0 and backend.successful == 1


async def test_a_kept_answer_is_discarded_when_the_call_is_cancelled() -> None:
    lb, _clock = await make_lb(n=3, retry_backoff_base=1.0, retry_backoff_max=1.0)
    _, fn = answers(503, 200)
    discarded: list[int] = []

    async def discard(reply: Reply) -> None:
        discarded.append(reply.status_code)

    task = asyncio.ensure_future(lb.call_held(REQ, fn, discard=discard))
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()  # during the backoff before the second try
    with pytest.raises(asyncio.CancelledError):
        await task
    assert discarded == [503]
    assert all(b.in_flight == 0 for b in lb.backends.values())


async def test_acquire_fails_the_backend_when_the_block_raises_unless_the_module_judges() -> None:
    lb, clock = await make_lb(n=1)
    backend = next(iter(lb.backends.values()))
    with pytest.raises(KeyError):
        async with lb.acquire(REQ):
            raise KeyError("the block is the whole try")
    assert backend.failed == 1
    judged = LoadBalancingModule(lb.config, clock=clock, is_failure=lambda o: not isinstance(o.error, KeyError))
    await judged.add_backend(backend.config)
    mine = next(iter(judged.backends.values()))
    with pytest.raises(KeyError):
        async with judged.acquire(REQ):
            raise KeyError("my lookup")
    assert mine.failed == 0 and mine.successful == 1
    with pytest.raises(ConnectionResetError):
        async with judged.acquire(REQ):
            raise ConnectionResetError()
    assert mine.failed == 1
