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
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

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
        return wrk_tokens(server.url, args.duration, args.connections, k, "run", tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks auth", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--ks", default="20,1", help="requests per token, comma-separated")
    parser.add_argument(
        "--rate-guess",
        type=int,
        default=8000,
        help="requests/s to mint tokens for (k=1 needs duration x rate tokens)",
    )
    parser.add_argument(
        "--extra", action="append", default=[], help="NAME=VALUE settings for every run"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "auth.json")
    args = parser.parse_args(argv)
    args.admin_token = "bench-admin-" + uuid.uuid4().hex
    need_wrk()
    extra = dict(item.split("=", 1) for item in args.extra)
    ks = [int(k) for k in args.ks.split(",")]
    algorithms = [a for a in args.algorithms.split(",") if a]
    rows: list[dict[str, Any]] = []
    home = Path(tempfile.mkdtemp(prefix="boxoffice-auth-bench-"))
    admin = {"BOXOFFICE_ADMIN_TOKEN": args.admin_token, "BOXOFFICE_AUTH": "none", **extra}
    with bench_stores() as stores:
        for k in ks:
            result = _one(stores, admin, k, None, None, args)
            rows.append({"auth": "off", "algorithm": "-", "k": k, **result})
            print(f"  off          k={k:<3} {result['rps']:>8.0f} req/s", flush=True)
        for algorithm in algorithms:
            settings: dict[str, str | None] = {
                **admin,
                "BOXOFFICE_AUTH": "jwt",
                "BOXOFFICE_JWT_ISSUER": ISSUER,
                "BOXOFFICE_JWT_AUDIENCE": AUDIENCE,
                "BOXOFFICE_JWT_ALGORITHMS": algorithm,
            }
            pem = None
            if algorithm.startswith("HS"):
                settings["BOXOFFICE_JWT_SECRET"] = SECRET
            else:
                key = _private_key(algorithm)
                pem = _pem(key)
                jwks = home / f"{algorithm}.jwks.json"
                jwks.write_text(json.dumps(_jwks(key, algorithm)))
                settings["BOXOFFICE_JWT_JWKS_FILE"] = str(jwks)
            warm = home / f"{algorithm}.warm.txt"
            mint(algorithm, pem, "warm", 2000, warm)
            for k in ks:
                count = (args.rate_guess * (args.duration + 1)) // k + 4000
                tokens = home / f"{algorithm}.{k}.txt"
                started = time.perf_counter()
                mint(algorithm, pem, f"run{k}", count, tokens)
                minted = time.perf_counter() - started
                result = _one(stores, settings, k, tokens, warm, args)
                rows.append({"auth": "jwt", "algorithm": algorithm, "k": k, **result})
                print(
                    f"  jwt {algorithm:<8} k={k:<3} {result['rps']:>8.0f} req/s "
                    f"(minted {count} tokens in {minted:.0f} s; wraps {result['wraps']})",
                    flush=True,
                )
    print(report(rows, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"POST /book, 2 workers, wrk -t2 -c{args.connections} -d{args.duration}s, every user new, "
        f"k requests per user (and per token), {time.strftime('%Y-%m-%d')}",
        "",
        "| auth | algorithm | k | req/s | vs off (same k) | added per request (2 workers' CPU) "
        "| p50 ms | p99 ms | refused | token reuse |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        off = next(r for r in rows if r["auth"] == "off" and r["k"] == row["k"])
        added = (1 / row["rps"] - 1 / off["rps"]) * 2 * 1e6
        lines.append(
            f"| {row['auth']} | {row['algorithm']} | {row['k']} | {row['rps']:,.0f} | "
            f"{row['rps'] / off['rps']:.0%} | {added:+.0f} µs | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['refused']} | {'yes' if row['wraps'] else 'no'} |"
        )
    return "\n".join(lines)
