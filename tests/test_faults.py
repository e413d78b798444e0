"""Fault injection: processes and servers killed, stopped and lost under load.

Each test runs `boxoffice serve` (2 workers and its ledger writer) on a Valkey and a PostgreSQL
of its own, so it may stop, kill or wipe them. A load of concurrent clients books and cancels
while the fault happens and records every answer. Afterwards, for each fault:

- the invariants hold on every event (testkit/support.check_invariants);
- `boxoffice reconcile` exits 0 once the writer has drained;
- every booking a client was told about (201, or a promotion named in a 200 cancel) is in the
  ledger exactly once, and every cancel a client was told about is recorded there.
"""

from __future__ import annotations

import asyncio
import shutil
import signal

import httpx
import pytest

from testkit.rig import EVENTS, Rig, assert_nothing_lost, get, load, rig
from testkit.support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.anyio]
__all__ = ["rig"]  # the fixture, used by name


async def test_api_worker_killed_under_load(rig: Rig) -> None:
    running = asyncio.create_task(load(rig.url, 6))
    await asyncio.sleep(2)
    victim = rig.workers()[0]
    victim.send_signal(signal.SIGKILL)
    seen = await running
    # uvicorn replaced the worker; the service answers on.
    wait_for(
        lambda: len(pids := {w.pid for w in rig.workers()}) == 2 and victim.pid not in pids,
        30,
        "uvicorn to replace the killed worker",
    )
    assert get(f"{rig.url}/healthz").status_code == 200
    await assert_nothing_lost(rig, seen)


async def test_postgres_stopped_and_restarted_under_load(rig: Rig) -> None:
    running = asyncio.create_task(load(rig.url, 7))
    await asyncio.sleep(2)
    rig.postgres.stop()
    await asyncio.sleep(3)  # bookings go on: Redis has them, the ledger will catch up
    rig.postgres.start()
    seen = await running
    assert seen.refused == 0, "bookings were refused while only the ledger was down"
    await assert_nothing_lost(rig, seen)


async def test_redis_restarted_cleanly_keeps_what_it_acknowledged(rig: Rig) -> None:
    running = asyncio.create_task(load(rig.url, 7))
    await asyncio.sleep(2)
    rig.valkey.stop()  # SIGTERM: Valkey flushes its AOF before it exits
    await asyncio.sleep(1.5)
    rig.valkey.start()
    seen = await running
    assert seen.refused > 0, "nothing was refused while Redis was down: was it down?"
    await assert_nothing_lost(rig, seen)


async def test_redis_killed_keeps_what_it_acknowledged(rig: Rig) -> None:
    """Guarantee stated: a SIGKILLed Redis (AOF on, the default `appendfsync everysec`) keeps
    every write it acknowledged, because it writes the AOF before it replies; the fsync policy
    only matters when the host itself loses its page cache (power loss, kernel crash), where
    `everysec` may lose up to a second and `always` nothing. README, Operations, says so; no
    test here can pull the plug on the host."""
    running = asyncio.create_task(load(rig.url, 6))
    await asyncio.sleep(2)
    rig.valkey.kill()
    await asyncio.sleep(1)
    rig.valkey.start()
    seen = await running
    assert seen.refused > 0, "nothing was refused while Redis was dead: was it dead?"
    await assert_nothing_lost(rig, seen)


async def test_redis_lost_entirely_then_restored_from_the_ledger(rig: Rig) -> None:
    seen = await load(rig.url, 4)
    done = rig.server.command("reconcile", "--wait", "60")
    assert done.returncode == 0, done.stdout
    before = {e: get(f"{rig.url}/status/{e}").json() for e in EVENTS}

    rig.valkey.kill()
    shutil.rmtree(rig.valkey.data_dir / "appendonlydir")  # its data on disk is gone too
    rig.valkey.start()

    # A store that lost its data says so (not "unknown event") and takes no write: every answer
    # is a 503, plain (retry shortly) until a worker has reconnected to the new server, then
    # store-reset. Each worker's answer is awaited (requests reach either of the two).
    def answers(method: str, path: str, body: dict[str, object] | None) -> set[str]:
        seen = set()
        for _ in range(8):
            answer = httpx.request(method, f"{rig.url}{path}", json=body, timeout=10)
            assert answer.status_code == 503, answer.text
            seen.add(answer.json()["type"])
        return seen

    for method, path, body in (
        ("GET", f"/status/{EVENTS[0]}", None),
        ("POST", "/initialize", {"eventId": EVENTS[0], "totalTickets": 1}),
    ):

        def reset_everywhere(
            method: str = method, path: str = path, body: dict[str, object] | None = body
        ) -> bool:
            return answers(method, path, body) == {"/problems/store-reset"}

        wait_for(reset_everywhere, 30, f"{method} {path} to answer store-reset on every worker")

    restored = rig.server.command("restore")
    assert restored.returncode == 0, restored.stderr
    # Connections the workers held to the lost server fail once each (503, retry shortly),
    # then every route answers as before.
    wait_for(
        lambda: all(get(f"{rig.url}/status/{e}").status_code == 200 for e in EVENTS * 8),
        20,
        "every worker to reconnect",
    )
    after = {e: get(f"{rig.url}/status/{e}").json() for e in EVENTS}
    assert after == before
    await assert_nothing_lost(rig, seen)
    # And it goes on: new bookings continue each event's sequence.
    more = await load(rig.url, 2)
    assert more.bookings or more.cancelled
    await assert_nothing_lost(rig, more)
