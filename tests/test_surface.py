"""The operator surface: rate limits, request ids, metrics, logs, CORS, settings, compose."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from boxoffice.service.logs import JsonFormatter
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.support import ServedBoxoffice, child_env, eventually, stores_env, wait_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent


def with_limits(settings: Settings, **changes: object) -> Settings:
    values = {
        "redis_url": settings.redis_url,
        "key_prefix": settings.key_prefix,
        **changes,
    }
    return Settings(**values)  # type: ignore[arg-type]


# -- rate limits ----------------------------------------------------------------------------


def test_limits_hold_across_two_workers_with_the_draft_headers(
    redis_url: str, database_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    # An exact strategy: exact counts across workers are its promise. The default (batched)
    # strategy's bound across workers is tested in tests/test_ratelimit.py.
    env = stores_env(
        redis_url,
        database_url,
        keyspace.prefix,
        BOXOFFICE_WRITER="false",
        BOXOFFICE_RATE_LIMIT="30/minute",
        BOXOFFICE_WRITE_RATE_LIMIT="20/minute",
        BOXOFFICE_RATE_LIMIT_STRATEGY="sliding-window-counter",
    )
    server = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    try:
        answers = []
        for n in range(25):  # a new connection each time: both workers take some
            answers.append(
                httpx.post(
                    f"{server.url}/book",
                    json={"userId": f"u{n}", "eventId": "nope"},
                    headers={"Connection": "close"},
                )
            )
        codes = [a.status_code for a in answers]
        assert codes == [404] * 20 + [429] * 5
        assert answers[0].headers["ratelimit-policy"] == '"writes";q=20;w=60'
        refused = answers[-1]
        problem = assert_problem(refused, 429, "rate-limited")
        assert "writes limit of 20 per 60 s" in problem["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert re.fullmatch(r'"writes";r=0;t=\d+', refused.headers["ratelimit"])
        assert refused.headers["x-request-id"]
        # Reads count against their own budget.
        read = httpx.get(f"{server.url}/status/nope")
        assert read.status_code == 404
        assert read.headers["ratelimit-policy"] == '"reads";q=30;w=60'
        # Both workers' counts add up in one scrape (each worker folds its tallies in once a
        # second, so the other worker's may take that long to show).
        assert (
            _metric(
                httpx.get(f"{server.url}/metrics"), "boxoffice_rate_limited_total", policy="writes"
            )
            == 5
        )
        wait_for(
            lambda: (
                _metric(
                    httpx.get(f"{server.url}/metrics"),
                    "boxoffice_http_requests_total",
                    route="/book",
                    status="404",
                )
                == 20
            ),
            5,
            "both workers' requests in one scrape",
        )
    finally:
        server.stop()


async def test_forwarded_client_counts_only_behind_a_trusted_proxy(settings: Settings) -> None:
    def forwarded(n: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"203.0.113.{n}"}

    trusting = with_limits(settings, rate_limit="2/minute", trusted_proxies=_networks("127.0.0.1"))
    async with app_client(trusting, raise_app_exceptions=False) as http:
        for n in (1, 2, 3):
            answers = [await http.get("/healthz", headers=forwarded(n)) for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429], n

    distrusting = with_limits(settings, key_prefix=settings.key_prefix + "x", rate_limit="2/minute")
    async with app_client(distrusting, raise_app_exceptions=False) as http:
        answers = [await http.get("/healthz", headers=forwarded(n)) for n in (4, 5, 6)]
        assert [a.status_code for a in answers] == [200, 200, 429]


def _networks(*text: str) -> tuple[object, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(t) for t in text)


@pytest.mark.parametrize("strategy", ["batched", "sliding-window-counter"])
async def test_limiter_failure_lets_requests_through(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace, strategy: str
) -> None:
    def errors() -> float:
        return REGISTRY.get_sample_value("boxoffice_rate_limiter_errors_total") or 0.0

    limited = with_limits(settings, rate_limit="2/minute", rate_limit_strategy=strategy)
    async with app_client(limited, raise_app_exceptions=False) as http:
        assert (await http.get("/healthz")).status_code == 200

        def counted() -> list[str]:
            return list(redis_client.scan_iter(match=f"{keyspace.prefix}:rl*"))

        # (the batched strategy counts in Redis at its next settle)
        await eventually(lambda: bool(counted()), 5, "the limiter's count in Redis")
        for key in counted():  # break the limiter's storage: every count now errors
            redis_client.delete(key)
            redis_client.hset(key, "broken", "1")
        before = errors()
        # The batched strategy admits one more on its own count (2/minute), refuses the next
        # until its settle fails, then lets them pass; the exact one errs at once.
        deadline = time.monotonic() + 5
        while errors() == before:
            assert time.monotonic() < deadline, "no request was let through"
            assert (await http.get("/healthz")).status_code in (200, 429)
            await asyncio.sleep(0.01)
        before = errors()
        assert [(await http.get("/healthz")).status_code for _ in range(3)] == [200] * 3
        assert errors() - before == 3


# -- request ids, metrics, logs --------------------------------------------------------------


async def test_every_answer_carries_a_request_id(client: httpx.AsyncClient) -> None:
    mine = await client.get("/healthz", headers={"X-Request-ID": "trace-42.a"})
    assert mine.headers["x-request-id"] == "trace-42.a"
    for bad in (b"x" * 65, b"spaces are bad", "ünï".encode()):
        replaced = await client.get("/healthz", headers=[(b"X-Request-ID", bad)])
        assert re.fullmatch(r"[0-9a-f]{16,}", replaced.headers["x-request-id"])
    for response in (
        await client.get("/nowhere"),
        await client.get("/book"),
        await client.post("/book", content=b"{"),
    ):
        assert response.status_code >= 400
        assert re.fullmatch(r"[0-9a-f]{16,}", response.headers["x-request-id"])
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


def _metric(response: httpx.Response, name: str, **labels: str) -> float:
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_metrics_count_requests_and_booking_changes(
    client: httpx.AsyncClient, event_id: str
) -> None:
    before = await client.get("/metrics")
    await client.post("/initialize", json={"eventId": event_id, "totalTickets": 1})
    for user in ("a", "b", "c"):
        await client.post("/book", json={"userId": user, "eventId": event_id})
    await client.post("/cancel", json={"userId": "a", "eventId": event_id})
    await client.get(f"/status/{event_id}")
    after = await client.get("/metrics")

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    total = "boxoffice_http_requests_total"
    assert grew(total, route="/book", method="POST", status="201") == 1
    assert grew(total, route="/book", method="POST", status="202") == 2
    assert grew(total, route="/status/{eventId}", method="GET", status="200") == 1
    changes = "boxoffice_booking_changes_total"
    assert grew(changes, change="booked") == 1
    assert grew(changes, change="waitlisted") == 2
    assert grew(changes, change="cancelled") == 1
    assert grew(changes, change="promoted") == 1
    latency = "boxoffice_http_request_duration_seconds_count"
    assert grew(latency, route="/book") == 3
    assert "boxoffice_ledger_lag_records" in after.text


async def test_access_log_lines_are_json_with_the_request_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    logged = with_limits(settings, access_log=True)
    with caplog.at_level(logging.INFO, logger="boxoffice.access"):
        async with app_client(logged, raise_app_exceptions=False) as http:
            await http.get("/healthz", headers={"X-Request-ID": "log-me"})
    record = next(r for r in caplog.records if r.name == "boxoffice.access")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /healthz 200"
    assert line["status"] == 200
    assert line["path"] == "/healthz"
    assert line["level"] == "info"
    assert line["durationMs"] >= 0


# -- CORS ---------------------------------------------------------------------------------


async def test_cors_is_off_unless_configured(client: httpx.AsyncClient, settings: Settings) -> None:
    origin = {"Origin": "https://tickets.example"}
    plain = await client.get("/healthz", headers=origin)
    assert "access-control-allow-origin" not in plain.headers

    allowed = with_limits(settings, cors_origins=("https://tickets.example",))
    async with app_client(allowed, raise_app_exceptions=False) as http:
        answer = await http.get("/healthz", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "https://tickets.example"
        other = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- settings, README, compose ------------------------------------------------------------


def test_env_file_fills_in_what_the_environment_does_not_set(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("BOXOFFICE_PORT=9123\nBOXOFFICE_WORKERS=3\nBOXOFFICE_ADMIN_TOKEN=s3cret\n")
    done = subprocess.run(
        [".venv/bin/boxoffice" if (ROOT / ".venv").exists() else "boxoffice", "config"],
        env=child_env(BOXOFFICE_ENV_FILE=str(env_file), BOXOFFICE_WORKERS="2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert shown["BOXOFFICE_PORT"] == "9123"
    assert shown["BOXOFFICE_WORKERS"] == "2", "the environment wins over the file"
    assert shown["BOXOFFICE_ADMIN_TOKEN"] == "****"
    assert "s3cret" not in done.stdout


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.variables() if f"`{name}`" not in readme]
    assert missing == []


def test_compose_file_is_complete_and_uses_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"valkey", "postgres", "migrate", "api", "writer"}
    cluster = set(services) - default
    assert cluster == {
        "valkey-node", "cluster-init", "migrate-cluster", "api-cluster", "writer-cluster", "lb"
    }  # fmt: skip
    assert all(services[name]["profiles"] == ["cluster"] for name in cluster)
    known = set(Settings.variables())
    for name in ("migrate", "api", "writer", "migrate-cluster", "api-cluster", "writer-cluster"):
        env = services[name]["environment"]
        assert set(env) <= known, set(env) - known
        assert {"REDIS_URL", "DATABASE_URL"} <= set(env)
    assert services["api"]["environment"]["BOXOFFICE_WRITER"] == "false"
    assert services["writer"]["command"] == ["boxoffice", "writer"]
    assert services["migrate"]["command"] == ["boxoffice", "migrate"]
    assert services["api"]["ports"] == [f"{Settings().port}:{Settings().port}"]
    for name in ("valkey", "postgres", "api"):
        assert "healthcheck" in services[name], name
    assert "--appendonly" in services["valkey"]["command"]
    # The cluster profile: 3 primaries + 3 replicas, APIs and writers scaled out behind `lb`.
    assert services["valkey-node"]["deploy"]["replicas"] == 6
    assert "--cluster-replicas 1" in services["cluster-init"]["command"][0]
    assert services["api-cluster"]["deploy"]["replicas"] >= 2
    assert services["writer-cluster"]["deploy"]["replicas"] >= 2
    assert services["api-cluster"]["environment"]["BOXOFFICE_REDIS_CLUSTER"] == "true"
    assert services["api-cluster"]["environment"]["BOXOFFICE_WRITER"] == "false"
    assert "api-cluster:8000" in services["lb"]["command"][0]
    assert set(compose["volumes"]) == {"valkey-data", "postgres-data"}
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        checked = subprocess.run(
            [docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
            env=child_env(BOXOFFICE_ADMIN_TOKEN="compose-check"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
