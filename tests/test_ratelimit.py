"""The default (`batched`) rate limiter: whom a request counts against, and how far the count
can go past the limit when several workers count it (`service.api.tally` states the bound).

Workers are `Tallies` on one Redis prefix, their settles driven by the test so every count is
exact; then the same in `boxoffice serve --workers 2`, settling on its own timer."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from limits import parse

from boxoffice.service.address import RedisAddress
from boxoffice.service.api.ratelimit import client_key
from boxoffice.service.api.tally import PER_CALL, Policy, Tallies
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import RATE_BUCKETS, Keyspace, rate_bucket
from boxoffice.service.store.transport import Arg, PipelinedRedis
from testkit.app import assert_problem, client_of, running_app
from testkit.support import ServedBoxoffice, stores_env, wait_for
from testkit.tokens import bearer, jwt_settings, token_for

pytestmark = pytest.mark.anyio

HOUR = 3600
WINDOW = 500_000
"""A window number of an hourly policy: the test clocks stand inside it."""
START = float(WINDOW * HOUR)
CLIENT = "a:198.51.100.7"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def runner(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    pipelined = PipelinedRedis(RedisAddress.parse(redis_url))
    await pipelined.connect()
    yield pipelined
    await pipelined.close()


def _hourly(limit: int) -> Policy:
    return Policy.of("writes", parse(f"{limit}/hour"))


# -- the client key ---------------------------------------------------------------------------


def test_ipv4_clients_count_by_address() -> None:
    assert client_key({"client": ("203.0.113.9", 5000)}) == "a:203.0.113.9"
    assert client_key({"client": ("203.0.113.10", 5000)}) == "a:203.0.113.10"


def test_ipv6_clients_count_by_their_64() -> None:
    one = client_key({"client": ("2001:db8:1:2::10", 5000)})
    same = client_key({"client": ("2001:db8:1:2:ffff:ffff:ffff:ffff", 5000)})
    other = client_key({"client": ("2001:db8:1:3::10", 5000)})
    assert one == same == "a:2001:db8:1:2::/64"
    assert other == "a:2001:db8:1:3::/64"
    # An IPv4 client reaching an IPv6 socket is still its IPv4 address.
    assert client_key({"client": ("::ffff:203.0.113.9", 5000)}) == "a:203.0.113.9"


def test_the_authenticated_user_wins_over_the_address() -> None:
    scope = {"client": ("203.0.113.9", 5000), "boxoffice.user": "ann"}
    assert client_key(scope) == "u:ann"
    assert client_key({**scope, "client": ("2001:db8::1", 1)}) == "u:ann"
    assert client_key({**scope, "boxoffice.user": ""}) == "a:203.0.113.9"


def test_a_client_that_is_no_address_counts_as_it_is() -> None:
    assert client_key({"client": ("not:an-address", 0)}) == "a:not:an-address"
    assert client_key({"client": ("some.proxy.name", 0)}) == "a:some.proxy.name"
    assert client_key({"client": None}) == "a:unknown"
    assert client_key({}) == "a:unknown"


# -- counting across workers ------------------------------------------------------------------


async def test_one_worker_admits_exactly_the_limit(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    policy = _hourly(20)
    worker = Tallies(keyspace, runner, [policy], 0.1, Clock(START + 10))
    answers = []
    for _ in range(6):  # settled now and then: the count is its own either way
        answers += [worker.admit(policy, CLIENT) for _ in range(7)]
        await worker.settle()
    assert answers == [True] * 20 + [False] * 22
    assert redis_client.get(keyspace.rate_count("writes", CLIENT, WINDOW)) == "20"


@pytest.mark.parametrize("per_settle", [1, 3, 8])
async def test_two_workers_admit_the_limit_and_at_most_the_bound_more(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis, per_settle: int
) -> None:
    """Requests alternate between two workers, each settling after `per_settle` of its own:
    the bound (W - 1) times what one worker admits between its settles is then
    `per_settle` (the settles are awaited, so nothing is admitted while one is in flight)."""
    limit = 20
    policy = _hourly(limit)
    clock = Clock(START + 10)
    workers = [Tallies(keyspace, runner, [policy], 0.1, clock) for _ in range(2)]
    answers = []
    for _ in range(12):
        for _ in range(per_settle):
            answers += [worker.admit(policy, CLIENT) for worker in workers]
        for worker in workers:
            await worker.settle()
    admitted = answers.count(True)
    assert answers[:limit] == [True] * limit  # never refused below the limit
    assert limit <= admitted <= limit + (len(workers) - 1) * per_settle
    assert None not in answers
    assert answers[-2 * per_settle :] == [False] * 2 * per_settle
    # Everything admitted reached Redis, once.
    assert redis_client.get(keyspace.rate_count("writes", CLIENT, WINDOW)) == str(admitted)


async def test_without_settling_each_worker_admits_up_to_the_limit_alone(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    """The other end of the bound: workers that never hear from each other (a settle interval
    longer than the burst) admit at most W·L, one L each; one settle ends it."""
    policy = _hourly(5)
    clock = Clock(START + 10)
    workers = [Tallies(keyspace, runner, [policy], 0.1, clock) for _ in range(2)]
    answers = [worker.admit(policy, CLIENT) for _ in range(8) for worker in workers]
    assert answers.count(True) == 10
    for worker in workers:
        await worker.settle()
    assert [worker.admit(policy, CLIENT) for worker in workers] == [False, False]
    assert redis_client.get(keyspace.rate_count("writes", CLIENT, WINDOW)) == "10"


async def test_the_previous_window_weighs_in_as_it_slides_out(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    policy = _hourly(20)
    clock = Clock(START + 3000)
    worker = Tallies(keyspace, runner, [policy], 0.1, clock)
    assert [worker.admit(policy, CLIENT) for _ in range(20)] == [True] * 20
    # A quarter into the next window, unsettled: the previous 20 still weigh 15.
    clock.now = START + HOUR + 900
    assert [worker.admit(policy, CLIENT) for _ in range(8)] == [True] * 5 + [False] * 3
    # One more fits once the previous window weighs 14 or less, 30% in: 180 s from now.
    assert worker.retry_after(policy, CLIENT) == 180
    await worker.settle()
    # The old window's admissions went to its own counter, before the new one read it.
    assert redis_client.get(keyspace.rate_count("writes", CLIENT, WINDOW)) == "20"
    assert redis_client.get(keyspace.rate_count("writes", CLIENT, WINDOW + 1)) == "5"
    assert worker.admit(policy, CLIENT) is False
    clock.now = START + HOUR + 1080
    assert worker.admit(policy, CLIENT) is True
    # A fresh worker learns both windows from Redis at its first settle.
    fresh = Tallies(keyspace, runner, [policy], 0.1, clock)
    assert fresh.admit(policy, CLIENT) is True
    await fresh.settle()
    assert fresh.admit(policy, CLIENT) is False


# -- a settle's calls ---------------------------------------------------------------------------


class CountingRunner:
    """The real runner, its script calls counted (each call's clients: keys / 2)."""

    def __init__(self, runner: PipelinedRedis) -> None:
        self._runner = runner
        self.calls: list[int] = []

    def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> Awaitable[Any]:
        self.calls.append(len(keys) // 2)
        return self._runner.evalsha(sha, keys, args, read_only)

    def send(self, *args: Arg) -> Awaitable[Any]:
        return self._runner.send(*args)


async def test_a_settle_makes_a_call_per_bucket_whatever_the_number_of_clients(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    """A public on-sale: 1,000 clients admitted once each (twice, for one in ten), settled in
    at most RATE_BUCKETS calls, each client's count in Redis exactly."""
    policy = _hourly(5)
    counting = CountingRunner(runner)
    worker = Tallies(keyspace, counting, [policy], 0.1, Clock(START + 10))
    clients = [f"u:fan-{n}" for n in range(1000)]
    sent = {client: 1 + (n % 10 == 0) for n, client in enumerate(clients)}
    for client, times in sent.items():
        assert [worker.admit(policy, client) for _ in range(times)] == [True] * times
    await worker.settle()
    assert len(counting.calls) <= RATE_BUCKETS
    assert sum(counting.calls) == len(clients)
    for client, times in sent.items():
        assert redis_client.get(keyspace.rate_count("writes", client, WINDOW)) == str(times)
    # What Redis answered is each client's own total: another worker's admissions show.
    other = Tallies(keyspace, runner, [policy], 0.1, Clock(START + 10))
    assert [other.admit(policy, client) for client in clients[:3]] == [True] * 3
    await other.settle()
    calls = len(counting.calls)
    assert [worker.admit(policy, client) for client in clients[:3]] == [True] * 3
    await worker.settle()
    assert len(counting.calls) - calls == len({rate_bucket("writes", c) for c in clients[:3]})
    assert [worker.admit(policy, clients[0]) for _ in range(3)] == [True, False, False]
    assert [worker.admit(policy, clients[1]) for _ in range(4)] == [True, True, False, False]


async def test_a_bucket_of_more_clients_than_a_call_holds_is_split(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    policy = _hourly(5)
    counting = CountingRunner(runner)
    worker = Tallies(keyspace, counting, [policy], 0.1, Clock(START + 10))
    names = (f"u:{n}" for n in itertools.count())
    clients = list(itertools.islice((c for c in names if rate_bucket("writes", c) == 3), 700))
    assert all(worker.admit(policy, client) for client in clients)
    await worker.settle()
    assert counting.calls == [PER_CALL, 700 - PER_CALL]
    assert all(
        redis_client.get(keyspace.rate_count("writes", client, WINDOW)) == "1" for client in clients
    )


async def test_a_failed_call_fails_its_whole_bucket_and_no_other(
    runner: PipelinedRedis, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    """A counter Redis cannot add to (here, of the wrong type) fails its call: every client of
    the bucket passes (fail open) until a settle succeeds, and none of them is counted (the
    script checks every key before its first write); other buckets settle as ever."""
    policy = _hourly(5)
    worker = Tallies(keyspace, runner, [policy], 0.1, Clock(START + 10))
    names = (f"u:{n}" for n in itertools.count())
    broken, neighbour = itertools.islice((c for c in names if rate_bucket("writes", c) == 5), 2)
    elsewhere = next(c for c in names if rate_bucket("writes", c) != 5)
    redis_client.hset(keyspace.rate_count("writes", broken, WINDOW), "not", "a count")
    for client in (broken, neighbour, elsewhere):
        assert worker.admit(policy, client) is True
    await worker.settle()
    assert [worker.admit(policy, c) for c in (broken, neighbour, elsewhere)] == [None, None, True]
    assert redis_client.exists(keyspace.rate_count("writes", neighbour, WINDOW)) == 0
    assert redis_client.get(keyspace.rate_count("writes", elsewhere, WINDOW)) == "1"
    redis_client.delete(keyspace.rate_count("writes", broken, WINDOW))
    await worker.settle()  # (what passed meanwhile is counted, the failed call's is not)
    assert [worker.admit(policy, c) for c in (broken, neighbour, elsewhere)] == [True] * 3
    assert redis_client.get(keyspace.rate_count("writes", neighbour, WINDOW)) == "1"


# -- through the app ---------------------------------------------------------------------------


async def test_ipv6_clients_of_one_64_share_a_budget(settings: Settings) -> None:
    limited = Settings(
        redis_url=settings.redis_url, key_prefix=settings.key_prefix, rate_limit="2/hour"
    )
    peers = {
        "one": "2001:db8:1:2::10",
        "neighbour": "2001:db8:1:2:8000::1",
        "elsewhere": "2001:db8:1:3::10",
    }
    async with running_app(limited) as app, AsyncExitStack() as stack:
        http = {
            name: await stack.enter_async_context(
                client_of(app, peer=(address, 5000), raise_app_exceptions=False)
            )
            for name, address in peers.items()
        }
        order = ["one", "neighbour", "one", "neighbour", "elsewhere"]
        answers = [await http[name].get("/healthz") for name in order]
        assert [a.status_code for a in answers] == [200, 200, 429, 429, 200]
        refused = answers[2]
        problem = assert_problem(refused, 429, "rate-limited")
        assert "reads limit of 2 per 3600 s" in problem["detail"]
        assert refused.headers["ratelimit-policy"] == '"reads";q=2;w=3600'
        retry = int(refused.headers["retry-after"])
        # Two counted this window: one more fits halfway into the next one.
        assert 1800 <= retry <= 5400
        assert refused.headers["ratelimit"] == f'"reads";r=0;t={retry}'


async def test_authenticated_users_count_by_user_wherever_they_come_from(
    settings: Settings,
) -> None:
    """With users authenticated, the budget is the user's: two users behind one address each
    get their own, one user moving between addresses keeps one. Refused requests book nothing."""
    limited = jwt_settings(settings, write_rate_limit="2/hour", admin_token="a" * 40)
    peers = {"office": "10.0.0.7", "phone": "10.9.9.9"}
    async with running_app(limited) as app, AsyncExitStack() as stack:
        http = {
            name: await stack.enter_async_context(
                client_of(app, peer=(address, 5000), raise_app_exceptions=False)
            )
            for name, address in peers.items()
        }
        admin = {"Authorization": "Bearer " + "a" * 40}
        opened = await http["office"].post(
            "/initialize", json={"eventId": "rl", "totalTickets": 10}, headers=admin
        )
        assert opened.status_code == 201  # (the admin's own budget: admin-token is no user)
        alice, bob = bearer(token_for("alice")), bearer(token_for("bob"))
        sent = [("office", alice), ("office", bob), ("phone", alice), ("office", bob),
                ("office", alice), ("phone", bob)]  # fmt: skip
        answers = [
            await http[peer].post("/book", json={"eventId": "rl"}, headers=who)
            for peer, who in sent
        ]
        assert [a.status_code for a in answers] == [201, 201, 200, 200, 429, 429]
        assert_problem(answers[4], 429, "rate-limited")
        status = (await http["office"].get("/status/rl")).json()
        assert status["bookedCount"] == 2


def test_two_served_workers_stay_within_the_bound(
    redis_url: str, database_url: str, keyspace: Keyspace, redis_client: redis.Redis,
    tmp_path: Path,
) -> None:  # fmt: skip
    """`serve --workers 2` on the default strategy, settling on its own timer. Each request is
    sent once the one before it is counted in Redis, so a worker admits at most one request
    the other has not heard of: W - 1 = 1 over the limit at most."""
    limit = 20
    env = stores_env(
        redis_url,
        database_url,
        keyspace.prefix,
        BOXOFFICE_WRITER="false",
        BOXOFFICE_WRITE_RATE_LIMIT=f"{limit}/day",
        BOXOFFICE_RATE_LIMIT_SETTLE_MS="20",
    )
    pattern = keyspace.rate_count("writes", "a:127.0.0.1", 0).removesuffix("0") + "*"

    def counted() -> int:
        return sum(int(redis_client.get(key) or 0) for key in redis_client.scan_iter(pattern))

    server = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    try:
        answers = []
        for n in range(limit + 6):  # a new connection each time: both workers take some
            answer = httpx.post(
                f"{server.url}/book",
                json={"userId": f"u{n}", "eventId": "nope"},
                headers={"Connection": "close"},
            )
            answers.append(answer)
            admitted = sum(a.status_code == 404 for a in answers)
            wait_for(lambda: counted() == admitted, 10, f"{admitted} counted in Redis")  # noqa: B023
        codes = [a.status_code for a in answers]
        assert set(codes) == {404, 429}
        assert codes[:limit] == [404] * limit
        assert limit <= codes.count(404) <= limit + 1
        assert answers[0].headers["ratelimit-policy"] == f'"writes";q={limit};w=86400'
        # (the one over the limit, if any, may come last: the worker that admits it had not
        # served the client since before the limit was reached)
        refused = next(a for a in answers if a.status_code == 429)
        assert_problem(refused, 429, "rate-limited")
        assert re.fullmatch(r'"writes";r=0;t=\d+', refused.headers["ratelimit"])
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        server.stop()
