"""A real Valkey cluster on loopback, made of the embedded Valkey binary: N primaries, each
with R replicas, for trying cluster mode (`boxoffice serve --embedded-cluster`) and for the
tests that must run on a cluster (`tests/test_cluster*.py`, marker `cluster`).

Every node is an `EmbeddedValkey` in a directory of its own under the cluster's directory,
started with `--cluster-enabled yes`; all nodes share one generated password (`requirepass`
and `masterauth`, in each node's config file, never on a command line). The first start joins
them: `CLUSTER MEET` from the first node, `CLUSTER ADDSLOTSRANGE` splitting the 16,384 slots
into N equal ranges as `valkey-cli --cluster create` does, `CLUSTER REPLICATE` for the
replicas, then waits for `cluster_state:ok` on every node. A later start finds the membership
in each node's `nodes.conf` and only waits for the state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.embedded import EmbeddedValkey, new_secret, write_new

SLOTS = 16_384
_JOIN_TIMEOUT_S = 60.0


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots of each primary, first and last, as `valkey-cli --cluster create` splits them."""
    share = SLOTS / primaries
    return [
        (round(i * share), (round((i + 1) * share) if i < primaries - 1 else SLOTS) - 1)
        for i in range(primaries)
    ]


class ClusterNode(EmbeddedValkey):
    """One node: cluster mode on, its membership in `nodes.conf` beside its data, the cluster's
    shared password as both `requirepass` and `masterauth` (a replica logs in to its primary)."""

    def __init__(self, data_dir: Path, port: int, secret: str | None, node_timeout_ms: int) -> None:
        super().__init__(
            data_dir,
            port,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # One node lost must not stop the others' slots (see README, "Scaling").
                "--cluster-require-full-coverage", "no",
                # A replica's first sync starts at once (the default waits 5 s for others).
                "--repl-diskless-sync-delay", "0",
            ),
        )  # fmt: skip
        self.secret = secret
        """The cluster's password, given to every node after the first (None: generate one)."""

    def _create(self, home: int) -> None:
        secret = self.secret or new_secret()
        write_new(
            home,
            self.config,
            "# Written by boxoffice when it made this directory; read by valkey-server only.\n"
            f"requirepass {secret}\nmasterauth {secret}\n",
        )

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=5,
            decode_responses=True,
            **options,  # type: ignore[arg-type]
        )


class EmbeddedCluster:
    """`primaries` primaries with `replicas` replicas each, on ports `port`, `port`+1, ...
    (primaries first), their data in `data_dir`/node-<port>."""

    name = "Valkey cluster"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        primaries: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 2000,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ConfigurationError("a cluster needs at least one primary")
        self.data_dir = data_dir
        self.host = host
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        count = primaries * (1 + replicas)
        self.nodes: list[ClusterNode] = [
            ClusterNode(data_dir / f"node-{port + i}", port + i, None, node_timeout_ms)
            for i in range(count)
        ]

    @property
    def seed(self) -> ClusterNode:
        return self.nodes[0]

    @property
    def url(self) -> str:
        """The first node's URL: any node will do as the seed a cluster client starts from."""
        return self.seed.url

    @property
    def public_url(self) -> str:
        return self.seed.public_url

    @property
    def password(self) -> str:
        return self.seed.password

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def ranges(self) -> dict[int, tuple[int, int]]:
        """Each primary's slots as the first start assigned them, by port."""
        return {
            node.port: slots
            for node, slots in zip(
                self.nodes[: self.primaries], slot_ranges(self.primaries), strict=True
            )
        }

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.seed.start()
            secret = self.seed.password
            for node in self.nodes[1:]:
                node.secret = secret
                node.start()
                if node.password != secret:
                    raise ConfigurationError(
                        f"{node.data_dir} holds another cluster's node (another password)."
                    )
            if not self._joined():
                self._join()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node: the whole cluster crashes at once (each keeps its AOF and
        `nodes.conf`, so `start` brings the same cluster back)."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- joining ----------------------------------------------------------------------------

    def _joined(self) -> bool:
        with self.seed.client() as client:
            info = str(client.execute_command("CLUSTER", "INFO"))
        return re.search(r"cluster_known_nodes:1\b", info) is None

    def _join(self) -> None:
        with self.seed.client() as seed:
            for node in self.nodes[1:]:
                seed.execute_command("CLUSTER", "MEET", node.host, node.port)
        for node, (first, last) in zip(
            self.nodes[: self.primaries], slot_ranges(self.primaries), strict=True
        ):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        ids = [self._node_id(node) for node in self.nodes[: self.primaries]]
        self._wait(lambda: all(self._knows_all(node) for node in self.nodes), "every node to meet")
        for i, node in enumerate(self.nodes[self.primaries :]):
            primary = ids[i % self.primaries]
            with node.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", primary)

    def _node_id(self, node: ClusterNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def _knows_all(self, node: ClusterNode) -> bool:
        try:
            with node.client() as client:
                lines = str(client.execute_command("CLUSTER", "NODES")).strip().splitlines()
        except redis.RedisError:
            return False
        return len(lines) == len(self.nodes) and not any("handshake" in x for x in lines)

    def _ok(self, node: ClusterNode) -> bool:
        try:
            with node.client() as client:
                if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    return False
                replication = client.info("replication")
        except redis.RedisError:
            return False
        if replication.get("role") == "slave":
            return bool(replication.get("master_link_status") == "up")
        return True

    def wait_ok(self, nodes: Sequence[ClusterNode] | None = None) -> None:
        """Wait until every node (or those given) says `cluster_state:ok`, replicas in sync."""
        chosen = self.nodes if nodes is None else nodes
        self._wait(lambda: all(self._ok(node) for node in chosen), "cluster_state:ok")

    def _wait(self, condition: object, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                logs = ", ".join(str(node.log_path) for node in self.nodes)
                raise ConfigurationError(
                    f"the embedded {self.name} did not reach {what} within "
                    f"{_JOIN_TIMEOUT_S:.0f} s; see {logs}"
                )
            time.sleep(0.05)
