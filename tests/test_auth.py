"""Authentication (issue 14): who may book, cancel and read as whom, and who may open events.

The attacks on the bearer tokens run against `boxoffice serve --workers 2` (each worker has its
own caches of tokens and keys, so each refused token is sent until both workers refused it);
the rest runs in this process. Every refusal is checked to have changed nothing: the event's
keys in Redis and what the API says of it and its users are exactly as before.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.state import outbox_records
from testkit.support import (
    ServedBoxoffice,
    database_url_for,
    delete_keyspace,
    eventually,
    free_port,
    one_line_refusal,
    run_sql,
    serve_refusing,
    stores_env,
    wait_for,
)
from testkit.tokens import (
    ADMIN_ROLE,
    AUDIENCE,
    ISSUER,
    OTHER_SECRET,
    SECRET,
    KeyPair,
    KeySetServer,
    bearer,
    claims,
    ec_pair,
    ed25519_pair,
    hs256_keyed_with,
    jwt_settings,
    mint,
    rsa_pair,
    token_for,
    unsigned,
)

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "the-static-admin-token-of-the-auth-tests"
CHALLENGE = 'Bearer realm="boxoffice"'


@dataclass(frozen=True)
class Keys:
    rsa: KeyPair
    ec: KeyPair
    ed: KeyPair
    rogue: KeyPair
    """An RSA key published nowhere that names the kid of `rsa`: forged signatures."""
    late: KeyPair
    """An RSA key the key set holds only once a test publishes it."""

    def published(self) -> tuple[KeyPair, ...]:
        return (self.rsa, self.ec, self.ed)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa_pair("rsa-1"), ec_pair("ec-1"), ed25519_pair("ed-1"), rsa_pair("rsa-1"),
                rsa_pair("rsa-late"))  # fmt: skip


def new_event() -> str:
    return f"ev-{uuid.uuid4().hex[:12]}"


def stored(client: redis.Redis, keyspace: Keyspace, event: str) -> tuple[Any, ...]:
    """The event's state in Redis: its meta, holders, waiting list and outbox records."""
    keys = keyspace.event(event)
    return (
        client.hgetall(keys.meta),
        client.hgetall(keys.holders),
        client.zrange(keys.waitlist, 0, -1, withscores=True),
        outbox_records(client, keyspace, event),
    )


ADMIN = bearer(ADMIN_TOKEN)


def assert_unauthorized(answer: httpx.Response, token: str | None = None) -> None:
    """A 401 `unauthorized` with the challenge; with `token`, one saying the token was refused,
    and nowhere quoting it."""
    assert_problem(answer, 401, "unauthorized")
    challenge = answer.headers["www-authenticate"]
    if token is None:
        assert challenge == CHALLENGE
        return
    assert challenge.startswith(f'{CHALLENGE}, error="invalid_token", error_description="')
    assert token not in answer.text
    assert all(token not in value for value in answer.headers.values())


# -- two workers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoWorkers:
    server: ServedBoxoffice
    key_set: KeySetServer
    keyspace: Keyspace
    store: redis.Redis
    key_set_pairs: tuple[KeyPair, ...]
    """The keys `key_set` publishes."""

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """On a new connection each time: both workers take some."""
        return httpx.post(
            f"{self.server.url}{path}", json=body, headers={**headers, "Connection": "close"}
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(
            f"{self.server.url}{path}", headers={**(headers or {}), "Connection": "close"}
        )

    def seen(self, event: str, users: tuple[str, ...]) -> tuple[Any, ...]:
        """The event as the store holds it and as the API tells it (status, users' states)."""
        told = [self.get(f"/status/{event}").json()]
        told += [self.get(f"/events/{event}/users/{user}", ADMIN).json() for user in users]
        return stored(self.store, self.keyspace, event), told

    def alice_booked_bob_waiting(self) -> str:
        """A new event of one ticket: alice holds it, bob waits."""
        event = new_event()
        made = self.post("/initialize", {"eventId": event, "totalTickets": 1}, ADMIN)
        assert made.status_code == 201, made.text
        booked = self.post("/book", {"eventId": event}, bearer(token_for("alice")))
        assert (booked.status_code, booked.json()["userId"]) == (201, "alice")
        waiting = self.post("/book", {"eventId": event, "userId": "bob"}, bearer(token_for("bob")))
        assert (waiting.status_code, waiting.json()["position"]) == (202, 1)
        return event


def worker_of(answer: httpx.Response) -> str:
    """Which worker answered: a worker's request ids share a random prefix (10 hex digits)."""
    return answer.headers["x-request-id"][:10]


def on_both_workers(send: Callable[[], httpx.Response], tries: int = 80) -> list[httpx.Response]:
    """`send` (a request on a new connection) again until both workers have answered it."""
    answers: list[httpx.Response] = []
    while len({worker_of(answer) for answer in answers}) < 2:
        assert len(answers) < tries, f"one worker answered all {tries} requests"
        answers.append(send())
    return answers


SERVED_REFRESH_S = 1.0


@pytest.fixture(scope="module")
def two_workers(
    redis_url: str,
    redis_client: redis.Redis,
    postgres_url: str,
    template_database: str,
    keys: Keys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoWorkers]:
    """`boxoffice serve --workers 2` in jwt mode (HS256 with the tests' secret; RS256, ES256
    and EdDSA from a key set on loopback, read again for an unknown kid at most once a second;
    the static admin token), logging every request at debug level, in a keyspace and database
    of its own."""
    keyspace = Keyspace(f"t-{uuid.uuid4().hex[:12]}", 16)
    epoch.mark_blocking(redis_client, keyspace)
    database = f"bo_t_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{database}" TEMPLATE "{template_database}"')
    try:
        with KeySetServer(*keys.published()).running() as key_set:
            env = stores_env(
                redis_url,
                database_url_for(postgres_url, database),
                keyspace.prefix,
                BOXOFFICE_AUTH="jwt",
                BOXOFFICE_JWT_SECRET=SECRET,
                BOXOFFICE_JWT_JWKS_URL=key_set.url,
                BOXOFFICE_JWT_ISSUER=ISSUER,
                BOXOFFICE_JWT_AUDIENCE=AUDIENCE,
                BOXOFFICE_JWKS_REFRESH=str(SERVED_REFRESH_S),
                BOXOFFICE_ADMIN_TOKEN=ADMIN_TOKEN,
                BOXOFFICE_ACCESS_LOG="true",
                BOXOFFICE_LOG_LEVEL="debug",
                BOXOFFICE_WRITER="false",
            )
            server = ServedBoxoffice(env, workers=2, cwd=tmp_path_factory.mktemp("auth"))
            try:
                yield TwoWorkers(server, key_set, keyspace, redis_client, keys.published())
            finally:
                server.stop()
    finally:
        delete_keyspace(redis_client, keyspace)
        run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _now() -> int:
    return int(time.time())


# Each names alice (who holds the event's ticket) but proves nothing; the leeway is 30 s.
REFUSED_TOKENS: dict[str, Callable[[Keys], str]] = {
    "forged RS256 signature": lambda k: mint(claims("alice"), k.rogue),
    "forged HS256 signature": lambda k: mint(claims("alice"), OTHER_SECRET),
    "expired": lambda k: mint(claims("alice", exp=_now() - 120)),
    "not valid yet": lambda k: mint(claims("alice", nbf=_now() + 120)),
    "wrong issuer": lambda k: mint(claims("alice", iss="https://issuer.evil.test/")),
    "wrong audience": lambda k: mint(claims("alice", aud="another-api")),
    "audience list without ours": lambda k: mint(claims("alice", aud=["a", "b"])),
    "alg none": lambda k: unsigned(claims("alice")),
    "HS256 keyed with the RSA public key": lambda k: hs256_keyed_with(
        k.rsa.public_pem(), claims("alice"), kid=k.rsa.kid
    ),
    "HS512 (not accepted)": lambda k: mint(claims("alice"), SECRET, alg="HS512"),
    "unknown kid": lambda k: mint(claims("alice"), k.late),
    "ES256 under an RSA key's kid": lambda k: mint(claims("alice"), k.ec, kid=k.rsa.kid),
    "no exp": lambda k: mint(claims("alice", exp=None)),
    "no user claim": lambda k: mint(claims(None)),
    "user outside the id alphabet": lambda k: mint(claims("auth0|alice")),
    "user not a string": lambda k: mint(claims(None, sub=12345)),
    "not a JWT": lambda k: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(REFUSED_TOKENS))
def test_a_refused_token_changes_nothing_on_either_worker(
    two_workers: TwoWorkers, keys: Keys, case: str
) -> None:
    served = two_workers
    event = served.alice_booked_bob_waiting()
    before = served.seen(event, ("alice", "bob"))
    token = REFUSED_TOKENS[case](keys)

    cancels = on_both_workers(lambda: served.post("/cancel", {"eventId": event}, bearer(token)))
    for answer in cancels:
        assert_unauthorized(answer, token)
    as_alice = {"eventId": event, "userId": "alice"}
    assert_unauthorized(served.post("/cancel", as_alice, bearer(token)), token)
    assert_unauthorized(served.post("/book", {"eventId": event}, bearer(token)), token)
    assert_unauthorized(served.get(f"/events/{event}/users/alice", bearer(token)), token)
    initialize = served.post("/initialize", {"eventId": new_event(), "totalTickets": 5},
                             bearer(token))  # fmt: skip
    assert_unauthorized(initialize, token)

    assert served.seen(event, ("alice", "bob")) == before
    # Every request was logged (the access log, at debug level): the token in none of it.
    last = initialize.headers["x-request-id"]
    wait_for(lambda: last in served.server.output(), 10, "the last request in the log")
    assert token not in served.server.output()


def test_mallory_cannot_cancel_alices_booking(two_workers: TwoWorkers) -> None:
    """THE scenario: a valid token of one user naming another user in the body."""
    served = two_workers
    event = served.alice_booked_bob_waiting()
    before = served.seen(event, ("alice", "bob", "mallory"))
    mallory = bearer(token_for("mallory"))

    as_alice = {"eventId": event, "userId": "alice"}
    for answer in on_both_workers(lambda: served.post("/cancel", as_alice, mallory)):
        assert_problem(answer, 403, "forbidden")
    assert_problem(served.post("/book", as_alice, mallory), 403, "forbidden")
    for answer in on_both_workers(lambda: served.get(f"/events/{event}/users/alice", mallory)):
        assert_problem(answer, 403, "forbidden")
    assert served.seen(event, ("alice", "bob", "mallory")) == before

    # Without a userId mallory acts for mallory, who holds nothing.
    own = served.post("/cancel", {"eventId": event}, mallory)
    assert_problem(own, 404, "not-booked")
    assert served.seen(event, ("alice", "bob", "mallory")) == before
    alices = served.get(f"/events/{event}/users/alice", bearer(token_for("alice")))
    assert alices.json()["status"] == "booked"

    # alice can: and she learns that the ticket went on, not to whom.
    cancelled = served.post("/cancel", {"eventId": event}, bearer(token_for("alice")))
    assert cancelled.status_code == 200
    assert cancelled.json()["promoted"] is True
    assert served.get(f"/status/{event}").json()["bookedCount"] == 1
    bobs = served.get(f"/events/{event}/users/bob", bearer(token_for("bob")))
    assert bobs.json()["status"] == "booked"


def test_es256_and_eddsa_tokens_from_the_key_set_verify_on_both_workers(
    two_workers: TwoWorkers, keys: Keys
) -> None:
    served = two_workers
    event = new_event()
    made = served.post("/initialize", {"eventId": event, "totalTickets": 10}, ADMIN)
    assert made.status_code == 201
    for user, pair in (("erin", keys.ec), ("eddie", keys.ed), ("rita", keys.rsa)):
        token = bearer(token_for(user, pair))
        answers = on_both_workers(partial(served.post, "/book", {"eventId": event}, token))
        assert [a.status_code for a in answers] == [201] + [200] * (len(answers) - 1), user
        assert {a.json()["userId"] for a in answers} == {user}
    assert served.get(f"/status/{event}").json()["bookedCount"] == 3


def test_a_key_published_later_is_taken_up_by_both_workers(two_workers: TwoWorkers) -> None:
    """Each worker reads the key set for an unknown kid at most once per interval, and takes
    up a key published since: the same token, refused before, then works on both."""
    served = two_workers
    event = served.alice_booked_bob_waiting()
    before = served.seen(event, ("alice", "bob"))
    newcomer = rsa_pair(f"rsa-{uuid.uuid4().hex[:8]}")
    token = mint(claims("alice"), newcomer)
    read_alices = partial(served.get, f"/events/{event}/users/alice", bearer(token))
    reads, started = served.key_set.gets, time.monotonic()
    for answer in on_both_workers(read_alices):
        assert_unauthorized(answer, token)
        assert "not in the key set" in answer.json()["detail"]
    elapsed = time.monotonic() - started
    # (at most one read per worker per interval begun, the first one included)
    assert served.key_set.gets - reads <= 2 * (int(elapsed / SERVED_REFRESH_S) + 1)
    assert served.seen(event, ("alice", "bob")) == before

    served.key_set.publish(*served.key_set_pairs, newcomer)
    try:
        accepted: dict[str, int] = {}

        def both_accept() -> bool:
            answer = read_alices()
            if answer.status_code == 200:
                accepted[worker_of(answer)] = answer.status_code
            else:
                assert_unauthorized(answer, token)
            return len(accepted) == 2

        wait_for(both_accept, 10 + 2 * SERVED_REFRESH_S, "both workers to take the new key")
        cancelled = served.post("/cancel", {"eventId": event}, bearer(token))
        assert (cancelled.status_code, cancelled.json()["promoted"]) == (200, True)
    finally:
        served.key_set.publish(*served.key_set_pairs)


def test_status_is_public_and_bookings_need_a_token(two_workers: TwoWorkers) -> None:
    served = two_workers
    event = served.alice_booked_bob_waiting()
    before = served.seen(event, ("alice", "bob"))
    status = served.get(f"/status/{event}")
    assert status.status_code == 200
    assert status.json()["bookedCount"] == 1
    for path in ("/book", "/cancel"):
        as_alice = {"eventId": event, "userId": "alice"}
        for answer in on_both_workers(partial(served.post, path, as_alice, {})):
            assert_unauthorized(answer)
    assert_unauthorized(served.get(f"/events/{event}/users/alice"))
    basic = served.post("/book", {"eventId": event}, {"Authorization": "Basic YWxpY2U6eA=="})
    assert_problem(basic, 401, "unauthorized")
    assert basic.headers["www-authenticate"] == CHALLENGE  # no error code (RFC 6750, 3.1)
    assert "Authorization: Bearer" in basic.json()["detail"]
    assert served.seen(event, ("alice", "bob")) == before


# -- in this process ------------------------------------------------------------------------


@pytest.fixture
def key_set(keys: Keys) -> Iterator[KeySetServer]:
    with KeySetServer(*keys.published()).running() as server:
        yield server


def jwt_mode(settings: Settings, key_set: KeySetServer, **changes: Any) -> Settings:
    """jwt mode in this test's keyspace: HS256 with the tests' secret, RS256, ES256 and EdDSA
    from `key_set`, and the static admin token."""
    return jwt_settings(settings, jwt_jwks_url=key_set.url, admin_token=ADMIN_TOKEN, **changes)


def gateway_mode(settings: Settings, gateways: str = "127.0.0.1", **changes: Any) -> Settings:
    return Settings(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        auth="gateway",
        auth_gateways=networks(gateways),
        admin_token=ADMIN_TOKEN,
        **changes,
    )


def networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part) for part in text.split(","))


def as_user(user: str, roles: str | None = None) -> dict[str, str]:
    """What a gateway adds to a request of `user`."""
    return {"X-User-ID": user, **({"X-User-Roles": roles} if roles is not None else {})}


@dataclass(frozen=True)
class App:
    http: httpx.AsyncClient
    store: redis.Redis
    keyspace: Keyspace

    async def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.http.post(path, json=body, headers=headers)

    async def seen(self, event: str, users: tuple[str, ...]) -> tuple[Any, ...]:
        """The event as the store holds it and as the API tells it (status, users' states)."""
        told = [(await self.http.get(f"/status/{event}")).json()]
        for user in users:
            told.append(
                (await self.http.get(f"/events/{event}/users/{user}", headers=ADMIN)).json()
            )
        return stored(self.store, self.keyspace, event), told

    async def alice_booked_bob_waiting(self, alice: dict[str, str], bob: dict[str, str]) -> str:
        """A new event of one ticket: alice (with credentials `alice`) holds it, bob waits."""
        event = new_event()
        made = await self.post("/initialize", {"eventId": event, "totalTickets": 1}, ADMIN)
        assert made.status_code == 201, made.text
        booked = await self.post("/book", {"eventId": event}, alice)
        assert (booked.status_code, booked.json()["userId"]) == (201, "alice"), booked.text
        waiting = await self.post("/book", {"eventId": event}, bob)
        assert (waiting.status_code, waiting.json()["userId"]) == (202, "bob"), waiting.text
        return event


@pytest.fixture
def opened(
    keyspace: Keyspace, redis_client: redis.Redis
) -> Callable[..., AbstractAsyncContextManager[App]]:
    """`opened(settings, client=(address, port))`: the app in this process on this test's
    keyspace, its requests from that peer."""

    @asynccontextmanager
    async def open_app(
        settings: Settings, client: tuple[str, int] = ("127.0.0.1", 123)
    ) -> AsyncIterator[App]:
        async with app_client(settings, client=client) as http:
            yield App(http, redis_client, keyspace)

    return open_app


Opened = Callable[..., AbstractAsyncContextManager[App]]


async def poll(
    send: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[httpx.Response], bool],
    seconds: float,
    what: str,
) -> httpx.Response:
    """`send` again until its answer is `done`; fail with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not done(answer := await send()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}: {answer.text}")
        await asyncio.sleep(0.05)
    return answer


async def test_hs256_keyed_with_the_public_key_is_refused_when_only_keys_are_accepted(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    """No secret: RS256, ES256 and EdDSA from the key set only. The public key's PEM as an
    HMAC secret (what a confused verifier would use) proves nothing, with or without a kid."""
    async with opened(jwt_mode(settings, key_set, jwt_secret=None)) as app:
        alice, bob = bearer(token_for("alice", keys.rsa)), bearer(token_for("bob", keys.ed))
        event = await app.alice_booked_bob_waiting(alice, bob)
        before = await app.seen(event, ("alice", "bob"))
        for kid in (keys.rsa.kid, None):
            token = hs256_keyed_with(keys.rsa.public_pem(), claims("alice"), kid=kid)
            assert_unauthorized(await app.post("/cancel", {"eventId": event}, bearer(token)), token)
        hs256 = mint(claims("alice"))  # even one signed with a secret: HS256 is not accepted
        assert_unauthorized(await app.post("/cancel", {"eventId": event}, bearer(hs256)), hs256)
        assert await app.seen(event, ("alice", "bob")) == before


REFRESH_S = 1.0


@pytest.mark.parametrize("alg", ["€", 'HS256"\r\nX-Evil: 1', "\\" * 600])
async def test_a_token_saying_anything_as_its_alg_is_a_401_with_a_sound_challenge(
    opened: Opened, settings: Settings, alg: str
) -> None:
    """The refusal quotes the token's alg: anyone's text, which must neither break the
    response header (it was a 500 for a character outside latin-1) nor inject into it."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": alg}).encode()).rstrip(b"=").decode()
    token = f"{header}.{base64.urlsafe_b64encode(b'{}').rstrip(b'=').decode()}.c2ln"
    async with opened(jwt_settings(settings)) as app:
        answer = await app.post("/book", {"eventId": new_event()}, bearer(token))
        assert_unauthorized(answer, token)
        challenge = answer.headers["www-authenticate"]
        description = challenge.split('error_description="', 1)[1].removesuffix('"')
        assert all(" " <= c <= "~" and c not in '"\\' for c in description), challenge
        assert "x-evil" not in answer.headers
        assert len(answer.json()["detail"]) < 200


async def test_tokens_arriving_while_the_key_set_is_first_read_wait_for_that_read(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    """A worker's first tokens arrive together; the key set is read once, and every one of
    them is checked against what that read brings (none refused for a kid not yet known)."""
    key_set.delay_s = 0.3  # a slow issuer: the others arrive while the read is on its way
    async with opened(jwt_mode(settings, key_set)) as app:
        event = new_event()
        made = await app.post("/initialize", {"eventId": event, "totalTickets": 100}, ADMIN)
        assert made.status_code == 201
        tokens = [bearer(token_for(f"fan-{i}", keys.rsa)) for i in range(20)]
        first = asyncio.create_task(app.post("/book", {"eventId": event}, tokens[0]))
        deadline = time.monotonic() + 5
        while key_set.gets == 0:  # the first token's read of the key set is under way
            assert time.monotonic() < deadline, "the key set was never read"
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(app.post("/book", {"eventId": event}, token))
                for token in tokens[1:]]  # fmt: skip
        answers = [await first, *await asyncio.gather(*rest)]
        assert [answer.status_code for answer in answers] == [201] * 20, answers[-1].text
        assert key_set.gets == 1
        assert (await app.http.get(f"/status/{event}")).json()["bookedCount"] == 20


async def test_an_unknown_kid_is_fetched_once_per_interval_and_a_new_key_is_taken_up(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    async with opened(jwt_mode(settings, key_set, jwks_refresh_s=REFRESH_S)) as app:
        assert key_set.gets == 0  # read when first needed
        alice, bob = bearer(token_for("alice", keys.rsa)), bearer(token_for("bob"))
        event = await app.alice_booked_bob_waiting(alice, bob)
        assert key_set.gets == 1
        first_read = time.monotonic()  # (the read itself started before)
        before = await app.seen(event, ("alice", "bob"))
        late = mint(claims("alice"), keys.late)
        cancel = partial(app.post, "/cancel", {"eventId": event}, bearer(late))

        # Once the interval since that read has passed, an unknown kid reads the set again:
        await eventually(lambda: time.monotonic() - first_read > REFRESH_S, 5, "the interval")
        started = time.monotonic()
        assert_unauthorized(await cancel(), late)
        assert key_set.gets == 2
        # and within the interval, no other token of an unknown kid (nor the same) reads it.
        another = mint(claims("alice"), keys.late)
        assert_unauthorized(await app.post("/cancel", {"eventId": event}, bearer(another)), another)
        assert_unauthorized(await cancel(), late)
        assert time.monotonic() - started < REFRESH_S, "too slow to tell: within the interval?"
        assert key_set.gets == 2
        assert await app.seen(event, ("alice", "bob")) == before

        # The issuer publishes the key: after the interval the same token works.
        key_set.publish(*keys.published(), keys.late)
        cancelled = await poll(cancel, lambda a: a.status_code != 401, REFRESH_S + 10, "the key")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["promoted"] is True
        assert key_set.gets == 3


async def test_a_token_refused_as_not_valid_yet_works_once_it_is(
    opened: Opened, settings: Settings
) -> None:
    """A refusal is remembered no longer than it holds: `nbf` comes, the same token works."""
    async with opened(jwt_settings(settings, admin_token=ADMIN_TOKEN, jwt_leeway=0)) as app:
        event = new_event()
        made = await app.post("/initialize", {"eventId": event, "totalTickets": 1}, ADMIN)
        assert made.status_code == 201
        soon = time.time() + 1.5
        early = mint(claims("alice", nbf=int(soon) + 1))
        book = partial(app.post, "/book", {"eventId": event}, bearer(early))
        refused = await book()
        assert_unauthorized(refused, early)
        assert "not valid yet" in refused.json()["detail"]
        assert (await app.http.get(f"/status/{event}")).json()["bookedCount"] == 0
        booked = await poll(book, lambda a: a.status_code != 401, 10, "nbf to come")
        assert booked.status_code == 201, booked.text
        assert time.time() >= int(soon) + 1


async def test_a_key_taken_out_of_the_key_set_stops_verifying(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    """New tokens of a removed key are refused once the set is read again (its max age)."""
    changes = {"jwks_refresh_s": REFRESH_S, "jwks_max_age_s": 1.0}
    async with opened(jwt_mode(settings, key_set, **changes)) as app:
        alice, bob = bearer(token_for("alice", keys.ec)), bearer(token_for("bob", keys.ed))
        event = await app.alice_booked_bob_waiting(alice, bob)
        key_set.publish(keys.rsa, keys.ed)  # the EC key is withdrawn

        async def read_as_carol() -> httpx.Response:
            token = bearer(token_for("carol", keys.ec))  # a new token each time: no cache
            return await app.http.get(f"/events/{event}/users/carol", headers=token)

        refused = await poll(read_as_carol, lambda a: a.status_code != 200, 10, "the key gone")
        assert_problem(refused, 401, "unauthorized")
        assert "not in the key set" in refused.json()["detail"]
        bobs = await app.http.get(f"/events/{event}/users/bob", headers=bob)
        assert bobs.status_code == 200  # the keys still published still verify


async def test_an_unreadable_key_set_is_a_503_not_a_401(
    opened: Opened, settings: Settings, keys: Keys
) -> None:
    """Tokens that need the key set cannot be checked while it cannot be read: the client is
    told to come back (503), not that its token is bad; HS256 tokens still verify."""
    nowhere = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    async with opened(jwt_settings(settings, jwt_jwks_url=nowhere, admin_token=ADMIN_TOKEN)) as app:
        event = new_event()
        made = await app.post("/initialize", {"eventId": event, "totalTickets": 1}, ADMIN)
        assert made.status_code == 201
        signed = bearer(token_for("alice", keys.rsa))
        unavailable = await app.post("/book", {"eventId": event}, signed)
        assert_problem(unavailable, 503, "service-unavailable")
        assert unavailable.headers["retry-after"]
        assert nowhere not in unavailable.text  # (the reason goes to the log)
        assert "Nothing was changed" in unavailable.json()["detail"]
        # Until a read succeeds, no token of the key set is refused as unknown either:
        again = await app.post("/book", {"eventId": event}, bearer(token_for("carol", keys.rsa)))
        assert_problem(again, 503, "service-unavailable")
        assert (await app.http.get(f"/status/{event}")).json()["bookedCount"] == 0
        booked = await app.post("/book", {"eventId": event}, bearer(token_for("bob")))
        assert booked.status_code == 201


async def test_users_read_only_their_own_state_and_admins_anyones(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    async with opened(jwt_mode(settings, key_set)) as app:
        alice, bob = bearer(token_for("alice")), bearer(token_for("bob", keys.rsa))
        event = await app.alice_booked_bob_waiting(alice, bob)
        path = f"/events/{event}/users/alice"
        own = await app.http.get(path, headers=alice)
        assert own.status_code == 200
        assert own.json()["status"] == "booked"
        assert_problem(await app.http.get(path, headers=bob), 403, "forbidden")
        assert_unauthorized(await app.http.get(path))
        for admin in (token_for("boss", admin=True), token_for("boss", keys.ed, admin=True),
                      mint(claims("boss", scope=["profile", ADMIN_ROLE]))):  # fmt: skip
            read = await app.http.get(path, headers=bearer(admin))
            assert (read.status_code, read.json()) == (200, own.json())
        by_token = await app.http.get(path, headers=ADMIN)
        assert (by_token.status_code, by_token.json()) == (200, own.json())
        # A scope that only contains the role's text is not the role.
        near = mint(claims("boss", scope=f"{ADMIN_ROLE}s read:{ADMIN_ROLE}"))
        assert_problem(await app.http.get(path, headers=bearer(near)), 403, "forbidden")


async def test_initialize_needs_the_admin_role_or_the_admin_token(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    async with opened(jwt_mode(settings, key_set)) as app:
        event = new_event()
        body = {"eventId": event, "totalTickets": 2}
        assert_unauthorized(await app.post("/initialize", body))
        user = await app.post("/initialize", body, bearer(token_for("alice")))
        assert_problem(user, 403, "forbidden")
        expired = mint(claims("boss", scope=ADMIN_ROLE, exp=_now() - 120))
        assert_unauthorized(await app.post("/initialize", body, bearer(expired)), expired)
        assert_problem(await app.http.get(f"/status/{event}"), 404, "unknown-event")
        assert stored(app.store, app.keyspace, event) == ({}, {}, [], [])

        admin = bearer(token_for("boss", keys.ec, admin=True))
        assert (await app.post("/initialize", body, admin)).status_code == 201
        other = {"eventId": new_event(), "totalTickets": 2}
        assert (await app.post("/initialize", other, ADMIN)).status_code == 201
        assert (await app.http.get(f"/status/{event}")).json()["totalTickets"] == 2


async def test_a_cancel_tells_users_whether_and_admins_whom(
    opened: Opened, settings: Settings, key_set: KeySetServer, keys: Keys
) -> None:
    async with opened(jwt_mode(settings, key_set)) as app:
        alice, bob = bearer(token_for("alice")), bearer(token_for("bob"))
        event = await app.alice_booked_bob_waiting(alice, bob)
        cancelled = await app.post("/cancel", {"eventId": event, "userId": "alice"}, alice)
        assert cancelled.status_code == 200
        assert cancelled.json() == {"status": "cancelled", "eventId": event, "userId": "alice",
                                    "bookingId": "bk-2", "promoted": True}  # fmt: skip
        alone = await app.post("/cancel", {"eventId": event}, bob)  # nobody waits now
        assert (alone.status_code, alone.json()["promoted"]) == (200, False)

        boss = bearer(token_for("boss", keys.rsa, admin=True))
        assert (await app.post("/book", {"eventId": event}, boss)).status_code == 201
        assert (await app.post("/book", {"eventId": event}, bob)).status_code == 202
        told = await app.post("/cancel", {"eventId": event}, boss)
        assert told.status_code == 200
        assert told.json()["promoted"] == {"userId": "bob", "bookingId": "bk-10"}
        # An admin acts for themself too: another's userId in the body is refused.
        before = await app.seen(event, ("bob", "boss"))
        other = await app.post("/cancel", {"eventId": event, "userId": "bob"}, boss)
        assert_problem(other, 403, "forbidden")
        # The static admin token names no user: it opens events, it does not book.
        assert_unauthorized(await app.post("/cancel", {"eventId": event, "userId": "bob"}, ADMIN))
        assert await app.seen(event, ("bob", "boss")) == before


async def test_no_token_reaches_the_logs(
    opened: Opened,
    settings: Settings,
    key_set: KeySetServer,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = [token_for("alice", keys.rsa), token_for("bob"), *(
        make(keys) for make in REFUSED_TOKENS.values()
    )]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        async with opened(jwt_mode(settings, key_set, access_log=True)) as app:
            event = new_event()
            made = await app.post("/initialize", {"eventId": event, "totalTickets": 1}, ADMIN)
            assert made.status_code == 201
            for token in tokens:
                await app.post("/book", {"eventId": event}, bearer(token))
                await app.http.get(f"/events/{event}/users/alice", headers=bearer(token))
    logged = [f"{record.getMessage()} {record.__dict__}" for record in caplog.records]
    access = [
        r for r in caplog.records if r.name == "boxoffice.access" and "/book" in r.getMessage()
    ]
    assert len(access) == len(tokens)  # the access log saw them all
    assert any("kids" in line for line in logged)  # and the key set was read
    for token in tokens:
        assert all(token not in line for line in logged)
        signature = token.rpartition(".")[2]
        assert not signature or all(signature not in line for line in logged)


# -- in this process: gateway mode ------------------------------------------------------------


async def test_a_gateways_user_is_believed_from_the_gateways_only(
    opened: Opened, settings: Settings
) -> None:
    mode = gateway_mode(settings, "127.0.0.1,10.0.0.0/24")
    async with opened(mode) as gateway, opened(mode, client=("10.9.9.9", 1234)) as stranger:
        event = await gateway.alice_booked_bob_waiting(as_user("alice"), as_user("bob"))
        before = await gateway.seen(event, ("alice", "bob"))
        for answer in (
            await stranger.post("/cancel", {"eventId": event}, as_user("alice")),
            await stranger.post("/cancel", {"eventId": event, "userId": "alice"}, as_user("alice")),
            await stranger.post("/book", {"eventId": event}, as_user("carol")),
            await stranger.http.get(f"/events/{event}/users/alice", headers=as_user("alice")),
        ):
            assert_unauthorized(answer)
        admin = as_user("boss", ADMIN_ROLE)
        refused = await stranger.post("/initialize", {"eventId": new_event(), "totalTickets": 1},
                                      admin)  # fmt: skip
        assert_unauthorized(refused)
        assert await gateway.seen(event, ("alice", "bob")) == before

        # The admin token is a credential of its own, from anywhere.
        made = await stranger.post("/initialize", {"eventId": new_event(), "totalTickets": 1},
                                   ADMIN)  # fmt: skip
        assert made.status_code == 201
        # From a gateway in the CIDR, the user stands.
        async with opened(mode, client=("10.0.0.7", 999)) as other_gateway:
            mine = await other_gateway.http.get(f"/events/{event}/users/bob",
                                                headers=as_user("bob"))  # fmt: skip
            assert (mine.status_code, mine.json()["position"]) == (200, 1)


async def test_a_trusted_proxy_that_is_not_a_gateway_cannot_assert_a_user(
    opened: Opened, settings: Settings
) -> None:
    """X-Forwarded-For naming a gateway does not make the proxy one: the gateway is judged by
    the connection's own peer, before the proxy headers are read."""
    mode = gateway_mode(settings, "10.0.0.5", trusted_proxies=networks("127.0.0.1"))
    async with opened(mode) as proxy, opened(mode, client=("10.0.0.5", 4321)) as gateway:
        event = await gateway.alice_booked_bob_waiting(as_user("alice"), as_user("bob"))
        before = await gateway.seen(event, ("alice", "bob"))
        through = {**as_user("alice"), "X-Forwarded-For": "10.0.0.5"}
        assert_unauthorized(await proxy.post("/cancel", {"eventId": event}, through))
        admin = {**as_user("boss", ADMIN_ROLE), "X-Forwarded-For": "10.0.0.5"}
        opening = await proxy.post("/initialize", {"eventId": new_event(), "totalTickets": 1},
                                   admin)  # fmt: skip
        assert_unauthorized(opening)
        assert await gateway.seen(event, ("alice", "bob")) == before
        # The gateway itself, whatever it forwards, names the user.
        forwarded = {**as_user("alice"), "X-Forwarded-For": "203.0.113.9"}
        cancelled = await gateway.post("/cancel", {"eventId": event}, forwarded)
        assert (cancelled.status_code, cancelled.json()["promoted"]) == (200, True)


async def test_a_gateway_names_one_user_of_the_id_alphabet(
    opened: Opened, settings: Settings
) -> None:
    async with opened(gateway_mode(settings)) as app:
        event = await app.alice_booked_bob_waiting(as_user("alice"), as_user("bob"))
        before = await app.seen(event, ("alice", "bob"))
        twice = [("X-User-ID", "mallory"), ("X-User-ID", "alice")]
        for headers in (twice, [("X-User-ID", "auth0|alice")], [("X-User-ID", "")]):
            answer = await app.http.post("/cancel", json={"eventId": event}, headers=headers)
            assert_problem(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"].startswith(CHALLENGE)
        as_alice = {"eventId": event, "userId": "alice"}
        assert_problem(await app.post("/cancel", as_alice, as_user("mallory")), 403, "forbidden")
        assert await app.seen(event, ("alice", "bob")) == before


async def test_the_gateways_roles_header_makes_an_admin(opened: Opened, settings: Settings) -> None:
    async with opened(gateway_mode(settings)) as app:
        event = new_event()
        body = {"eventId": event, "totalTickets": 1}
        no_role = await app.post("/initialize", body, as_user("boss", "reader writer"))
        assert_problem(no_role, 403, "forbidden")
        assert_unauthorized(await app.post("/initialize", body))
        made = await app.post("/initialize", body, as_user("boss", f"reader, {ADMIN_ROLE}"))
        assert made.status_code == 201
        assert (await app.post("/book", {"eventId": event}, as_user("alice"))).status_code == 201
        assert (await app.post("/book", {"eventId": event}, as_user("bob"))).status_code == 202

        admin = as_user("boss", ADMIN_ROLE)
        alices = await app.http.get(f"/events/{event}/users/alice", headers=admin)
        assert (alices.status_code, alices.json()["status"]) == (200, "booked")
        other = await app.http.get(f"/events/{event}/users/alice", headers=as_user("bob", "x"))
        assert_problem(other, 403, "forbidden")
        # The role shows whom a ticket went to (to an admin cancelling their own booking).
        cancelled = await app.post("/cancel", {"eventId": event}, as_user("alice"))
        assert cancelled.json()["promoted"] is True
        assert (await app.post("/book", {"eventId": event}, as_user("alice"))).status_code == 202
        told = await app.post("/cancel", {"eventId": event}, as_user("bob", ADMIN_ROLE))
        assert told.json()["promoted"] == {"userId": "alice", "bookingId": "bk-8"}


# -- settings refused at start ----------------------------------------------------------------

_AUTH_VARIABLES = [name for name in Settings.variables() if "AUTH" in name or "JWT" in name
                   or "JWKS" in name]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_SECRET": SECRET,
          "BOXOFFICE_JWT_AUDIENCE": AUDIENCE}, "needs BOXOFFICE_JWT_ISSUER and"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_SECRET": SECRET,
          "BOXOFFICE_JWT_ISSUER": ISSUER}, "needs BOXOFFICE_JWT_ISSUER and"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_ISSUER": ISSUER,
          "BOXOFFICE_JWT_AUDIENCE": AUDIENCE}, "needs BOXOFFICE_JWT_SECRET (HS256) or"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_ALGORITHMS": "HS256,RS256",
          "BOXOFFICE_JWT_JWKS_URL": "http://127.0.0.1:9/jwks.json",
          "BOXOFFICE_JWT_ISSUER": ISSUER, "BOXOFFICE_JWT_AUDIENCE": AUDIENCE},
         "accepts HS256 but BOXOFFICE_JWT_SECRET is not set"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_ALGORITHMS": "RS256",
          "BOXOFFICE_JWT_SECRET": SECRET, "BOXOFFICE_JWT_ISSUER": ISSUER,
          "BOXOFFICE_JWT_AUDIENCE": AUDIENCE}, "accepts RS256 but no JWKS URL or file is set"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_SECRET": "short-secret-of-31-bytes-......",
          "BOXOFFICE_JWT_ISSUER": ISSUER, "BOXOFFICE_JWT_AUDIENCE": AUDIENCE},
         "BOXOFFICE_JWT_SECRET is shorter than 32 bytes"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_JWKS_URL": "http://127.0.0.1:9/jwks.json",
          "BOXOFFICE_JWT_JWKS_FILE": "/etc/jwks.json", "BOXOFFICE_JWT_ISSUER": ISSUER,
          "BOXOFFICE_JWT_AUDIENCE": AUDIENCE}, "not both"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_JWKS_URL": "file:///etc/jwks.json",
          "BOXOFFICE_JWT_ISSUER": ISSUER, "BOXOFFICE_JWT_AUDIENCE": AUDIENCE},
         "is not an http(s) URL"),
        ({"BOXOFFICE_AUTH": "jwt", "BOXOFFICE_JWT_ALGORITHMS": "none",
          "BOXOFFICE_JWT_SECRET": SECRET, "BOXOFFICE_JWT_ISSUER": ISSUER,
          "BOXOFFICE_JWT_AUDIENCE": AUDIENCE}, "BOXOFFICE_JWT_ALGORITHMS='none': expected"),
        ({"BOXOFFICE_AUTH": "gateway"}, "needs BOXOFFICE_AUTH_GATEWAYS"),
        ({"BOXOFFICE_AUTH": "gateway", "BOXOFFICE_AUTH_GATEWAYS": "gateway.example"},
         "BOXOFFICE_AUTH_GATEWAYS='gateway.example': expected addresses"),
        ({"BOXOFFICE_AUTH": "oauth"}, "BOXOFFICE_AUTH='oauth': expected one of none, jwt"),
    ],
    ids=["no issuer", "no audience", "no keys", "HS256 without a secret",
         "RS256 without keys", "short secret", "JWKS URL and file", "JWKS not http",
         "alg none", "gateway without gateways", "gateway by name", "unknown mode"],
)  # fmt: skip
def test_serve_refuses_auth_settings_that_cannot_work(
    redis_url: str, database_url: str, env: dict[str, str], says: str
) -> None:
    unset: dict[str, str | None] = dict.fromkeys(_AUTH_VARIABLES)
    done = serve_refusing(REDIS_URL=redis_url, DATABASE_URL=database_url,
                          **{**unset, **env})  # fmt: skip
    line = one_line_refusal(done)
    assert line.startswith("boxoffice: "), line
    assert says in line, line
    secret = env.get("BOXOFFICE_JWT_SECRET")
    assert secret is None or secret not in done.stderr
    with pytest.raises(ConfigurationError):  # the same refusal, without a process
        Settings.from_env({**env, "REDIS_URL": redis_url})
