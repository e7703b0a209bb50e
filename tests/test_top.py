"""``streamq top``: a snapshot when piped, a live view on a terminal, narrow terminals."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

import anyio
import pytest
from redis.asyncio import Redis
from rich.console import Console

from streamq import channel, keys, top
from tests.conftest import ROOT, run_cli


def enqueue(redis_url: str, stream: str, count: int) -> None:
    payloads = "".join(f"{n}\n" for n in range(count))
    args = ("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "-")
    assert run_cli(*args, input=payloads).returncode == 0


def test_piped_it_prints_one_snapshot_of_the_streams(redis_url: str, stream: str) -> None:
    other = f"{stream}b"
    enqueue(redis_url, stream, 3)
    enqueue(redis_url, other, 1200)
    result = run_cli("top", "--redis-url", redis_url, "--stream", stream, "--stream", other)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("streamq top · 2 stream(s) · ")
    header = lines[1].split()
    assert header[:4] == ["stream", "done/s", "depth", "lag"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows[stream][header.index("depth")] == "3"
    assert rows[other][header.index("depth")] == "1,200"


@pytest.mark.any_engine
def test_sixty_columns_wide(redis_url: str, stream: str) -> None:
    enqueue(redis_url, stream, 2)
    result = run_cli("top", "--redis-url", redis_url, "--stream", stream, env={"COLUMNS": "60"})
    assert result.returncode == 0, result.stderr
    assert stream in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 60, result.stdout


def shown(rows: list[top.Row], width: int) -> tuple[str, list[str]]:
    out = Console(width=width, file=io.StringIO(), color_system=None)
    out.print(top.render(1_796_000_000_000, rows, width))
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    header = text.splitlines()[1]
    return text, [name for name, _ in top.COLUMNS if name in header]


def test_columns_drop_in_order_and_long_names_fold() -> None:
    huge = top.Row("x" * 64, 12345.6, 1_234_567, 10**6, 234_567, 3600.0, 128, 99_999, 5 * 10**6)
    typical = top.Row("instagram", 41.5, 1_520, 1_488, 32, 0.05, 4, 3, 210)
    everything = [name for name, _ in top.COLUMNS]
    assert shown([huge, typical], 140)[1] == everything
    for width in (100, 80, 60):
        text, columns = shown([huge, typical], width)
        assert max(map(len, text.splitlines())) <= width, text
        dropped = {name for name in everything if name not in columns}
        assert dropped == set(top.DROP_ORDER[: len(dropped)])
        assert "instagram" in text
    # Ordinary figures keep the useful columns at 60.
    text, columns = shown([typical], 60)
    assert {"stream", "done/s", "depth", "late", "workers", "dead"} <= set(columns)
    assert "41.5" in text


def test_no_streams_yet() -> None:
    out = Console(width=60, file=io.StringIO(), color_system=None)
    out.print(top.render(1_796_000_000_000, [], 60))
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    assert "no streams yet" in text


def test_on_a_terminal_it_refreshes_until_interrupted(redis_url: str, stream: str) -> None:
    enqueue(redis_url, stream, 1)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", "top", "--redis-url", redis_url, "--stream", stream,
         "--interval", "0.1"],
        stdin=follower, stdout=follower, stderr=follower, cwd=ROOT,
        env={**os.environ, "COLUMNS": "60", "LINES": "20", "TERM": "xterm"},
    )  # fmt: skip
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + 15
        # Two refreshes: the stream's row drawn twice.
        while seen.count(stream.encode()) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                seen += os.read(leader, 65536)
        assert seen.count(stream.encode()) >= 2, seen
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


@pytest.mark.anyio
async def test_rates_span_one_refresh(redis: Redis, stream: str) -> None:
    await redis.sadd(keys.STREAM_REGISTRY, stream)
    sampler = top.Sampler(redis, [stream])
    first_ms, [first] = await sampler.rows()
    assert first.done_per_s is None  # no sample from the workers yet
    await redis.hincrby(keys.counts(stream), "done", 50)
    with anyio.fail_after(5):  # the server's clock has to move on by a millisecond
        while await channel.server_ms(redis) <= first_ms:  # noqa: ASYNC110 - a clock, not an event
            await anyio.sleep(0.001)
    second_ms, [second] = await sampler.rows()
    assert second.done_per_s == pytest.approx(50_000 / (second_ms - first_ms))


@pytest.mark.anyio
async def test_a_partitioned_streams_rate_sums_its_partitions(redis: Redis, stream: str) -> None:
    parts = keys.partitions(stream, 2)
    await redis.sadd(keys.STREAM_REGISTRY, *parts)
    sampler = top.Sampler(redis, [stream])
    first_ms, [first] = await sampler.rows()
    assert first.stream == stream
    for part, done in zip(parts, [30, 20], strict=True):
        await redis.hincrby(keys.counts(part), "done", done)
    with anyio.fail_after(5):
        while await channel.server_ms(redis) <= first_ms:  # noqa: ASYNC110 - a clock, not an event
            await anyio.sleep(0.001)
    second_ms, [second] = await sampler.rows()
    assert second.done_per_s == pytest.approx(50_000 / (second_ms - first_ms))
