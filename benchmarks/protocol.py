"""What the bounded HTTP protocol (service/protocol.py) costs per request, alone: uvicorn's
httptools protocol and the bounded one take turns answering the same kept-alive POST through
a trivial ASGI app on uvloop, over a transport that writes nowhere, so that only the protocols
differ. Prints CPU microseconds per request (process time), the median of the rounds.

    python -m benchmarks protocol [--rounds 10] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from boxoffice.service.api.protocol import BoundedHttpToolsProtocol, Bounds
from boxoffice.service.bounds import MAX_HEADER_BYTES, MAX_HEADER_FIELDS

_BODY = b'{"userId":"u123456","eventId":"bench-ev"}'
REQUEST = (
    b"POST /book HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


class _Nowhere(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _per_request(kind: str, requests: int) -> float:
    config = Config(app=_app, lifespan="off", log_level="warning")
    config.load()
    protocol: HttpToolsProtocol
    if kind == "httptools":
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    else:
        bounds = Bounds(MAX_HEADER_BYTES, MAX_HEADER_FIELDS, 10.0, 10.0, 1000)
        protocol = BoundedHttpToolsProtocol(
            config=config, server_state=ServerState(), app_state={}, bounds=bounds
        )
    protocol.connection_made(_Nowhere())
    for _ in range(1000):  # warm up
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the app's task answers
        await asyncio.sleep(0)
    took = time.process_time() - started
    assert protocol.server_state.total_requests == requests + 1000, "requests went unanswered"
    protocol.connection_lost(None)
    return took / requests * 1e6


async def _compare(rounds: int, requests: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"httptools": [], "bounded": []}
    for _ in range(rounds):
        order = list(results)
        random.shuffle(order)
        for kind in order:
            results[kind].append(await _per_request(kind, requests))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks protocol", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    results = uvloop.run(_compare(args.rounds, args.requests))
    for kind, figures in results.items():
        print(
            f"{kind:10} {statistics.median(figures):6.2f} us CPU per request (median of "
            f"{len(figures)}; min {min(figures):.2f}, max {max(figures):.2f})"
        )
    return 0
