"""Write admission: what a worker knows of the ledger behind it, and the bound it enforces.

The composition root (`service.run.app`) polls `LedgerWatch.poll` in the background, so a
request checks the bound without a round trip.
"""

from __future__ import annotations

from boxoffice.service.errors import LedgerBehind
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import ledger_lag


class LedgerWatch:
    """The ledger's lag, its quarantined records and the store's lost partitions, as last
    polled, and the lag bound writes are admitted under (0: none)."""

    def __init__(self, keyspace: Keyspace, bound: int) -> None:
        self.keyspace = keyspace
        self.bound = bound
        self.lag = 0
        """Records the ledger trails by, as last polled."""
        self.quarantined: dict[str, str] = {}
        """Records the ledger quarantined, unreleased ("<stream>/<id>" -> eventId), as last
        polled. Readiness names them but stays ready: one bad event must not take every worker
        out of the load balancer."""
        self.reset_partitions = 0
        """Partitions whose epoch marker is missing, as last polled (`service.store.epoch`)."""

    @property
    def behind(self) -> bool:
        """Whether the ledger trails by more than the bound."""
        return bool(self.bound) and self.lag > self.bound

    async def poll_lag(self, redis: StoreClient) -> None:
        self.lag = await ledger_lag(redis, self.keyspace)

    async def poll(self, redis: StoreClient) -> None:
        """Refresh everything (three round trips)."""
        await self.poll_lag(redis)
        listed = await redis.hgetall(self.keyspace.quarantine)
        self.quarantined = {str(k): str(v) for k, v in listed.items()}
        self.reset_partitions = await epoch.missing(redis, self.keyspace)

    def admit_write(self) -> None:
        """Refuse writes while the ledger trails by more than its bound."""
        if self.behind:
            raise LedgerBehind(
                f"The ledger is {self.lag} records behind (bound {self.bound}); retry shortly."
            )
