"""What authentication costs `/book`: auth off against `BOXOFFICE_AUTH=jwt`, same run.

    python -m benchmarks auth [--duration 6] [--connections 64] [--algorithms HS256,ES256]

Every booking is a new user, each user with a token of their own, sending k requests with it
(the first books, the rest are retries answered from Redis like any other): k = 20 is a client
that keeps its token for a while (the per-worker token cache answers all but the first), k = 1
has every token seen once (every request pays a signature check). The same request pattern runs
with auth off (the body names the user) as the reference. Per algorithm: HS256 (shared secret),
RS256 (2048-bit RSA), ES256 (P-256), EdDSA (Ed25519), the public keys from a JWKS file.

Tokens are minted before each run, enough for it (wrk reports a reuse as "Token wraps", and the
run is then marked). Uses REDIS_URL / DATABASE_URL when set, else embedded servers; the ledger
writer is off, so only authentication differs between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import cpu
from benchmarks.book import HERE, _ms
from benchmarks.stores import BenchStores, bench_stores, need_wrk, served

TOKENS_LUA = HERE / "wrk" / "tokens.lua"
ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
ISSUER, AUDIENCE = "https://issuer.bench", "boxoffice-bench"
SECRET = "bench-secret-" + "x" * 40
EVENT = "bench"


def _private_key(algorithm: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def _mint(job: tuple[str, bytes | None, str, int, int]) -> list[str]:
    """Tokens for users <run>-<i>, i in [start, stop) (in a worker process)."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    algorithm, pem, run, start, stop = job
    key: Any = SECRET
    if pem is not None:
        key = serialization.load_pem_private_key(pem, password=None)
    expires = int(time.time()) + 3600
    headers = {"kid": "bench"} if pem is not None else None
    return [
        jwt.encode(
            {"sub": f"{run}-{i}", "iss": ISSUER, "aud": AUDIENCE, "exp": expires},
            key,
            algorithm=algorithm,
            headers=headers,
        )
        for i in range(start, stop)
    ]


def mint(algorithm: str, pem: bytes | None, run: str, count: int, path: Path) -> None:
    step = 2000
    jobs = [(algorithm, pem, run, i, min(i + step, count)) for i in range(0, count, step)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool, path.open("w") as out:
        for tokens in pool.map(_mint, jobs):
            out.write("\n".join(tokens) + "\n")


def _jwks(key: Any, algorithm: str) -> dict[str, Any]:
    import jwt

    algo = jwt.get_algorithm_by_name(algorithm)
    jwk = json.loads(algo.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "bench", "alg": algorithm, "use": "sig"}]}


def wrk_tokens(
    url: str, duration: int, connections: int, k: int, run: str, tokens: Path | None
) -> dict[str, float]:
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
        "-s", str(TOKENS_LUA), url, "--", EVENT, str(k), run,
    ]  # fmt: skip
    if tokens is not None:
        command.append(str(tokens))
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def found(pattern: str) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
        return match.group(1)

    return {
        "rps": float(found(r"Requests/sec:\s+([\d.]+)")),
        "p50_ms": _ms(found(r"^\s+50%\s+(\S+)")),
        "p99_ms": _ms(found(r"^\s+99%\s+(\S+)")),
        "refused": int(found(r"Refused: (\d+)")),
        "wraps": int(found(r"Token wraps: (\d+)")),
    }


def _one(
    stores: BenchStores,
    settings: dict[str, str | None],
    k: int,
    tokens: Path | None,
    warm: Path | None,
    args: argparse.Namespace,
) -> dict[str, float]:
    env = {"BOXOFFICE_WRITER": "false", "BOXOFFICE_MAX_LEDGER_LAG": "0", **settings}
    with served(stores, 2, env) as (server, _):
        headers = {"Authorization": f"Bearer {args.admin_token}"}
        httpx.post(
            f"{server.url}/initialize",
            json={"eventId": EVENT, "totalTickets": 10_000_000},
            headers=headers,
        ).raise_for_status()
        wrk_tokens(server.url, 2, args.connections, k, "warm", warm)
        checked = _token_checks(server.url)
        meter = cpu.Meter()
        meter.start()
        result = wrk_tokens(server.url, args.duration, args.connections, k, "run", tokens)
        spent = cpu.per_request(meter.stop(), result["rps"] * args.duration)
        checks = _token_checks(server.url) - checked
        return {
            **result,
            "checks_per_token": checks / (result["rps"] * args.duration / k),
            "api_us": spent["api"],
            "redis_us": spent["redis"],
            "load_us": spent["load"],
        }


def _token_checks(url: str) -> float:
    """How many tokens the service's workers have checked (cache misses), from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^boxoffice_token_checks_total\{outcome="verified"\} (\S+)$', text, re.M)
    return sum(float(value) for value in found)


@dataclass(frozen=True)
class Variant:
    auth: str
    """off, or a JWT algorithm."""
    k: int
    limiter: bool = False

    @property
    def label(self) -> str:
        return f"{self.auth} k={self.k}" + (" +limiter" if self.limiter else "")


def variants(algorithms: list[str], ks: list[int], limiter: bool) -> list[Variant]:
    chosen = [Variant("off", k) for k in ks]
    if limiter:
        # One client address (auth off), and every user its own budget (auth on).
        chosen += [Variant("off", ks[0], True)]
        chosen += [Variant(algorithms[0], k, True) for k in ks] if algorithms else []
    chosen += [Variant(algorithm, k) for algorithm in algorithms for k in ks]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks auth", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="medians over rounds")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--ks", default="20,1", help="requests per token, comma-separated")
    parser.add_argument(
        "--no-limiter", action="store_true", help="leave out the rate-limited variants"
    )
    parser.add_argument(
        "--rate-guess",
        type=int,
        default=16000,
        help="requests/s to mint tokens for (k=1 needs duration x rate tokens)",
    )
    parser.add_argument(
        "--setting", action="append", default=[], help="NAME=VALUE for every run's service"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "auth.json")
    args = parser.parse_args(argv)
    args.admin_token = "bench-admin-" + uuid.uuid4().hex
    need_wrk()
    ks = [int(k) for k in args.ks.split(",")]
    algorithms = [a for a in args.algorithms.split(",") if a]
    chosen = variants(algorithms, ks, not args.no_limiter)
    home = Path(tempfile.mkdtemp(prefix="boxoffice-auth-bench-"))
    keys: dict[str, tuple[dict[str, str | None], bytes | None]] = {}
    for algorithm in algorithms:
        keys[algorithm] = _keys(algorithm, home)
    samples: dict[Variant, list[dict[str, float]]] = {variant: [] for variant in chosen}
    with bench_stores() as stores:
        for round_ in range(args.rounds):
            order = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
            for variant in order:
                settings: dict[str, str | None] = {
                    "BOXOFFICE_ADMIN_TOKEN": args.admin_token,
                    "BOXOFFICE_AUTH": "none",
                    **dict(item.split("=", 1) for item in args.setting),
                }
                if variant.limiter:
                    settings["BOXOFFICE_WRITE_RATE_LIMIT"] = LIMIT
                tokens = warm = None
                if variant.auth != "off":
                    more, pem = keys[variant.auth]
                    settings.update(more)
                    warm = home / f"{variant.auth}.warm.txt"
                    if not warm.exists():
                        mint(variant.auth, pem, "warm", 2000, warm)
                    count = (args.rate_guess * (args.duration + 1)) // variant.k + 4000
                    run = f"r{round_}k{variant.k}{'l' if variant.limiter else ''}"
                    tokens = home / f"{variant.auth}.{run}.txt"
                    mint(variant.auth, pem, run, count, tokens)
                result = _one(stores, settings, variant.k, tokens, warm, args)
                if tokens is not None:
                    tokens.unlink()
                samples[variant].append(result)
                print(
                    f"  {variant.label:<24} {result['rps']:>8.0f} req/s  api "
                    f"{result['api_us']:>6.1f} us/req  wraps {result['wraps']:.0f}",
                    flush=True,
                )
    rows = [_median(variant, runs) for variant, runs in samples.items()]
    print(report(rows, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))
    return 0


LIMIT = "1000000/second"


def _keys(algorithm: str, home: Path) -> tuple[dict[str, str | None], bytes | None]:
    """The settings that verify `algorithm`'s tokens, and the PEM of the key that signs them."""
    settings: dict[str, str | None] = {
        "BOXOFFICE_AUTH": "jwt",
        "BOXOFFICE_JWT_ISSUER": ISSUER,
        "BOXOFFICE_JWT_AUDIENCE": AUDIENCE,
        "BOXOFFICE_JWT_ALGORITHMS": algorithm,
    }
    if algorithm.startswith("HS"):
        settings["BOXOFFICE_JWT_SECRET"] = SECRET
        return settings, None
    key = _private_key(algorithm)
    jwks = home / f"{algorithm}.jwks.json"
    jwks.write_text(json.dumps(_jwks(key, algorithm)))
    settings["BOXOFFICE_JWT_JWKS_FILE"] = str(jwks)
    return settings, _pem(key)


def _median(variant: Variant, runs: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"auth": variant.auth, "k": variant.k, "limiter": variant.limiter}
    for field in ("rps", "p50_ms", "p99_ms", "api_us", "redis_us", "load_us", "checks_per_token"):
        row[field] = statistics.median(run[field] for run in runs)
    row["refused"] = sum(run["refused"] for run in runs)
    row["wraps"] = sum(run["wraps"] for run in runs)
    row["rounds"] = len(runs)
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"POST /book, 2 workers, wrk -t2 -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} round(s) (medians), every user new, k requests per user (and per token); "
        f"limiter: batched at {LIMIT} (never reached), {time.strftime('%Y-%m-%d')}",
        "",
        "| auth | k | limiter | req/s | vs off (same k) | API CPU us/req | vs off | Redis us/req "
        "| wrk us/req | checks per token | p50 ms | p99 ms | refused | token reuse |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        off = next(
            r for r in rows if r["auth"] == "off" and r["k"] == row["k"] and not r["limiter"]
        )
        lines.append(
            f"| {row['auth']} | {row['k']} | {'batched' if row['limiter'] else '-'} | "
            f"{row['rps']:,.0f} | {row['rps'] / off['rps']:.0%} | {row['api_us']:.1f} | "
            f"{row['api_us'] - off['api_us']:+.1f} | {row['redis_us']:.1f} | "
            f"{row['load_us']:.1f} | "
            f"{row['checks_per_token']:.2f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['refused']} | "
            f"{'yes' if row['wraps'] else 'no'} |"
        )
    return "\n".join(lines)
