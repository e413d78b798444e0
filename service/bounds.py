"""Bounds on what one request may carry. Every text quoting one of them (problem descriptions,
the OpenAPI document, the settings' defaults, README's tables, checked by a test) is written
from these numbers."""

from __future__ import annotations

MAX_BODY_BYTES = 16 * 1024
"""A request body's size; more: 413 `payload-too-large`, refused before it is read."""
MAX_HEADER_BYTES = 32 * 1024
"""The default bound on a request head's size (`BOXOFFICE_MAX_HEADER_BYTES`)."""
MAX_HEADER_FIELDS = 100
"""The default bound on a request's header fields (`BOXOFFICE_MAX_HEADER_FIELDS`)."""


def kib(size: int) -> str:
    """A size as the texts quote it: `16 KiB`."""
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"
