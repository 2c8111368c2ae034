"""WriteBatch: what connections write during one turn of the event loop goes out together at its end."""

from __future__ import annotations

import asyncio

from load_balancing_module.server.upstream import WriteBatch


async def test_flushes_run_once_each_after_the_callbacks_of_the_turn_in_order() -> None:
    batch = WriteBatch()
    ran: list[str] = []
    loop = asyncio.get_running_loop()

    def reader(name: str) -> None:  # as a protocol's data_received would: write, to be sent later
        batch.add(lambda: ran.append(name))
        ran.append(f"read {name}")

    loop.call_soon(reader, "a")
    loop.call_soon(reader, "b")
    await asyncio.sleep(0)  # the turn that runs both reads
    await asyncio.sleep(0)  # the next one runs the batch
    assert ran == ["read a", "read b", "a", "b"]


async def test_a_flush_added_while_the_batch_runs_waits_for_the_next_turn() -> None:
    batch = WriteBatch()
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        batch.add(lambda: ran.append("second"))

    batch.add(first)
    await asyncio.sleep(0)
    assert ran == ["first"]
    await asyncio.sleep(0)
    assert ran == ["first", "second"]
