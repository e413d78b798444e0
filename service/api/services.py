"""What the handlers work with, built by the composition root (`service.run.app`) when a worker
starts and handed to every request in its ASGI scope (`scope["state"]`, the lifespan state)."""

from __future__ import annotations

from dataclasses import dataclass

from boxoffice.service.api.asgi import Scope
from boxoffice.service.api.probes import Probe
from boxoffice.service.api.ratelimit import RateLimits
from boxoffice.service.booking.admission import LedgerWatch
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.errors import BackendUnavailable

KEY = "boxoffice"
"""The lifespan state's key for the `Services`."""
_NOT_RUNNING = "The service is starting or stopping."


@dataclass(slots=True)
class Services:
    booking: BookingEngine
    ledger: LedgerWatch
    redis_probe: Probe
    ledger_probe: Probe | None
    """None when no ledger is configured."""
    rate_limits: RateLimits | None
    """None when no limit is set."""
    open: bool = True
    """False once the worker stops: what is still running is answered 503."""

    @property
    def engine(self) -> BookingEngine:
        if not self.open:
            raise BackendUnavailable(_NOT_RUNNING)
        return self.booking


def of(scope: Scope) -> Services:
    """The worker's services, from the request's scope."""
    try:
        services: Services = scope["state"][KEY]
    except KeyError:
        raise BackendUnavailable(_NOT_RUNNING) from None
    return services


def running(scope: Scope) -> Services | None:
    """The worker's services while they are open, else None (before the lifespan has built
    them, or once the worker stops)."""
    services: Services | None = scope.get("state", {}).get(KEY)
    return services if services is not None and services.open else None
