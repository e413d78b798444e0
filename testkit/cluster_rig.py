"""A cluster rig of one test's own (tests/test_cluster_faults.py): a 3+3 Valkey cluster, a
ledger database, `boxoffice serve --workers 2` on the cluster and a `boxoffice writer` beside
it (a process of its own, so a test can stop and continue it), events spread over the three
primaries; a load whose every answer is logged, and the checks made after each fault."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from boxoffice.service.run.cluster import ClusterNode, EmbeddedCluster
from boxoffice.service.store.keys import Keyspace, key_slot
from testkit.cluster import cluster_ports, sync_cluster_client
from testkit.rig import Acknowledged
from testkit.support import (
    ServedBoxoffice,
    boxoffice_command,
    check_invariants,
    child_env,
    run_cli,
)

EVENTS_PER_PRIMARY = 4
TICKETS = 30
WRITER_LEASE_S = 2


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer a client got (or a transport error: status 0), when it came."""

    sent: float
    at: float
    event: str
    path: str
    status: int
    body: dict[str, Any] | None


@dataclass
class Log:
    """Every answer of a load, and what they acknowledged."""

    answers: list[Answer] = field(default_factory=list)
    seen: Acknowledged = field(default_factory=Acknowledged)

    def take(self, event: str, path: str, response: httpx.Response, sent: float) -> None:
        try:
            body = response.json()
        except ValueError:  # not JSON: kept as text, for the report
            body = {"text": response.text[:200]}
        answer = Answer(sent, time.monotonic(), event, path, response.status_code, body)
        self.answers.append(answer)
        self._acknowledge(event, response.status_code, body)

    def _acknowledge(self, event: str, status: int, body: Any) -> None:
        """What `testkit.rig.Acknowledged.take` notes, with the event the request named (a
        cancel's answer does not name it)."""
        if status >= 500 or not isinstance(body, dict):
            self.seen.refused += status >= 500
            return
        if status == 201 and body.get("status") == "booked":
            self.seen.bookings[body["bookingId"]] = (event, body["userId"])
        if body.get("status") == "cancelled":
            self.seen.cancelled.add(body["bookingId"])
            promoted = body.get("promoted")
            if promoted:
                self.seen.bookings[promoted["bookingId"]] = (event, promoted["userId"])

    def failed(self, events: set[str] | None = None) -> list[Answer]:
        """5xx answers and transport errors, of `events` only when given."""
        return [
            a
            for a in self.answers
            if (a.status >= 500 or a.status == 0) and (events is None or a.event in events)
        ]

    def refusals(self, events: set[str], since: float) -> dict[str, object]:
        """The failed answers of `events` after `since`: how many, of which problem types,
        from the first to the last (seconds after `since`)."""
        failed = [a for a in self.failed(events) if a.at >= since]
        kinds: dict[str, int] = defaultdict(int)
        for a in failed:
            kinds[str((a.body or {}).get("type", a.status))] += 1
        return {
            "failed": len(failed),
            "types": dict(kinds),
            "first_s": round(min((a.at for a in failed), default=since) - since, 2),
            "last_s": round(max((a.at for a in failed), default=since) - since, 2),
        }

    def outage(self, events: set[str], since: float) -> dict[str, float]:
        """What a fault at `since` cost `events`: failed answers, seconds from the fault to the
        last failure, and the slowest answer to a request sent after the fault."""
        failed = [a for a in self.failed(events) if a.at >= since]
        after = [a for a in self.answers if a.event in events and a.sent >= since]
        return {
            "failed": len(failed),
            "until_s": round(max((a.at for a in failed), default=since) - since, 2),
            "slowest_s": round(max((a.at - a.sent for a in after), default=0.0), 2),
        }


class ClusterRig:
    """The cluster, the ledger, serve and a writer of one test."""

    def __init__(self, home: Path, database_url: str) -> None:
        self.home = home
        self.database_url = database_url
        self.keyspace = Keyspace("bo", 16)
        self.cluster = EmbeddedCluster(home / "cluster", cluster_ports())
        with ExitStack() as started:
            started.callback(self.cluster.stop)
            self.cluster.start()
            self.env = child_env(
                REDIS_URL=self.cluster.url,
                DATABASE_URL=database_url,
                BOXOFFICE_KEY_PREFIX=None,
                BOXOFFICE_LOG_LEVEL="warning",
                BOXOFFICE_ADMIN_TOKEN=None,
                BOXOFFICE_WRITER="false",
                BOXOFFICE_REDIS_CLUSTER="true",
                BOXOFFICE_WRITER_LINGER_MS="50",
            )
            self.server = ServedBoxoffice(self.env, workers=2, cwd=home)
            started.callback(self.server.stop)
            self.url = self.server.url
            self.writer_log = home / "writer.log"
            self.writer = self._start_writer()
            started.callback(self.stop_writer)
            self.events = self._spread_events()
            self._started = started.pop_all()

    # -- processes ----------------------------------------------------------------------------

    def _start_writer(self, lease_s: float = WRITER_LEASE_S) -> subprocess.Popen[bytes]:
        env = {**self.env, "BOXOFFICE_LOG_LEVEL": "info"}
        command = [
            *boxoffice_command(sys.executable), "writer",
            "--batch-size", "200", "--lease", str(lease_s),
        ]  # fmt: skip
        with self.writer_log.open("ab") as out:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop_writer(self) -> None:
        if self.writer.poll() is None:
            os.kill(self.writer.pid, signal.SIGCONT)  # a stopped writer cannot take SIGTERM
            self.writer.send_signal(signal.SIGTERM)
            try:
                self.writer.wait(30)
            except subprocess.TimeoutExpired:
                self.writer.kill()
                self.writer.wait()

    def restart_writer(self, lease_s: float) -> None:
        """The writer stopped and started again with another lease (its renewals, and the
        fence's checks at each, come every third of it)."""
        self.stop_writer()
        self.writer = self._start_writer(lease_s)

    def stop(self) -> None:
        self._started.close()

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, cwd=self.home)

    # -- events -------------------------------------------------------------------------------

    def primary_of(self, event: str) -> int:
        """The port of the primary serving the event's slot when the cluster was made."""
        slot = key_slot(self.keyspace.event(event).meta)
        return next(p for p, (a, b) in self.cluster.ranges().items() if a <= slot <= b)

    def _spread_events(self) -> dict[int, list[str]]:
        """EVENTS_PER_PRIMARY events on each primary, opened with TICKETS tickets."""
        spread: dict[int, list[str]] = defaultdict(list)
        n = 0
        while min((len(spread[p]) for p in self.cluster.ranges()), default=0) < EVENTS_PER_PRIMARY:
            event = f"cf-{n}"
            n += 1
            if len(spread[port := self.primary_of(event)]) < EVENTS_PER_PRIMARY:
                spread[port].append(event)
        for event in [e for events in spread.values() for e in events]:
            body = {"eventId": event, "totalTickets": TICKETS}
            httpx.post(f"{self.url}/initialize", json=body, timeout=10).raise_for_status()
        return dict(spread)

    def all_events(self) -> list[str]:
        return [e for events in self.events.values() for e in events]

    def in_partition(self, partition: int) -> set[str]:
        return {e for e in self.all_events() if self.keyspace.partition_of(e) == partition}

    def writer_lines(self, word: str) -> list[str]:
        return [x for x in self.writer_log.read_text().splitlines() if word in x]

    def epoch_held(self, partition: int) -> bool:
        """Whether the partition's epoch marker is there (a fenced partition loses it)."""
        client = sync_cluster_client(self.cluster)
        try:
            return bool(client.exists(self.keyspace.epoch(partition)))
        finally:
            client.close()

    def on(self, node: ClusterNode) -> set[str]:
        """The events whose slot the node served when the cluster was made."""
        return set(self.events[node.port])

    # -- checks -------------------------------------------------------------------------------

    def reconcile(self, *extra: str) -> tuple[int, dict[str, Any]]:
        done = self.command("reconcile", "--json", *extra)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout)

    def check_invariants(self) -> None:
        client = sync_cluster_client(self.cluster)
        try:
            for event in self.all_events():
                check_invariants(client, self.keyspace.event(event))  # type: ignore[arg-type]
        finally:
            client.close()

    async def ledger_bookings(self) -> dict[tuple[str, str], asyncpg.Record]:
        connection = await asyncpg.connect(self.database_url)
        try:
            rows = await connection.fetch(
                "SELECT event_id, booking_id, user_id, cancelled_seq FROM bookings"
            )
        finally:
            await connection.close()
        return {(r["event_id"], r["booking_id"]): r for r in rows}

    async def missing(self, seen: Acknowledged) -> dict[str, tuple[str, str]]:
        """Acknowledged bookings the ledger lacks or gives another user."""
        ledger = await self.ledger_bookings()
        return {
            booking: (event, user)
            for booking, (event, user) in seen.bookings.items()
            if (row := ledger.get((event, booking))) is None or row["user_id"] != user
        }

    async def assert_nothing_lost(self, log: Log) -> None:
        """reconcile exits 0 once drained, the invariants hold, and every booking and cancel a
        client was told about is in the ledger."""
        code, report = self.reconcile("--wait", "60")
        assert (code, report["consistent"], report["ledgerLag"]) == (0, True, 0), report
        self.check_invariants()
        assert await self.missing(log.seen) == {}
        ledger = await self.ledger_bookings()
        for booking in log.seen.cancelled:
            assert any(
                r["cancelled_seq"] is not None for (_, b), r in ledger.items() if b == booking
            ), booking
        assert log.seen.bookings, "the load acknowledged nothing"
        active: dict[tuple[str, str], int] = defaultdict(int)
        for (event, _), row in ledger.items():
            if row["cancelled_seq"] is None:
                active[(event, row["user_id"])] += 1
        assert [k for k, n in active.items() if n > 1] == [], "a user booked twice in the ledger"


async def load(
    url: str, events: list[str], stop: asyncio.Event, log: Log, clients: int = 12, users: int = 60
) -> None:
    """Clients booking (70%) and cancelling at random over `events` until `stop` is set."""
    rng = random.Random(11)

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
            while not stop.is_set():
                event = rng.choice(events)
                body = {"userId": f"u{rng.randrange(users)}", "eventId": event}
                path = "/book" if rng.random() < 0.7 else "/cancel"
                sent = time.monotonic()
                try:
                    response = await http.post(path, json=body)
                except httpx.TransportError:
                    log.answers.append(Answer(sent, time.monotonic(), event, path, 0, None))
                    log.seen.refused += 1
                    await asyncio.sleep(0.05)
                    continue
                log.take(event, path, response, sent)
                if response.status_code >= 500:
                    await asyncio.sleep(0.02)  # as a client honouring Retry-After would, briefly

    await asyncio.gather(*(client() for _ in range(clients)))


def answered_since(log: Log, events: set[str], since: float) -> bool:
    """Whether a request on one of `events` was answered (not 5xx) after `since`."""
    return any(a.at > since and a.event in events and 0 < a.status < 500 for a in log.answers)
