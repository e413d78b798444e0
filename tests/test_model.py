"""Model-based tests: hypothesis drives the real engine (real Redis) and the reference model
(testkit/model.py) side by side, and checks every answer and every invariant after each step.
The same steps also run over HTTP against `boxoffice serve`, for a shorter budget."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from boxoffice.ledger.records import parse
from boxoffice.service.booking.engine import (
    Booked,
    BookingEngine,
    Cancelled,
    EventStatus,
    LeftWaitlist,
    NoBooking,
    Promotion,
    Waitlisted,
)
from boxoffice.service.errors import EventConflict, NotBooked, UnknownEvent
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from testkit.model import Model
from testkit.support import (
    ServedBoxoffice,
    check_invariants,
    delete_keyspace,
    redis_at,
    stores_env,
)
from testkit.tokens import ADMIN_ROLE, AUDIENCE, ISSUER, SECRET, bearer, claims, mint

# Few events, few tickets and a handful of users: contention, sold-out events and long waiting
# lists come up in most runs.
EVENTS = st.sampled_from(["e0", "e1"])
USER_IDS = ("ann", "bob", "cy", "dee", "eve")
USERS = st.sampled_from(USER_IDS)
TOTALS = st.integers(min_value=0, max_value=2)


class EngineMachine(RuleBasedStateMachine):
    """The Lua engine against the model."""

    redis_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.keyspace = Keyspace(f"m-{uuid.uuid4().hex[:10]}", 4)
        self.raw = redis_at(self.redis_url, decode_responses=True)
        epoch.mark_blocking(self.raw, self.keyspace)
        self.loop = asyncio.new_event_loop()
        self.connection = self.loop.run_until_complete(connect_redis(self.redis_url, 4))
        scripts = Scripts(self.connection)
        self.loop.run_until_complete(scripts.load())
        self.engine = BookingEngine(scripts, self.keyspace)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @rule(event=EVENTS, total=TOTALS)
    def initialize(self, event: str, total: int) -> None:
        kind, expected = self.model.initialize(event, total)
        if kind == "conflict":
            with pytest.raises(EventConflict, match=f"with {expected} tickets"):
                self.run(self.engine.initialize(event, total))
            return
        status, created = self.run(self.engine.initialize(event, total))
        assert created is (kind == "created")
        assert status == EventStatus(event, *expected)

    @rule(event=EVENTS, user=USERS)
    def book(self, event: str, user: str) -> None:
        kind, expected = self.model.book(event, user)
        if kind == "unknown":
            with pytest.raises(UnknownEvent):
                self.run(self.engine.book(event, user))
            return
        result, changed = self.run(self.engine.book(event, user))
        assert changed is (kind in ("booked", "waitlisted"))
        if kind in ("booked", "booked-again"):
            assert result == Booked(event, user, expected)
        else:
            assert result == Waitlisted(event, user, expected)

    @rule(event=EVENTS, user=USERS)
    def cancel(self, event: str, user: str) -> None:
        """Cancels a booking, or leaves the waiting list, as the model says the user stands."""
        kind, expected = self.model.cancel(event, user)
        if kind == "unknown":
            with pytest.raises(UnknownEvent):
                self.run(self.engine.cancel(event, user))
        elif kind == "none":
            with pytest.raises(NotBooked):
                self.run(self.engine.cancel(event, user))
        elif kind == "left":
            assert self.run(self.engine.cancel(event, user)) == LeftWaitlist(event, user)
        else:
            booking, promoted = expected
            promotion = Promotion(*promoted) if promoted else None
            assert self.run(self.engine.cancel(event, user)) == Cancelled(
                event, user, booking, promotion
            )

    @rule(event=EVENTS, user=USERS)
    def user_state(self, event: str, user: str) -> None:
        kind, expected = self.model.user_state(event, user)
        if kind == "unknown":
            with pytest.raises(UnknownEvent):
                self.run(self.engine.user_state(event, user))
            return
        answer = self.run(self.engine.user_state(event, user))
        if kind == "booked":
            assert answer == Booked(event, user, expected)
        elif kind == "waitlisted":
            assert answer == Waitlisted(event, user, expected)
        else:
            assert answer == NoBooking(event, user)

    @invariant()
    def state_and_outbox_agree_with_the_model(self) -> None:
        for event, model in self.model.events.items():
            keys = self.keyspace.event(event)
            assert self.run(self.engine.status(event)) == EventStatus(event, *model.status())
            check_invariants(self.raw, keys)
            waiting = self.raw.zrange(keys.waitlist, 0, -1)
            assert waiting == model.waiting, "the waiting list is not first-in first-out"
            entries: list[tuple[str, dict[str, str]]]
            entries = self.raw.xrange(keys.outbox)  # type: ignore[assignment]
            journal = [
                (r.seq, r.op, r.user, r.booking)
                for r in (parse(i, f) for i, f in entries)
                if r.event == event
            ]
            assert journal == model.journal, f"the outbox of {event} is not the model's"

    def teardown(self) -> None:
        delete_keyspace(self.raw, self.keyspace)
        self.raw.close()
        self.run(self.connection.aclose())
        self.loop.close()


def test_engine_follows_the_model(redis_url: str) -> None:
    EngineMachine.redis_url = redis_url
    run_state_machine_as_test(
        EngineMachine,
        settings=settings(
            max_examples=80,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class HttpMachine(RuleBasedStateMachine):
    """The same steps through the HTTP API of a running `boxoffice serve`."""

    base_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.run_id = uuid.uuid4().hex[:8]
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def event_id(self, event: str) -> str:
        return f"{self.run_id}-{event}"

    def credentials(self, user: str | None) -> dict[str, str]:
        """The headers of a request made as `user` (None: as the admin); none here: without
        authentication the body's userId is believed and `/initialize` is open."""
        return {}

    def promoted(self, promoted: tuple[str, str] | None) -> Any:
        """What a cancel's `promoted` must say when the model promoted `promoted`."""
        return {"userId": promoted[0], "bookingId": promoted[1]} if promoted else None

    @rule(event=EVENTS, total=TOTALS)
    def initialize(self, event: str, total: int) -> None:
        kind, expected = self.model.initialize(event, total)
        answer = self.http.post(
            "/initialize",
            json={"eventId": self.event_id(event), "totalTickets": total},
            headers=self.credentials(None),
        )
        if kind == "conflict":
            assert answer.status_code == 409
            return
        assert answer.status_code == (201 if kind == "created" else 200)
        assert answer.json() == _status(self.event_id(event), expected)

    @rule(event=EVENTS, user=USERS)
    def book(self, event: str, user: str) -> None:
        kind, expected = self.model.book(event, user)
        answer = self.http.post(
            "/book",
            json={"userId": user, "eventId": self.event_id(event)},
            headers=self.credentials(user),
        )
        if kind == "unknown":
            assert answer.status_code == 404
            return
        code = {"booked": 201, "waitlisted": 202}.get(kind, 200)
        assert answer.status_code == code
        body = answer.json()
        if kind in ("booked", "booked-again"):
            assert (body["status"], body["bookingId"]) == ("booked", expected)
        else:
            assert (body["status"], body["position"]) == ("waitlisted", expected)

    @rule(event=EVENTS, user=USERS)
    def cancel(self, event: str, user: str) -> None:
        kind, expected = self.model.cancel(event, user)
        answer = self.http.post(
            "/cancel",
            json={"userId": user, "eventId": self.event_id(event)},
            headers=self.credentials(user),
        )
        if kind in ("unknown", "none"):
            assert answer.status_code == 404
            assert answer.json()["type"] == (
                "/problems/unknown-event" if kind == "unknown" else "/problems/not-booked"
            )
        elif kind == "left":
            assert (answer.status_code, answer.json()["status"]) == (200, "left_waitlist")
        else:
            booking, promoted = expected
            body = answer.json()
            assert (answer.status_code, body["bookingId"]) == (200, booking)
            assert body["promoted"] == self.promoted(promoted)

    @invariant()
    def status_agrees_with_the_model(self) -> None:
        for event, model in self.model.events.items():
            answer = self.http.get(f"/status/{self.event_id(event)}")
            assert answer.json() == _status(self.event_id(event), model.status())
            for user in model.waiting[:2]:
                state = self.http.get(
                    f"/events/{self.event_id(event)}/users/{user}", headers=self.credentials(user)
                ).json()
                assert state["position"] == model.waiting.index(user) + 1

    def teardown(self) -> None:
        self.http.close()


def _status(event_id: str, counters: tuple[int, int, int, int]) -> dict[str, Any]:
    total, available, booked, waiting = counters
    return {
        "eventId": event_id,
        "totalTickets": total,
        "availableTickets": available,
        "bookedCount": booked,
        "waitingListCount": waiting,
    }


def test_http_api_follows_the_model(served: ServedBoxoffice) -> None:
    HttpMachine.base_url = served.url
    run_state_machine_as_test(
        HttpMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class TokenHttpMachine(HttpMachine):
    """The same steps against `boxoffice serve` in jwt mode: each user books, cancels and reads
    with a token of their own (a user learns whether a cancel promoted someone, not whom), and
    an admin's token opens the events."""

    tokens: ClassVar[dict[str | None, str]]

    def credentials(self, user: str | None) -> dict[str, str]:
        return bearer(self.tokens[user])

    def promoted(self, promoted: tuple[str, str] | None) -> Any:
        return promoted is not None


def test_http_api_follows_the_model_with_tokens(
    redis_url: str, database_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    env = stores_env(
        redis_url, database_url, keyspace.prefix,
        BOXOFFICE_AUTH="jwt", BOXOFFICE_JWT_SECRET=SECRET, BOXOFFICE_JWT_ISSUER=ISSUER,
        BOXOFFICE_JWT_AUDIENCE=AUDIENCE, BOXOFFICE_ADMIN_TOKEN=None, BOXOFFICE_LOG_LEVEL="warning",
    )  # fmt: skip
    server = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    try:
        TokenHttpMachine.base_url = server.url
        hour = {"exp": int(time.time()) + 3600}
        TokenHttpMachine.tokens = {
            None: mint(claims("boxoffice-admin", scope=ADMIN_ROLE, **hour)),
            **{user: mint(claims(user, **hour)) for user in USER_IDS},
        }
        run_state_machine_as_test(
            TokenHttpMachine,
            settings=settings(
                max_examples=15,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        server.stop()
