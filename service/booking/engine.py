"""The booking engine: the domain operations of boxoffice, each one script call.

Results are msgspec structs shaped as the API's JSON bodies (camelCase on the wire), so the HTTP
layer encodes them without copying. Domain failures are `service.errors` exceptions.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from boxoffice.service.errors import (
    EventConflict,
    EventFrozen,
    NotBooked,
    StoreReset,
    UnknownEvent,
    WaitlistFull,
)
from boxoffice.service.ids import ID_DESCRIPTION, ID_PATTERN
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts

MAX_TICKETS = 10_000_000
MAX_WAITLIST = 10_000_000
"""The largest waiting-list limit an event may be opened with (lua/initialize.lua checks it
too)."""

EventId = Annotated[
    str, msgspec.Meta(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["concert-2026"])
]
UserId = Annotated[
    str, msgspec.Meta(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["user-42"])
]
TicketCount = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_TICKETS,
        description=(
            "Number of tickets: any JSON number with no fractional part (5, 5.0 and 5e0 are 5; "
            '5.5, true and "5" are refused)'
        ),
        examples=[100],
    ),
]
WaitlistLimit = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_WAITLIST,
        description=(
            "How many users may wait at most once the event is sold out; absent or null: no "
            "limit. A whole JSON number, as `totalTickets`"
        ),
        examples=[500],
    ),
]


# omit_defaults: an event without a limit answers the seed contract's five fields, unchanged.
class EventStatus(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    event_id: str
    total_tickets: int
    available_tickets: int
    booked_count: int
    waiting_list_count: int
    waitlist_limit: int | None = None
    """How many users may wait at most; absent when the event has no limit."""


class Promotion(msgspec.Struct, frozen=True, rename="camel"):
    """The head of the waiting list, who received the freed ticket."""

    user_id: str
    booking_id: str


class Booked(msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="booked"):
    event_id: str
    user_id: str
    booking_id: str


class Waitlisted(msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="waitlisted"):
    event_id: str
    user_id: str
    position: int
    """1-based place in the waiting list."""


class NoBooking(msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="none"):
    event_id: str
    user_id: str


class Cancelled(msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="cancelled"):
    event_id: str
    user_id: str
    booking_id: str
    promoted: Promotion | None


class CancelledRedacted(
    msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="cancelled"
):
    """A cancel as told to its user when users are authenticated: whether the ticket went to
    the head of the waiting list, not to whom (admins see `Cancelled`)."""

    event_id: str
    user_id: str
    booking_id: str
    promoted: bool
    """True when the freed ticket went to the head of the waiting list at once."""

    @classmethod
    def of(cls, cancelled: Cancelled) -> CancelledRedacted:
        return cls(
            cancelled.event_id,
            cancelled.user_id,
            cancelled.booking_id,
            cancelled.promoted is not None,
        )


class LeftWaitlist(
    msgspec.Struct, frozen=True, rename="camel", tag_field="status", tag="left_waitlist"
):
    event_id: str
    user_id: str


UserState = Booked | Waitlisted | NoBooking
BookResult = Booked | Waitlisted
CancelResult = Cancelled | LeftWaitlist


def _status(event_id: str, reply: list[Any]) -> EventStatus:
    limit = reply[5] if len(reply) > 5 else None  # the scripts leave it out when there is none
    return EventStatus(event_id, reply[1], reply[2], reply[3], reply[4], limit)


def _refusal(reply: list[Any], event_id: str) -> Exception:
    """The error for a script's refusal: checked only after the common answers, so the hot path
    pays nothing for it."""
    kind = reply[0]
    if kind == "reset":
        return StoreReset()
    if kind == "waitlist_full":
        return WaitlistFull(
            f"Event {event_id!r} is sold out and its waiting list is full: it takes at most "
            f"{reply[1]} users. Nothing was changed."
        )
    if kind == "frozen":
        return EventFrozen(
            f"Event {event_id!r} is frozen: one of its changes could not be written to the "
            "ledger. New bookings and cancels are refused until an operator releases it."
        )
    return UnknownEvent(f"Event {event_id!r} does not exist.")


class BookingEngine:
    """Domain operations on the events of one keyspace."""

    def __init__(self, scripts: Scripts, keyspace: Keyspace) -> None:
        self._scripts = scripts
        self._keys = keyspace

    @property
    def keyspace(self) -> Keyspace:
        return self._keys

    async def initialize(
        self,
        event_id: str,
        total_tickets: int,
        waitlist_limit: int | None = None,
        *,
        admin: str | None = None,
    ) -> tuple[EventStatus, bool]:
        """Open an event, its waiting list capped at `waitlist_limit` users (None: no cap).
        Returns its status and whether it was created by this call; an event opened before with
        the same total and limit is a safe retry. `admin`, who asked, goes into the event's
        init record for the ledger; it is not part of what a retry must repeat."""
        keys = self._keys.event(event_id)
        limit = "" if waitlist_limit is None else waitlist_limit
        args = (event_id, total_tickets, limit, admin or "")
        reply = await self._scripts.call("initialize", keys.writes, args)
        if reply[0] == "reset":
            raise StoreReset()
        status = _status(event_id, reply)
        if reply[0] == "conflict":
            cap = status.waitlist_limit
            raise EventConflict(
                f"Event {event_id!r} already exists with {status.total_tickets} tickets and "
                + ("no waiting-list limit." if cap is None else f"a waiting-list limit of {cap}.")
            )
        return status, reply[0] == "created"

    async def book(self, event_id: str, user_id: str) -> tuple[BookResult, bool]:
        """Book a ticket, or join the waiting list when sold out. Returns the user's place and
        whether this call changed anything (False: a safe retry)."""
        keys = self._keys.event(event_id)
        reply = await self._scripts.call("book", keys.writes, (event_id, user_id))
        kind = reply[0]
        if kind == "booked":
            return Booked(event_id, user_id, reply[1]), reply[2] == 1
        if kind == "waitlisted":
            return Waitlisted(event_id, user_id, reply[1]), reply[2] == 1
        raise _refusal(reply, event_id)

    async def cancel(self, event_id: str, user_id: str) -> CancelResult:
        """Give back a booking (the head of the waiting list gets it in the same step), or
        leave the waiting list."""
        keys = self._keys.event(event_id)
        reply = await self._scripts.call("cancel", keys.writes, (event_id, user_id))
        kind = reply[0]
        if kind == "cancelled":
            promoted = Promotion(reply[2], reply[3]) if len(reply) == 4 else None
            return Cancelled(event_id, user_id, reply[1], promoted)
        if kind == "left_waitlist":
            return LeftWaitlist(event_id, user_id)
        if kind == "none":
            raise NotBooked(
                f"User {user_id!r} holds no booking and is not waiting for event {event_id!r}."
            )
        raise _refusal(reply, event_id)

    async def status(self, event_id: str) -> EventStatus:
        reply = await self._scripts.call("status", self._keys.event(event_id).reads, ())
        if reply[0] != "ok":
            raise _refusal(reply, event_id)
        return _status(event_id, reply)

    async def user_state(self, event_id: str, user_id: str) -> UserState:
        reply = await self._scripts.call("user_state", self._keys.event(event_id).reads, (user_id,))
        kind = reply[0]
        if kind == "booked":
            return Booked(event_id, user_id, reply[1])
        if kind == "waitlisted":
            return Waitlisted(event_id, user_id, reply[1])
        if kind == "none":
            return NoBooking(event_id, user_id)
        raise _refusal(reply, event_id)
