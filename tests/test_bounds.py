"""The request bounds are numbers in one place (`service.bounds`); every text quoting them says
what they are."""

from __future__ import annotations

from pathlib import Path

from boxoffice.service.api import problems
from boxoffice.service.api.openapi import document
from boxoffice.service.bounds import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_HEADER_FIELDS, kib
from boxoffice.service.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_kib_is_how_the_texts_write_a_size() -> None:
    assert kib(16 * 1024) == "16 KiB"
    assert kib(1500) == "1500 bytes"


def test_problem_descriptions_quote_the_bounds() -> None:
    assert problems.TOO_LARGE.description == (
        f"Request bodies are limited to {kib(MAX_BODY_BYTES)}."
    )
    assert (
        f"by default {kib(MAX_HEADER_BYTES)} and {MAX_HEADER_FIELDS} fields"
        in problems.HEADERS_TOO_LARGE.description
    )


def test_settings_default_to_the_bounds() -> None:
    assert Settings().max_header_bytes == MAX_HEADER_BYTES
    assert Settings().max_header_fields == MAX_HEADER_FIELDS


def test_openapi_quotes_the_body_bound() -> None:
    assert f"JSON, at most {MAX_BODY_BYTES} bytes" in str(document(Settings()))


def test_readme_quotes_the_bounds() -> None:
    for text in (
        f"| `BOXOFFICE_MAX_HEADER_BYTES` | `{MAX_HEADER_BYTES}` |",
        f"| `BOXOFFICE_MAX_HEADER_FIELDS` | `{MAX_HEADER_FIELDS}` |",
        f"| 413 | `payload-too-large` | body over {kib(MAX_BODY_BYTES)} ",
        f"`BOXOFFICE_MAX_HEADER_BYTES` ({kib(MAX_HEADER_BYTES)}) or "
        f"`BOXOFFICE_MAX_HEADER_FIELDS` ({MAX_HEADER_FIELDS} fields)",
        f"`BOXOFFICE_MAX_HEADER_BYTES` ({kib(MAX_HEADER_BYTES)}) or "
        f"`BOXOFFICE_MAX_HEADER_FIELDS` ({MAX_HEADER_FIELDS}) the client gets",
        f"bodies\n  over {kib(MAX_BODY_BYTES)} are refused",
    ):
        assert text in README, text
