"""What an id is — of an event, a user or a request — and the one check of it: the request
bodies' schemas, the path parameters and the X-Request-ID header all use `ID_PATTERN`."""

from __future__ import annotations

import re

# `$` alone would also accept one trailing newline (Python's `re.search`); the lookahead
# refuses it and keeps the pattern valid ECMAScript for the OpenAPI document.
ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,64}(?!\n)$"
ID_DESCRIPTION = "1-64 characters of A-Z a-z 0-9 . _ : @ -"

_ID = re.compile(ID_PATTERN)
_ID_BYTES = re.compile(ID_PATTERN.encode())


def is_id(value: str) -> bool:
    """Whether `value` is an id (what msgspec checks of `EventId` and `UserId` fields)."""
    return _ID.search(value) is not None


def is_id_bytes(value: bytes) -> bool:
    """`is_id` of a raw header value, before decoding it."""
    return _ID_BYTES.search(value) is not None
