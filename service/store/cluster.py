"""The hot path's transport on a Redis (or Valkey) Cluster: one auto-pipelined connection per
primary, each command routed by its key's slot.

It has the interface of `service.store.transport.PipelinedRedis` (`connect`, `close`,
`connected`, `send`, `evalsha`), and each primary's connection *is* one: the same encoding,
the same in-order replies, the same failure rules (a lost connection fails its own pending
calls with `BackendUnavailable` and reconnects in the background; a stuck one is dropped).
What this adds is the routing:

- **The slot map** comes from `CLUSTER SLOTS`, asked of any node that answers (the seed from
  `REDIS_URL` first, then every node known). Commands go to the primary of their key's slot
  (`service.store.keys.key_slot`: every boxoffice script's keys share one slot, by design).
- **MOVED** (the slot lives elsewhere now): the slot is pointed at the named node at once, a
  refresh of the whole map is scheduled, and the call is resent there. Redis answers MOVED
  before it runs anything, so the resend cannot run a command twice.
- **ASK** (the slot is being migrated and this key has left already): `ASKING` and the call
  are sent together to the named node, once. The map is not changed.
- **TRYAGAIN** (a multi-key call during a migration found some keys on each side) and
  **CLUSTERDOWN** are error replies like any other; `service.store.scripts` turns them into
  `BackendUnavailable`: a 503 problem with Retry-After.
- **Who serves a slot** has a generation per slot (`node_generation`), bumped whenever the
  map points the slot at another node (MOVED, a refresh). `send_if_same_node` sends only to
  the node of a given generation, and raises `NodeChanged` instead of following a MOVED: the
  ledger writer reads its stream that way, so a replica promoted behind its back (asynchronous
  replication: it may lack history the ledger has) is checked by the fence before any read
  moves its group's cursor (ledger/fence.py).
- **A lost node** fails only its own pending calls, never resent (they may have run): the
  other primaries' calls go on. The map is refreshed until every slot's primary answers again,
  so a replica promoted by a failover takes the slots over without anyone's help.

Redirections are bounded (`MAX_REDIRECTIONS`): a slot bouncing between two nodes that disagree
is a 503, not a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
from collections.abc import Awaitable, Sequence
from typing import Any, TypeAlias

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import BackendUnavailable, ConfigurationError
from boxoffice.service.store.keys import SLOTS, key_slot
from boxoffice.service.store.transport import Arg, NodeChanged, PipelinedRedis, ReplyError

log = logging.getLogger("boxoffice.transport")

MAX_REDIRECTIONS = 5
REFRESH_EVERY_S = 30.0
"""The map is refreshed this often anyway (slots moved without anyone being redirected yet)."""
RETRY_REFRESH_S = 0.25
"""While some slot has no primary that answers, the map is asked for again this often."""

Node = tuple[str, int]

_slot_of = functools.lru_cache(maxsize=65_536)(key_slot)
"""The hot path asks for the same few keys' slots on every call: each CRC is computed once."""

_ANY_NODE = frozenset({"PING", "INFO", "CLUSTER", "ECHO", "TIME", "ROLE"})
_EVERY_PRIMARY = frozenset({"SCRIPT"})


Transport: TypeAlias = "PipelinedRedis | ClusterPipelinedRedis"
"""Either hot-path transport: the same calls (`connect`, `close`, `connected`, `send`,
`evalsha`)."""


def command_key(args: Sequence[Arg]) -> str | bytes | None:
    """The key a command is routed by, or None for a command of no key. Covers the commands
    boxoffice sends; anything else is routed by its first argument, as most commands are."""
    name = str(args[0]).upper()
    if name in ("EVALSHA", "EVALSHA_RO", "EVAL", "EVAL_RO", "FCALL", "FCALL_RO"):
        return _as_key(args[3]) if int(args[2]) > 0 else None
    if name in ("XREADGROUP", "XREAD"):
        upper = [str(a).upper() for a in args]
        return _as_key(args[upper.index("STREAMS") + 1])
    if name == "XINFO":
        return _as_key(args[2])
    if name in _ANY_NODE or name in _EVERY_PRIMARY or len(args) < 2:
        return None
    return _as_key(args[1])


def _as_key(arg: Arg) -> str | bytes:
    return arg if isinstance(arg, str | bytes) else str(arg)


def _parse_redirection(message: str, sent_to: Node) -> tuple[int, Node]:
    """`MOVED 3999 127.0.0.1:6381` or `ASK ...`: the slot and the node. An empty host (the
    node does not know its own address) means the host the call went to."""
    _, slot, where = message.split(" ", 2)
    host, _, port = where.strip().rpartition(":")
    return int(slot), (host or sent_to[0], int(port))


def hot_transport(
    address: RedisAddress | str, cluster: bool, **options: Any
) -> PipelinedRedis | ClusterPipelinedRedis:
    """The hot path's transport for a store, not connected yet: slot-routing on a cluster
    (`service.store.clients.resolve_cluster` says which), else one pipelined connection.
    `options`: `timeout`, `max_pending`, `connect_timeout`."""
    if cluster:
        return ClusterPipelinedRedis(address, **options)
    return PipelinedRedis(address, **options)


class ClusterPipelinedRedis:
    """Redis Cluster commands over one auto-pipelined connection per primary. `connect()`
    first; then `send` and `evalsha` as on `PipelinedRedis`."""

    def __init__(
        self,
        address: RedisAddress | str,
        *,
        timeout: float = 5.0,
        max_pending: int = 10_000,
        connect_timeout: float = 3.0,
    ) -> None:
        self.address = address if isinstance(address, RedisAddress) else RedisAddress.parse(address)
        if self.address.db:
            raise ConfigurationError(
                "REDIS_URL names database "
                f"{self.address.db}, but a Redis Cluster has database 0 only; drop it."
            )
        self.timeout = timeout
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self._nodes: dict[Node, PipelinedRedis] = {}
        """Every node a connection was opened to: the primaries, and any left over."""
        self._slots: list[PipelinedRedis | None] = [None] * SLOTS
        self._generations = [0] * SLOTS
        """Per slot, bumped whenever the map points it at another connection."""
        self._seed: Node = (self.address.host, self.address.port)
        self._refreshing: asyncio.Task[None] | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._closing = False
        self.refreshes = 0
        """How many times the slot map was read (for tests and the curious)."""

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Read the slot map from the seed and connect to every primary."""
        await self._refresh()
        if not any(self._slots):
            raise BackendUnavailable("the Redis Cluster serves no slots (cluster_state?)")
        self._periodic = asyncio.create_task(self._refresh_forever())

    async def _node(self, node: Node) -> PipelinedRedis:
        """The connection to `node`, opened (and handshaken) now if there is none yet."""
        connection = self._nodes.get(node)
        if connection is None:
            address = dataclasses.replace(self.address, host=node[0], port=node[1])
            connection = PipelinedRedis(
                address,
                timeout=self.timeout,
                max_pending=self.max_pending,
                connect_timeout=self.connect_timeout,
                cluster_node=True,
            )
            self._nodes[node] = connection
            try:
                await connection.connect()
            except BaseException:
                if self._nodes.get(node) is connection:
                    del self._nodes[node]
                await connection.close()
                raise
        return connection

    async def _read_map(self) -> tuple[list[Node | None], Node]:
        """`CLUSTER SLOTS` from the first node that answers: the seed, then the others."""
        known = [node for node, c in self._nodes.items() if c.connected]
        random.shuffle(known)
        errors: list[str] = []
        for node in [self._seed, *[n for n in known if n != self._seed]]:
            try:
                connection = await self._node(node)
                reply = await connection.send("CLUSTER", "SLOTS")
            except (BackendUnavailable, ReplyError, OSError) as error:
                errors.append(f"{node[0]}:{node[1]}: {error}")
                continue
            owners: list[Node | None] = [None] * SLOTS
            for first, last, primary, *_replicas in reply:
                host = str(primary[0]) or node[0]
                owner = (host, int(primary[1]))
                owners[int(first) : int(last) + 1] = [owner] * (int(last) - int(first) + 1)
            return owners, node
        raise BackendUnavailable(
            "no node of the Redis Cluster answered CLUSTER SLOTS (" + "; ".join(errors) + ")"
        )

    async def _refresh(self) -> None:
        owners, _ = await self._read_map()
        self.refreshes += 1
        primaries: dict[Node, PipelinedRedis | None] = dict.fromkeys(o for o in owners if o)
        for node in primaries:
            try:
                primaries[node] = await self._node(node)
            except (BackendUnavailable, ConfigurationError) as error:
                log.warning("cannot reach cluster node %s:%s: %s", node[0], node[1], error)
        slots = [primaries[o] if o else None for o in owners]
        for slot, (old, new) in enumerate(zip(self._slots, slots, strict=True)):
            if old is not new:
                self._generations[slot] += 1
        self._slots = slots
        # A node that serves no slot any more is closed once nothing waits on it: a call in
        # flight there may have run, and must get its own reply, not a 503.
        for node, connection in list(self._nodes.items()):
            if node not in primaries and node != self._seed and not connection.pending:
                del self._nodes[node]
                await connection.close()

    def _schedule_refresh(self) -> None:
        if self._refreshing is None and not self._closing:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_until_whole())

    async def _refresh_until_whole(self) -> None:
        """Refresh the map until every slot's primary answers (a failover takes the node
        timeout and an election: seconds)."""
        try:
            while not self._closing:
                try:
                    await self._refresh()
                except BackendUnavailable as error:
                    log.warning("cannot read the cluster's slot map: %s", error)
                if self.whole:
                    return
                await asyncio.sleep(RETRY_REFRESH_S)
        finally:
            self._refreshing = None

    async def _refresh_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(REFRESH_EVERY_S)
            self._schedule_refresh()

    @property
    def whole(self) -> bool:
        """Every slot has a primary, and every primary a live connection."""
        return all(c is not None and c.connected for c in self._slots)

    @property
    def connected(self) -> bool:
        return any(c is not None and c.connected for c in self._slots)

    @property
    def primaries(self) -> list[Node]:
        """The nodes that serve slots, as the map says now."""
        live = {id(c) for c in self._slots if c is not None}
        return [node for node, c in self._nodes.items() if id(c) in live]

    async def close(self) -> None:
        self._closing = True
        for task in (self._periodic, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        nodes, self._nodes = self._nodes, {}
        self._slots = [None] * SLOTS
        for connection in nodes.values():
            await connection.close()

    # -- calls ------------------------------------------------------------------------------

    def send(self, *args: Arg) -> Awaitable[Any]:
        """Queue one command on the primary of its key's slot; a command of no key goes to
        any primary, and SCRIPT to every primary (its first reply is returned)."""
        key = command_key(args)
        if key is None:
            if str(args[0]).upper() in _EVERY_PRIMARY:
                return self._everywhere(args)
            return self._routed(self._any(), args, -1)
        slot = _slot_of(key)
        return self._routed(self._slots[slot], args, slot)

    def node_generation(self, key: str | bytes) -> int:
        """The generation of the node serving the key's slot: it changes whenever the map
        points the slot elsewhere (a failover, a migration), so a caller can tell that what it
        checked on one node may not hold on the next."""
        return self._generations[_slot_of(key)]

    def send_if_same_node(self, generation: int, *args: Arg) -> Awaitable[Any]:
        """`send`, to the node of `generation` only: if the slot's node changed since, or the
        node answers MOVED (nothing ran), `NodeChanged` (the map then points at the new node).
        ASK is followed: a migrating slot's keys move whole (a stream with its groups)."""
        key = command_key(args)
        assert key is not None, args
        slot = _slot_of(key)
        if self._generations[slot] != generation:
            raise NodeChanged(f"slot {slot} is served by another node now")
        return self._routed(self._slots[slot], args, slot, same_node=True)

    def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> Awaitable[Any]:
        command = "EVALSHA_RO" if read_only else "EVALSHA"
        slot = _slot_of(keys[0]) if keys else -1
        connection = self._slots[slot] if keys else self._any()
        return self._routed(connection, (command, sha, len(keys), *keys, *args), slot)

    def _any(self) -> PipelinedRedis | None:
        return next((c for c in self._slots if c is not None and c.connected), None)

    async def _routed(
        self,
        connection: PipelinedRedis | None,
        command: Sequence[Arg],
        slot: int,
        *,
        same_node: bool = False,
    ) -> Any:
        asking = False
        for _ in range(MAX_REDIRECTIONS):
            if connection is None:
                self._schedule_refresh()
                raise BackendUnavailable(f"no primary of the Redis Cluster serves slot {slot} now")
            try:
                if asking:
                    asked = connection.send("ASKING")
                    reply = connection.send(*command)  # same connection, same write: in order
                    await asked
                    return await reply
                return await connection.send(*command)
            except BackendUnavailable:
                self._schedule_refresh()
                raise
            except ReplyError as error:
                message = str(error)
                if message.startswith("MOVED "):
                    moved, node = _parse_redirection(message, self._where(connection))
                    connection = await self._redirect_to(node)
                    if self._slots[moved] is not connection:
                        self._slots[moved] = connection
                        self._generations[moved] += 1
                    self._schedule_refresh()
                    if same_node:
                        raise NodeChanged(f"slot {moved} moved to {node[0]}:{node[1]}") from None
                    asking = False
                elif message.startswith("ASK ") and not asking:
                    _, node = _parse_redirection(message, self._where(connection))
                    connection = await self._redirect_to(node)
                    asking = True
                else:
                    if message.startswith("CLUSTERDOWN"):
                        self._schedule_refresh()
                    raise
        raise BackendUnavailable(
            f"the Redis Cluster redirected a call for slot {slot} {MAX_REDIRECTIONS} times; "
            "its slot map is in flux: retry shortly"
        )

    async def _redirect_to(self, node: Node) -> PipelinedRedis:
        try:
            return await self._node(node)
        except ConfigurationError as error:
            raise BackendUnavailable(f"cannot reach {node[0]}:{node[1]}: {error}") from error

    def _where(self, connection: PipelinedRedis) -> Node:
        return (connection.address.host, connection.address.port)

    async def _everywhere(self, args: Sequence[Arg]) -> Any:
        """SCRIPT LOAD (and friends) on every primary: a script a primary lacks is NOSCRIPT
        there, and the retry loads it everywhere again."""
        targets = {id(c): c for c in self._slots if c is not None}
        if not targets:
            self._schedule_refresh()
            raise BackendUnavailable("no primary of the Redis Cluster is connected")
        replies = await asyncio.gather(
            *(self._routed(c, args, -1) for c in targets.values()), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies[0]
