"""The designs boxoffice is measured against, each serving the same routes under the same
uvicorn settings: `bare` (boxoffice's engine and transport without its contract), `naive`
(Starlette + redis-py running boxoffice's own scripts) and `pglock` (every booking a
PostgreSQL transaction holding the event's row lock). The request bodies they share are here."""

from __future__ import annotations

import msgspec


class Initialize(msgspec.Struct, rename="camel"):
    event_id: str
    total_tickets: int


class Booking(msgspec.Struct, rename="camel"):
    user_id: str
    event_id: str
