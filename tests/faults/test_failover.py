"""A cluster master SIGKILLed mid-run: its replica is promoted, and workers and producers carry
on without a restart. Figures print at the end (``pytest -s``) and are in docs/cluster.md.

Redis replicates asynchronously: a write the master acknowledged but had not yet sent to its
replica is gone after the promotion. The test kills the master once its replica has caught up
with every enqueue, so no job can be lost to that window, and measures what the failover itself
costs: acknowledgements lost with the master (those jobs run twice), and enqueues refused while
the shard had no master (retried with the same job keys, so none is added twice).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
from redis.crc import key_slot

import streamq
from streamq import connection, keys
from streamq.config import load_config
from streamq.errors import StreamqError
from streamq.server import LocalCluster, LocalServer
from tests.conftest import spawn_worker
from tests.faults.fleet import figures, finish

LONG = os.environ.get("STREAMQ_FAULTS_LONG") == "1"
PARTITIONS = 3


def master_port(node: Any, key: str) -> int | None:
    """The port of the master that ``node`` says holds ``key``'s slot."""
    slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
    for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    return None


def caught_up(master: sync_redis.Redis) -> bool:
    """Whether the master's replica has received everything the master wrote."""
    info: Any = master.info("replication")
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return bool(replicas) and all(r["offset"] == info["master_repl_offset"] for r in replicas)


def first_masters_stream() -> str:
    """A stream name whose partition 0 lives on the first master (slots 0-5460 of three): the
    node redis-py reads COMMAND from when it connects, so the producer that connects after the
    kill meets a slot map that still names the dead master first."""
    while True:
        stream = f"f{os.urandom(5).hex()}"
        if key_slot(keys.lane(f"{stream}:0", "normal").encode()) <= 5460:
            return stream


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_master_killed_mid_run_is_survived_by_workers_and_producers(
    server: LocalServer, tmp_path: Path
) -> None:
    """On a cluster of the engine under test (Valkey 8.1, Redis 7)."""
    batches, batch = (60, 500) if LONG else (30, 200)
    stream = first_masters_stream()
    config = tmp_path / "streamq.toml"
    config.write_text(f"[streams.{stream}]\npartitions = {PARTITIONS}\n")
    nodes = LocalCluster(masters=3, replicas=1, binary=server.binary)
    with LocalServer() as records, nodes as cluster:
        record = sync_redis.Redis.from_url(records.url)
        env = {"STREAMQ_TEST_RECORD_URL": records.url, "STREAMQ_TEST_RECORD": stream,
               "STREAMQ_TEST_JOB_SECONDS": "0.002"}  # fmt: skip
        args = ["--redis-url", cluster.url, "--stream", stream, "--config", str(config)]
        args += ["--handler", "tests.handlers:record", "--concurrency", "24"]
        args += ["--visibility-timeout", "2s", "--log-level", "ERROR"]
        pool = [spawn_worker(*args, env=env) for _ in range(2)]
        ids: set[str] = set()
        refused: list[str] = []

        async def produce(first: int, last: int) -> None:
            async with streamq.connect(cluster.url, config=load_config(config)) as q:
                for b in range(first, last):
                    job_keys = [f"{b}-{i}" for i in range(batch)]
                    payloads = [{"n": i, "fail_first": i % 7 == 0} for i in range(batch)]
                    while True:
                        try:
                            ids.update(await q.enqueue_many(stream, payloads, keys=job_keys))
                            break
                        except (StreamqError, *connection.TRANSIENT_ERRORS) as exc:
                            refused.append(type(exc).__name__)
                            await anyio.sleep(0.2)  # the same keys again: nothing twice

        total = batches * batch
        anyio.run(produce, 0, batches // 2)
        producer = threading.Thread(target=anyio.run, args=(produce, batches // 2, batches))
        try:
            client: Any = connection.sync_client(cluster.url)
            while record.hlen(f"{stream}:succeeded") < total // 4:
                assert all(w.poll() is None for w in pool), "a worker died before the kill"
                time.sleep(0.02)
            lane = keys.lane(f"{stream}:0", "normal")
            victim_port = int(client.get_node_from_key(lane).port)
            victim = next(node for node in cluster.nodes if node.port == victim_port)
            assert int(client.get_default_node().port) == victim_port
            witness = sync_redis.Redis(port=next(n.port for n in cluster.nodes if n is not victim))
            master = sync_redis.Redis(port=victim_port)
            deadline = time.monotonic() + 10
            while not caught_up(master):  # so no acknowledged enqueue is lost with it
                assert time.monotonic() < deadline, "the replica never caught up"
                time.sleep(0.005)
            killed_at = time.monotonic()
            victim.kill()
            producer.start()  # the second half meets a shard without a master
            deadline = time.monotonic() + 30
            while master_port(witness, lane) in (victim_port, None):
                assert time.monotonic() < deadline, "the replica was never promoted"
                time.sleep(0.02)
            promoted_after = time.monotonic() - killed_at
            producer.join(120)
            assert not producer.is_alive(), "the producer hung"
            # Fewer: a producer gave up; more: an enqueue retried with the same keys added a
            # job twice.
            assert len(ids) == total
            deadline = time.monotonic() + 90
            while record.hlen(f"{stream}:succeeded") < total and time.monotonic() < deadline:
                for w in pool:
                    assert w.poll() is None, f"a worker died of the failover: {w.communicate()[0]}"
                time.sleep(0.05)
            lost, twice = figures(record, stream, ids)
        finally:
            if producer.is_alive():
                producer.join(5)
            finish(pool)
    print(
        f"\nfaults: cluster failover: {total} jobs over {PARTITIONS} partitions, master of "
        f"{stream}:0 SIGKILLed "
        f"a quarter through; replica promoted in {promoted_after:.1f}s; {len(refused)} enqueue "
        f"batches refused and retried ({', '.join(sorted(set(refused))) or 'none'}); "
        f"lost {lost}, ran twice {twice}"
    )
    assert lost == 0
