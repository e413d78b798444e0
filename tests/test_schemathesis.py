"""Schemathesis against the running service: every operation, examples, coverage, fuzzing and
stateful sequences (OpenAPI links), with every check."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from boxoffice.service.store.keys import Keyspace
from testkit.support import ServedBoxoffice, stores_env
from testkit.tokens import ADMIN_ROLE, AUDIENCE, ISSUER, SECRET, claims, mint

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(served: ServedBoxoffice) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
            "run", f"{served.url}/api/openapi.json",
            "--checks", "all", "--max-examples", "40", "--request-timeout", "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    assert "failure" not in summary.lower(), done.stdout[-6000:]
    # Warnings (e.g. "most responses were 404": random ids name unknown events) are not
    # failures; they are shown with `pytest -rP`.
    print(summary)


@pytest.fixture
def served_with_tokens(
    redis_url: str, database_url: str, keyspace: Keyspace, tmp_path: Path
) -> Iterator[ServedBoxoffice]:
    """`boxoffice serve --workers 2` in jwt mode (HS256 tokens of the tests' issuer)."""
    env = stores_env(
        redis_url, database_url, keyspace.prefix,
        BOXOFFICE_AUTH="jwt", BOXOFFICE_JWT_SECRET=SECRET, BOXOFFICE_JWT_ISSUER=ISSUER,
        BOXOFFICE_JWT_AUDIENCE=AUDIENCE, BOXOFFICE_ADMIN_TOKEN=None, BOXOFFICE_LOG_LEVEL="warning",
    )  # fmt: skip
    server = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_schemathesis_with_a_token_finds_nothing(served_with_tokens: ServedBoxoffice) -> None:
    """Every check with an admin's token (it opens events, and books, cancels and reads as its
    own user; another userId in a body is the documented 403). `ignored_auth` (in `all`)
    sends each secured request that succeeded again without the token and with a made-up
    one, and fails unless both are refused."""
    token = mint(claims("schemathesis", scope=ADMIN_ROLE, exp=int(time.time()) + 3600))
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
            "run", f"{served_with_tokens.url}/api/openapi.json",
            "--checks", "all", "--max-examples", "25", "--request-timeout", "10",
            "--header", f"Authorization: Bearer {token}", "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    assert "failure" not in summary.lower(), done.stdout[-6000:]
    print(summary)


def test_every_secured_operation_refuses_requests_without_credentials(
    served_with_tokens: ServedBoxoffice,
) -> None:
    """The document's `security` is enforced: each operation that declares it answers 401
    (with the challenge) to its own example request sent without credentials."""
    spec = httpx.get(f"{served_with_tokens.url}/api/openapi.json").json()
    secured = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            secured.append((method, path))
            url = served_with_tokens.url + path.format(eventId="gala", userId="ann")
            content = operation.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("example")
            answer = httpx.request(method, url, json=body)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["type"] == "/problems/unauthorized"
            assert answer.headers["www-authenticate"].startswith("Bearer ")
    assert sorted(secured) == [
        ("get", "/events/{eventId}/users/{userId}"),
        ("post", "/book"),
        ("post", "/cancel"),
        ("post", "/initialize"),
    ]
