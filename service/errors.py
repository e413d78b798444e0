"""Domain errors. Each class's docstring is its default message; the HTTP layer maps them to
RFC 9457 problem documents in one place."""

from __future__ import annotations


class BoxofficeError(Exception):
    """Something went wrong in boxoffice."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigurationError(BoxofficeError):
    """A setting is invalid."""


class UnknownEvent(BoxofficeError):
    """No event with this id has been initialized."""


class EventConflict(BoxofficeError):
    """The event already exists with a different number of tickets or waiting-list limit."""


class WaitlistFull(BoxofficeError):
    """The event is sold out and its waiting list is full (the limit it was opened with); nothing
    was changed. A place frees up when someone waiting leaves or gets a ticket."""


class NotBooked(BoxofficeError):
    """The user holds no booking and is not on the waiting list of this event."""


class StoreReset(BoxofficeError):
    """The booking store lost its data and takes no requests until an operator restores it from
    the ledger (`boxoffice restore`); nothing was changed. Retry later."""


class EventFrozen(BoxofficeError):
    """The event is frozen: one of its changes could not be written to the ledger and was
    quarantined. New bookings and cancels are refused until an operator releases it; nothing
    was changed."""


class LedgerBehind(BoxofficeError):
    """The ledger trails the store by more than its bound; retry shortly."""


class BackendUnavailable(BoxofficeError):
    """The booking store cannot be reached right now; retry shortly."""
