"""Where the server is, and a checked connection to it.

The URL comes from, in order: the caller (``--redis-url``), ``STREAMQ_REDIS_URL``, the config
file's ``redis_url``; with none of these, the embedded Valkey server (started on first use).
``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``) names a Redis or Valkey
Cluster by some of its nodes; the client finds the rest and follows slots as they move.
A password can stay out of the URL (and so out of ``ps`` and shell history):
``STREAMQ_REDIS_PASSWORD``, or a file named by ``STREAMQ_REDIS_PASSWORD_FILE`` (a mounted
Kubernetes Secret); one in the URL wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import anyio
import redis as sync_redis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, SSLConnection

from streamq import server
from streamq.errors import ConnectionFailed

SUPPORTED_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SOCKET_TIMEOUT_SECONDS = 10.0
"""How long a command may wait for the server: twice the longest blocking read (5 s), so a
connection that went silent (a stalled network, a black hole) is given up within seconds and
the caller reconnects, rather than hanging. ``socket_timeout`` in the config file changes it."""
MIN_SOCKET_TIMEOUT_SECONDS = 6.0
"""Above the 5 s blocking reads of workers, which must not time out while they wait."""
MIN_VERSIONS = {"redis": (7, 0), "valkey": (7, 2)}

T = TypeVar("T")

TRANSIENT_ERRORS: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.OutOfMemoryError,
    # A cluster between a master's death and its replica's promotion, or re-sharding.
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.MovedError,
    redis_errors.SlotNotCoveredError,
)
"""Failures that pass by themselves: the server is unreachable or silent (the client
reconnects on the next call), full (at maxmemory with noeviction) until memory is freed, or a
cluster shard is between masters. A long-running loop pauses (``retry_delay``) and tries
again; it never gives up on them."""


def retry_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0.1 s doubling up to 5 s."""
    return min(5.0, 0.05 * 2.0 ** min(max(failures, 1), 7))


class Retrying:
    """Runs Redis calls until they succeed, backing off while the server is unreachable.

    Used where giving up would strand work in this process; ``attempts`` bounds a call where
    giving up is safe (the entries stay pending and are reclaimed). ``stop`` ends a pause
    early for the calls that need not be tried again once their loop stops (a fetch; never an
    acknowledgement).
    """

    def __init__(self, log: logging.Logger, stop: anyio.Event) -> None:
        self.log = log
        self.stop = stop

    async def __call__(
        self, what: str, call: Callable[[], Awaitable[T]], attempts: int | None = None
    ) -> T | None:
        failures = 0
        while True:
            try:
                return await call()
            except TRANSIENT_ERRORS as exc:
                failures += 1
                if attempts is not None and failures >= attempts:
                    self.log.warning("%s failed %d times, giving up: %s", what, failures, exc)
                    return None
                await self.pause(what, exc, failures)

    async def pause(
        self, what: str, exc: BaseException, failures: int, *, until_stop: bool = False
    ) -> None:
        """Back off before the next try; ``until_stop`` ends the pause early at a stop."""
        delay = retry_delay(failures)
        self.log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
        if until_stop:
            with anyio.move_on_after(delay):
                await self.stop.wait()
        else:
            await anyio.sleep(delay)


def resolve_url(url: str | None = None, config_url: str | None = None) -> str:
    chosen = url or os.environ.get("STREAMQ_REDIS_URL") or config_url
    if chosen:
        scheme = urlsplit(chosen).scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise ConnectionFailed(
                f"unsupported Redis URL {redact(chosen)!r}: use redis://, rediss://, unix:// "
                "or redis+cluster://"
            )
        return chosen
    return server.ensure_running()


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def _url_password(url: str) -> str | None:
    credentials, at, _ = urlsplit(url).netloc.rpartition("@")
    if not at or ":" not in credentials:
        return None
    return unquote(credentials.partition(":")[2])


def password_from_environment() -> str | None:
    """``STREAMQ_REDIS_PASSWORD``, else the content of ``STREAMQ_REDIS_PASSWORD_FILE``."""
    password = os.environ.get("STREAMQ_REDIS_PASSWORD")
    if password:
        return password
    path = os.environ.get("STREAMQ_REDIS_PASSWORD_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError as exc:
        raise ConnectionFailed(
            f"cannot read STREAMQ_REDIS_PASSWORD_FILE {path}: {exc.strerror}"
        ) from None


def client(
    url: str,
    *,
    max_connections: int | None = None,
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
    wait_for_connection: float | None = None,
) -> Redis:
    """A client for ``url``; for a cluster URL a RedisCluster, typed as Redis because it
    answers every command streamq sends the same way (each names keys of one slot).

    With ``wait_for_connection``, a command finding all ``max_connections`` busy waits that
    long for one (a blocking pool) instead of failing at once with MaxConnectionsError."""
    options: dict[str, Any] = {
        # Pinned so reply shapes (lists, not RESP3 maps) do not change with redis-py's default.
        "protocol": 2,
        "decode_responses": False,
        "health_check_interval": 30,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        # No CLIENT SETINFO on connect: Redis 7.0 has no such command, and naming it in
        # least-privilege ACL rules (streamq.acl) would fail there.
        "driver_info": None,
    }
    password = None if _url_password(url) else password_from_environment()
    if password is not None:
        options["password"] = password
    if urlsplit(url).scheme != "unix":  # keepalive is a TCP option; unix sockets refuse it
        options["socket_keepalive"] = True
    try:
        if is_cluster(url):
            return cast(Redis, _cluster_client(url, max_connections, options))
        if wait_for_connection is not None:
            pool: ConnectionPool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections or 50,
                timeout=wait_for_connection,
                **options,
            )
        else:
            pool = ConnectionPool.from_url(url, max_connections=max_connections, **options)
    except ValueError as exc:
        raise ConnectionFailed(f"invalid Redis URL {redact(url)!r}: {exc}") from None
    pool.connection_class = _closed_transport_is_a_connection_error(pool.connection_class)
    return Redis.from_pool(pool)


_GUARDED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _closed_transport_is_a_connection_error(
    base: type[AbstractConnection],
) -> type[AbstractConnection]:
    """``base``, raising ConnectionError when it writes to a connection the peer already closed.

    uvloop raises RuntimeError ("the handler is closed") there, where plain asyncio ignores
    the write and the next read reports the loss; redis-py passes that RuntimeError through,
    so callers that reconnect on ConnectionError would not (uvloop issue 506).
    """

    if base in _GUARDED:
        return _GUARDED[base]

    class Guarded(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except RuntimeError as exc:
                if "handler is closed" not in str(exc):
                    raise
                raise redis_errors.ConnectionError(
                    "the connection was closed while sending a command"
                ) from None
            except AttributeError:
                # A cluster node's connection that another task disconnected meanwhile (a
                # failover): redis-py then writes to a writer it has already dropped.
                if getattr(self, "_writer", True) is not None:
                    raise
                raise redis_errors.ConnectionError(
                    "the connection was closed while sending a command"
                ) from None

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    _GUARDED[base] = Guarded
    return Guarded


def sync_client(url: str) -> sync_redis.Redis:
    """A synchronous client, for threads that must not wait on the event loop; a cluster URL
    gives a sync RedisCluster, typed as Redis like ``client``'s."""
    if not is_cluster(url):
        return sync_redis.Redis.from_url(url, password=password_from_environment())
    options: dict[str, Any] = {"password": password_from_environment()}
    seeds = _cluster_seeds(url, options)
    nodes = [sync_redis.cluster.ClusterNode(h, p) for h, p in seeds]  # type: ignore[no-untyped-call]
    return cast(sync_redis.Redis, sync_redis.RedisCluster(startup_nodes=nodes, **options))


_SYNC_CONNECTIONS: Final = {
    "Connection": sync_redis.Connection,
    "SSLConnection": sync_redis.SSLConnection,
    "UnixDomainSocketConnection": sync_redis.UnixDomainSocketConnection,
}


def sync_twin(client: Redis, key: str) -> sync_redis.Redis:
    """A synchronous client of one connection for the server (credentials, TLS files) of an
    async one; on a cluster, for the master that holds ``key``'s slot now."""
    cluster = as_cluster(client)
    if cluster is not None:
        base, kwargs = _master_settings(cluster, key)
    else:
        base = client.connection_pool.connection_class
        kwargs = dict(client.connection_pool.connection_kwargs)
    name = base.__name__.removeprefix("Guarded")  # our uvloop guard: async only
    sync_class = _SYNC_CONNECTIONS.get(name, sync_redis.Connection)
    if sync_class is not sync_redis.SSLConnection:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    pool = sync_redis.ConnectionPool(connection_class=sync_class, max_connections=1, **kwargs)
    return sync_redis.Redis(connection_pool=pool)


def _master_settings(cluster: RedisCluster, key: str) -> tuple[Any, dict[str, Any]]:
    """The connection class and settings (address, credentials, timeouts, TLS files) of the
    cluster master that holds ``key``'s slot now."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise redis_errors.SlotNotCoveredError(f"no node holds {key!r}'s slot")
    given: dict[str, Any] = cluster.get_connection_kwargs()
    connection_class = given["connection_class"]  # guarded, and SSL for rediss+cluster
    settings = {name: given[name] for name in _NODE_OPTIONS if name in given}
    if issubclass(connection_class, SSLConnection):
        settings |= {name: value for name, value in given.items() if name.startswith("ssl_")}
    return connection_class, {**settings, "host": node.host, "port": int(node.port)}


def _cluster_seeds(url: str, options: dict[str, Any]) -> list[tuple[str, int]]:
    """The host:port pairs of a cluster URL; its user and password go into ``options``."""
    credentials, at, hosts = urlsplit(url).netloc.rpartition("@")
    if at:
        user, _, password = credentials.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    seeds = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, not {address!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def _cluster_client(url: str, max_connections: int | None, options: dict[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    nodes = [ClusterNode(host, port) for host, port in _cluster_seeds(url, options)]
    if parts.scheme == "rediss+cluster":
        options["ssl"] = True
        for name, values in parse_qs(parts.query).items():
            if name in _CLUSTER_TLS_OPTIONS:
                options[name] = values[-1]
    cluster = RedisCluster(
        startup_nodes=nodes,
        # Enough for every worker's concurrent reads; redis-py's default of 100 per node is
        # reached by a busy producer pipelining into three shards.
        max_connections=max_connections or 1000,
        **options,
    )
    # Every node's connections get the uvloop guard too: the nodes found later are made from
    # these settings, the seeds were made already.
    kwargs: dict[str, Any] = cluster.get_connection_kwargs()
    guarded: Any = _closed_transport_is_a_connection_error(kwargs["connection_class"])
    kwargs["connection_class"] = guarded
    for seed in cluster.nodes_manager.startup_nodes.values():
        seed.connection_class = guarded
    return cluster


_CLUSTER_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def reader(redis: Redis, key: str) -> Redis:
    """A client with one connection of its own, for blocking reads of ``key``: a stop request
    interrupts such a read with CLIENT UNBLOCK, sent by ``Redis(connection_pool=reader's pool)``.
    On a cluster it talks to the master that holds ``key``'s slot now; after a failover make
    a new one (``refresh_topology`` first)."""
    cluster = as_cluster(redis)
    if cluster is None:
        return redis.client()
    connection_class, settings = _master_settings(cluster, key)
    pool = ConnectionPool(connection_class=connection_class, **settings)
    node_client = Redis(connection_pool=pool, single_connection_client=True)
    node_client.auto_close_connection_pool = True  # its pool is its own: closed with it
    return node_client


_NODE_OPTIONS = (
    "username",
    "password",
    "protocol",
    "decode_responses",
    "health_check_interval",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "driver_info",
)


def as_cluster(redis: Redis) -> RedisCluster | None:
    """The client as the RedisCluster it is, or None for a client of one server."""
    client: object = redis  # typed Redis, though client() may have made a RedisCluster
    return client if isinstance(client, RedisCluster) else None


def is_cluster_client(redis: Redis) -> bool:
    return as_cluster(redis) is not None


def own_connection(redis: Redis) -> Redis:
    """A client whose blocking reads do not hold up other commands. One server: a client of
    one connection of its own (close it after use); a cluster client already gives every
    command in flight its own connection, so it is itself (closing it is up to its owner)."""
    return redis if is_cluster_client(redis) else redis.client()


async def refresh_topology(redis: Redis) -> None:
    """Re-read a cluster's slot map (after a failover); nothing on one server."""
    cluster = as_cluster(redis)
    if cluster is not None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await cluster.nodes_manager.initialize()


async def _server_info(redis: Redis) -> Any:
    """INFO server; on a cluster from the first master that answers, so one dead node (a
    failover under way) does not make the whole cluster unreachable."""
    cluster = as_cluster(redis)
    if cluster is None:
        return await redis.info("server")
    await _initialize_cluster(cluster)
    failure: BaseException | None = None
    for node in cluster.get_primaries():
        try:
            return await cluster.info("server", target_nodes=node)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            failure = exc
    raise failure or redis_errors.ConnectionError("no cluster master answered")


async def _initialize_cluster(cluster: RedisCluster) -> None:
    """Learn the cluster's slots, trying every seed in turn. redis-py then reads COMMAND from
    the first master the slot map names, which may be one that just died and still owns its
    slots: tried again while its replica takes over, for up to the socket timeout."""
    budget = cluster.get_connection_kwargs().get("socket_timeout") or SOCKET_TIMEOUT_SECONDS
    deadline = anyio.current_time() + budget
    failures = 0
    while True:
        try:
            await cluster.initialize()
            return
        except redis_errors.RedisClusterException as exc:
            if "cannot be connected" in str(exc):  # no seed answered: nothing to wait for
                detail = str(exc).partition(": ")[2] or str(exc)
                if "Cluster mode is not enabled" in detail:  # redis-py's word for any error
                    detail = "CLUSTER SLOTS refused: not a cluster, or a user without it"
                raise redis_errors.ConnectionError(
                    f"no seed node gave the slot map ({detail})"
                ) from None
            failure: Exception = redis_errors.ConnectionError(str(exc))  # slots not covered
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            failure = exc
        failures += 1
        if anyio.current_time() + retry_delay(failures) > deadline:
            raise failure
        await anyio.sleep(retry_delay(failures))


async def check(redis: Redis, url: str) -> str:
    """Reach the server and check its version; returns e.g. 'valkey 8.1.8'."""
    try:
        info = await _server_info(redis)
    except redis_errors.AuthenticationError as exc:
        raise ConnectionFailed(f"Redis at {redact(url)} refused the credentials: {exc}") from None
    except redis_errors.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConnectionFailed(
                f"Redis at {redact(url)} refused the credentials: {exc}"
            ) from None
        raise ConnectionFailed(f"Redis at {redact(url)} answered with an error: {exc}") from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        hint = ""
        if url.startswith("rediss") and "ssl_certfile" not in url and "closed" in str(exc):
            # Under TLS 1.3 a server that wants a client certificate refuses it after the
            # handshake: the client sees either its alert or only the closed socket.
            hint = " (a TLS server that requires a client certificate closes the connection)"
        raise ConnectionFailed(f"cannot reach Redis at {redact(url)}: {exc}{hint}") from None
    engine = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version") or "0")
    numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if numbers < MIN_VERSIONS[engine]:
        low = ".".join(map(str, MIN_VERSIONS[engine]))
        raise ConnectionFailed(
            f"{engine} {version} at {redact(url)} is too old: streamq needs {low}+"
        )
    return f"{engine} {version}"


async def connect(
    url: str | None = None,
    config_url: str | None = None,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
) -> tuple[Redis, str]:
    """A checked client and the URL it talks to; raises ConnectionFailed or ServerError."""
    resolved = resolve_url(url, config_url)
    redis = client(resolved, socket_timeout=socket_timeout)
    try:
        await check(redis, resolved)
    except BaseException:
        await redis.aclose()
        raise
    return redis, resolved
