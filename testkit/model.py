"""A small pure-Python reference model of boxoffice's booking rules.

It knows nothing of Redis: it is DESIGN.md's contract written as plainly as possible, so that
the real engine can be checked against it step by step (tests/test_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelEvent:
    total: int
    seq: int = 1
    holders: dict[str, str] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    journal: list[tuple[int, str, str | None, str | None]] = field(default_factory=list)
    """(seq, op, user, booking) of every state change, as the outbox must record them."""

    @property
    def available(self) -> int:
        return self.total - len(self.holders)

    def status(self) -> tuple[int, int, int, int]:
        return (self.total, self.available, len(self.holders), len(self.waiting))

    def _record(self, op: str, user: str | None, booking: str | None) -> int:
        self.seq += 1
        self.journal.append((self.seq, op, user, booking))
        return self.seq


class Model:
    """Every event by id. Each operation answers what the engine must answer."""

    def __init__(self) -> None:
        self.events: dict[str, ModelEvent] = {}

    def initialize(self, event_id: str, total: int) -> tuple[str, Any]:
        event = self.events.get(event_id)
        if event is None:
            event = self.events[event_id] = ModelEvent(total)
            event.journal.append((1, "init", None, None))
            return "created", event.status()
        if event.total != total:
            return "conflict", event.total
        return "exists", event.status()

    def book(self, event_id: str, user: str) -> tuple[str, Any]:
        event = self.events.get(event_id)
        if event is None:
            return "unknown", None
        if user in event.holders:
            return "booked-again", event.holders[user]
        if user in event.waiting:
            return "waiting-again", event.waiting.index(user) + 1
        if event.available > 0:
            booking = f"bk-{event.seq + 1}"
            event.holders[user] = booking
            event._record("book", user, booking)
            return "booked", booking
        event.waiting.append(user)
        event._record("wait", user, None)
        return "waitlisted", len(event.waiting)

    def cancel(self, event_id: str, user: str) -> tuple[str, Any]:
        event = self.events.get(event_id)
        if event is None:
            return "unknown", None
        if user in event.holders:
            booking = event.holders.pop(user)
            event._record("cancel", user, booking)
            promoted = None
            if event.waiting:
                head = event.waiting.pop(0)
                given = f"bk-{event.seq + 1}"
                event.holders[head] = given
                event._record("promote", head, given)
                promoted = (head, given)
            return "cancelled", (booking, promoted)
        if user in event.waiting:
            event.waiting.remove(user)
            event._record("leave", user, None)
            return "left", None
        return "none", None

    def user_state(self, event_id: str, user: str) -> tuple[str, Any]:
        event = self.events.get(event_id)
        if event is None:
            return "unknown", None
        if user in event.holders:
            return "booked", event.holders[user]
        if user in event.waiting:
            return "waitlisted", event.waiting.index(user) + 1
        return "none", None
