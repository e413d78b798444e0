"""A rig of one test's own: Valkey, PostgreSQL and `boxoffice serve` (2 workers, its writer),
a load of concurrent clients that records what they were told, and the check that nothing
they were told was lost."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis

from boxoffice.service.run.cluster import EmbeddedCluster
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from boxoffice.service.store.keys import Keyspace
from testkit.cluster import cluster_ports
from testkit.support import (
    ServedBoxoffice,
    check_invariants,
    child_env,
    free_port,
    open_directory,
    redis_at,
)

EVENTS = [f"fault-{n}" for n in range(4)]
TICKETS = 40


@dataclass
class Acknowledged:
    """What the clients were told."""

    bookings: dict[str, tuple[str, str]] = field(default_factory=dict)
    """bookingId -> (eventId, userId), from 201 answers and promotions."""
    cancelled: set[str] = field(default_factory=set)
    """bookingIds a 200 cancel answer gave back."""
    refused: int = 0
    """Answers that acknowledged nothing (503, connection errors)."""

    def take(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            self.refused += 1
            return
        body = response.json()
        event = body.get("eventId")
        if response.status_code == 201 and body.get("status") == "booked":
            self.bookings[body["bookingId"]] = (event, body["userId"])
        if body.get("status") == "cancelled":
            self.cancelled.add(body["bookingId"])
            promoted = body.get("promoted")
            if promoted:
                self.bookings[promoted["bookingId"]] = (event, promoted["userId"])


class Rig:
    """Valkey, PostgreSQL and `boxoffice serve` of one test's own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        # On a cluster (BOXOFFICE_TEST_CLUSTER=1, `make cluster`): the whole store is a 3+3
        # Valkey cluster, stopped, killed and restarted as one.
        self.valkey: EmbeddedValkey | EmbeddedCluster = (
            EmbeddedCluster(home / "valkey", cluster_ports())
            if os.environ.get("BOXOFFICE_TEST_CLUSTER") == "1"
            else EmbeddedValkey(home / "valkey", free_port())
        )
        self.postgres = EmbeddedPostgres(home / "postgres", free_port())
        self.keyspace = Keyspace("bo", 16)
        # Whatever fails half way, what was started before it is stopped.
        with ExitStack() as started:
            started.callback(self.valkey.stop)
            self.valkey.start()
            started.callback(self.postgres.stop)
            self.postgres.start()
            self.env = child_env(
                REDIS_URL=self.valkey.url,
                DATABASE_URL=self.postgres.url,
                BOXOFFICE_KEY_PREFIX=None,
                BOXOFFICE_LOG_LEVEL="warning",
                BOXOFFICE_ADMIN_TOKEN=None,
            )
            self.server = ServedBoxoffice(self.env, workers=2, cwd=home)
            started.callback(self.server.stop)
            self.url = self.server.url
            for event in EVENTS:
                httpx.post(
                    f"{self.url}/initialize", json={"eventId": event, "totalTickets": TICKETS}
                ).raise_for_status()
            self._started = started.pop_all()

    def redis(self) -> redis.Redis:
        return redis_at(self.valkey.url, decode_responses=True)

    def workers(self) -> list[psutil.Process]:
        """The uvicorn worker processes (children of serve that are not the writer)."""
        workers = []
        for child in psutil.Process(self.server.process.pid).children():
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:  # gone, or a zombie not reaped yet
                continue
            if "multiprocessing.spawn" in command:
                workers.append(child)
        return workers

    def stop(self) -> None:
        """serve, then PostgreSQL, then Valkey: each is stopped even if stopping another failed."""
        self._started.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A rig of this test's own, torn down afterwards."""
    home = open_directory()
    try:
        rig = Rig(home)
        try:
            yield rig
        finally:
            rig.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def get(url: str) -> httpx.Response:
    """A blocking GET, for checks between load phases (nothing else runs meanwhile)."""
    return httpx.get(url, timeout=10)


async def load(
    url: str, seconds: float, clients: int = 24, reads: float = 0.0, users: int = 150
) -> Acknowledged:
    """Concurrent clients booking and cancelling at random for `seconds`; a share `reads` of
    the requests read status and user state instead."""
    seen = Acknowledged()
    rng = random.Random(7)
    deadline = asyncio.get_running_loop().time() + seconds

    async def client(n: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
            while asyncio.get_running_loop().time() < deadline:
                event = rng.choice(EVENTS)
                user = f"u{rng.randrange(users)}"
                dice = rng.random()
                try:
                    if dice < reads:
                        read = (
                            f"/status/{event}"
                            if dice < reads / 2
                            else f"/events/{event}/users/{user}"
                        )
                        response = await http.get(read)
                        assert response.status_code in (200, 503), response.text
                        continue
                    path = "/book" if rng.random() < 0.7 else "/cancel"
                    response = await http.post(path, json={"userId": user, "eventId": event})
                except httpx.TransportError:
                    seen.refused += 1
                    await asyncio.sleep(0.05)
                    continue
                seen.take(response)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return seen


async def assert_nothing_lost(rig: Rig, seen: Acknowledged) -> None:
    """The invariants, reconcile, and every acknowledged booking and cancel in the ledger."""
    done = rig.server.command("reconcile", "--wait", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["consistent"], report["ledgerLag"]) == (True, 0)
    client = rig.redis()
    try:
        for event in EVENTS:
            check_invariants(client, rig.keyspace.event(event))
    finally:
        client.close()
    database = await asyncpg.connect(rig.postgres.url)
    try:
        rows = await database.fetch(
            "SELECT booking_id, event_id, user_id, cancelled_seq FROM bookings"
        )
    finally:
        await database.close()
    ledger = {(r["event_id"], r["booking_id"]): r for r in rows}
    assert len(ledger) == len(rows)
    for booking, (event, user) in seen.bookings.items():
        row = ledger.get((event, booking))
        assert row is not None, f"acknowledged booking {booking} of {user} is not in the ledger"
        assert row["user_id"] == user
    for booking in seen.cancelled:
        cancelled = [r for (_, b), r in ledger.items() if b == booking]
        assert any(r["cancelled_seq"] is not None for r in cancelled), booking
    assert seen.bookings, "the load acknowledged nothing"
