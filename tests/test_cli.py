"""The ``streamq`` command end to end: real processes against a real server."""

from __future__ import annotations

import io
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from streamq import cli, keys
from streamq.server import LocalServer
from tests.conftest import run_cli, spawn_worker, sync_client, sync_entries

pytestmark = pytest.mark.cluster


def invoke(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``streamq ARGS`` in this process (``cli.main``), its output and exit code captured as
    ``run_cli`` gives them, for tests about parsing, messages and exit codes: a new Python
    process per command line costs about a second on a loaded machine. stdout is not a
    terminal here, as in a pipe; what needs a real process (a terminal, signals, a command
    that runs until stopped) uses ``run_cli`` or ``spawn_worker``."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    code: object = 0
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        patch.setattr(sys, "stdin", io.StringIO(input or ""))
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            cli.main(list(args))
        except SystemExit as exited:
            code = exited.code
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)
    if isinstance(code, str):  # as the interpreter does: the message on stderr, exit 1
        err.write(code + "\n")
        code = 1
    returncode = 0 if code is None else code
    assert isinstance(returncode, int), returncode
    return subprocess.CompletedProcess(list(args), returncode, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def valkey_url() -> Iterator[str]:
    """One Valkey server for this module's tests whose outcome does not depend on the engine
    (input refused before or whatever the server answers): they run once, not per engine."""
    with LocalServer() as srv:
        yield srv.url


def one_line_error(result: object, *fragments: str) -> None:
    """The command failed with exactly one line on stderr naming the problem, no traceback."""
    assert getattr(result, "returncode", 0) != 0
    err: str = getattr(result, "stderr", "")
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streamq: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_enqueue_prints_the_job_id(redis_url: str, stream: str) -> None:
    result = invoke(
        "enqueue",
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "--payload",
        '{"text": "hi"}',
        "--key",
        "post-42",
        "--priority",
        "high",
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith(f"{stream}:")
    again = invoke(
        "enqueue",
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "--payload",
        "{}",
        "--key",
        "post-42",
    )
    assert again.stdout.strip() == job_id
    client = sync_client(redis_url)
    assert client.xlen(keys.lane(stream, "high")) == 1


@pytest.mark.any_engine
def test_enqueue_reads_a_payload_file(redis_url: str, stream: str, tmp_path: Path) -> None:
    payload = tmp_path / "post.json"
    payload.write_text('{"text": "from a file"}')
    result = invoke(
        "enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", f"@{payload}"
    )
    assert result.returncode == 0, result.stderr
    client = sync_client(redis_url)
    [(_, fields)] = sync_entries(client, keys.lane(stream, "normal"))
    assert json.loads(fields[b"j"])["payload"] == {"text": "from a file"}


def test_enqueue_bulk_imports_json_lines_from_stdin(redis_url: str, stream: str) -> None:
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(25_000)) + "\n"
    result = invoke(
        "enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "-", input=lines
    )
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == len(set(ids)) == 25_000
    client = sync_client(redis_url)
    assert client.xlen(keys.lane(stream, "normal")) == 25_000


def test_bad_json_line_stops_before_its_batch(valkey_url: str, stream: str) -> None:
    result = invoke(
        "enqueue",
        "--redis-url",
        valkey_url,
        "--stream",
        stream,
        "--payload",
        "-",
        input='{"ok": 1}\n{broken\n',
    )
    one_line_error(result, "stdin line 2", "not valid JSON")
    assert sync_client(valkey_url).xlen(keys.lane(stream, "normal")) == 0


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--payload", "{not json"], ["payload is not valid JSON"]),
        (["--payload", "{}", "--priority", "urgent"], ["unknown priority 'urgent'"]),
        (["--payload", "@/nonexistent/post.json"], ["cannot read payload file"]),
    ],
)
def test_bad_enqueue_input_is_one_line(
    valkey_url: str, stream: str, args: list[str], fragments: list[str]
) -> None:
    result = invoke("enqueue", "--redis-url", valkey_url, "--stream", stream, *args)
    one_line_error(result, *fragments)


def test_bad_stream_name_is_one_line(valkey_url: str) -> None:
    result = invoke("enqueue", "--redis-url", valkey_url, "--stream", "a:b", "--payload", "{}")
    one_line_error(result, "invalid stream name")


def test_unreachable_server_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    result = invoke(
        "enqueue", "--redis-url", f"redis://127.0.0.1:{port}", "--stream", "x", "--payload", "{}"
    )
    one_line_error(result, "cannot reach Redis at redis://127.0.0.1")


def test_wrong_password_is_one_line_and_never_echoed() -> None:
    with LocalServer(extra_args=["--requirepass", "right-secret"]) as srv:
        url = f"redis://:wrong-secret@127.0.0.1:{srv.port}/0"
        result = invoke("stats", "--redis-url", url)
        one_line_error(result, "refused the credentials")
        assert "wrong-secret" not in result.stderr
        good = invoke(
            "stats", "--json", "--redis-url", f"redis://:right-secret@127.0.0.1:{srv.port}"
        )
        assert good.returncode == 0, good.stderr


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("tests.nowhere:publish", "cannot import 'tests.nowhere'"),
        ("tests.handlers:missing", "has no 'missing'"),
        ("tests.handlers:not_async", "must be an async function"),
        ("tests.handlers:NOT_CALLABLE", "is not callable"),
        ("no_colon", "must look like"),
    ],
)
def test_bad_handlers_are_one_line(
    valkey_url: str, stream: str, handler: str, fragment: str
) -> None:
    result = invoke("consume", "--redis-url", valkey_url, "--stream", stream, "--handler", handler)
    one_line_error(result, fragment)


def test_consume_without_a_handler_says_how_to_name_one(valkey_url: str, stream: str) -> None:
    result = invoke("consume", "--redis-url", valkey_url, "--stream", stream)
    one_line_error(result, "no handler for stream", "--handler", f"[streams.{stream}]")


def test_bad_config_is_one_line(valkey_url: str, stream: str, tmp_path: Path) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text(f'[streams.{stream}]\nconcurrency = "many"\n')
    result = invoke(
        "consume", "--config", str(config), "--redis-url", valkey_url, "--stream", stream
    )
    one_line_error(result, f"[streams.{stream}] concurrency: must be a whole number")
    config.write_text(f'[streams.{stream}]\nliveness_timeout = "100ms"\n')
    result = invoke(
        "consume", "--config", str(config), "--redis-url", valkey_url, "--stream", stream
    )
    one_line_error(result, "liveness_timeout must be from 0.5s to 1h")
    config.write_text("[streams\n")
    result = invoke("stats", "--config", str(config), "--redis-url", valkey_url)
    one_line_error(result, "not valid TOML")


def test_consume_runs_the_configured_handler(redis_url: str, stream: str, tmp_path: Path) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text(f'[streams.{stream}]\nhandler = "tests.handlers:record"\nconcurrency = 4\n')
    lines = "".join(f"{i}\n" for i in range(20))
    invoke("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "-", input=lines)
    env = {"STREAMQ_TEST_RECORD_URL": redis_url, "STREAMQ_TEST_RECORD": stream}
    result = run_cli(  # a real process: tests.handlers keeps one client per process
        "consume",
        "--config",
        str(config),
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "--burst",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    runs = sync_client(redis_url).hgetall(f"{stream}:runs")
    assert len(runs) == 20
    assert set(runs.values()) == {b"1"}


def test_sigterm_lets_running_jobs_finish_then_exits_zero(redis_url: str, stream: str) -> None:
    client = sync_client(redis_url)
    invoke("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", '"slow"')
    env = {
        "STREAMQ_TEST_RECORD_URL": redis_url,
        "STREAMQ_TEST_RECORD": stream,
        "STREAMQ_TEST_JOB_SECONDS": "1.5",
    }
    worker = spawn_worker(
        "--redis-url", redis_url, "--stream", stream, "--handler", "tests.handlers:record", env=env
    )
    try:
        deadline = time.monotonic() + 20
        while not client.hgetall(f"{stream}:runs"):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    lane = keys.lane(stream, "normal")
    assert client.xlen(lane) == 0  # the job finished within the grace period and was acked
    assert client.xpending(lane, keys.GROUP)["pending"] == 0


def test_stats_json_has_the_documented_shape(redis_url: str, stream: str) -> None:
    invoke("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "1")
    result = invoke("stats", "--json", "--redis-url", redis_url, "--stream", stream)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["format"] == 1
    [entry] = data["streams"]
    assert set(entry) == {
        "stream",
        "group",
        "keys",
        "length",
        "pending",
        "waiting",
        "lag",
        "depth",
        "oldest_pending_age_s",
        "consumers",
        "dead",
        "delayed",
        "retrying",
        "expired",
        "limited",
        "throttled",
        "lanes",
    }
    assert (entry["stream"], entry["depth"], entry["waiting"], entry["pending"]) == (
        stream,
        1,
        1,
        0,
    )
    assert entry["keys"]["normal"] == keys.lane(stream, "normal")
    table = invoke("stats", "--redis-url", redis_url, "--stream", stream, env={"COLUMNS": "120"})
    assert stream in table.stdout


def test_usage_errors_exit_2() -> None:
    result = invoke("enqueue", "--stream", "x")
    assert result.returncode == 2
    assert "required: --payload" in result.stderr
    result = invoke("consume", "--stream", "x", "--concurrency", "0")
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


def test_without_a_url_every_command_uses_the_embedded_server(stream: str) -> None:
    home = tempfile.mkdtemp(dir="/tmp", prefix="sqcli")  # short: unix socket paths are limited
    env = {"STREAMQ_HOME": home, "STREAMQ_REDIS_URL": ""}
    try:
        added = invoke("enqueue", "--stream", stream, "--payload", '{"text": "hi"}', env=env)
        assert added.returncode == 0, added.stderr
        status = invoke("server", "status", env=env)
        assert status.returncode == 0
        assert f"unix://{home}/valkey.sock" in status.stdout
        consumed = run_cli(  # a real process: tests.handlers keeps one client per process
            "consume",
            "--stream",
            stream,
            "--handler",
            "tests.handlers:record",
            "--burst",
            env={
                **env,
                "STREAMQ_TEST_RECORD_URL": f"unix://{home}/valkey.sock",
                "STREAMQ_TEST_RECORD": stream,
            },
        )
        assert consumed.returncode == 0, consumed.stderr
        client = sync_redis.Redis(unix_socket_path=f"{home}/valkey.sock")
        assert client.hget(f"{stream}:runs", added.stdout.strip()) == b"1"
        client.close()
        stopped = invoke("server", "stop", env=env)
        assert stopped.stdout.strip() == "stopped"
        assert invoke("server", "status", env=env).returncode == 1
    finally:
        invoke("server", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_schedule_show_reschedule_and_cancel_from_the_command_line(
    redis_url: str, stream: str
) -> None:
    base = ["--redis-url", redis_url]
    added = invoke(
        "enqueue", *base, "--stream", stream, "--payload", '{"text": "hi"}',
        "--at", "2099-12-01 09:00", "--tz", "Europe/Paris", "--key", "post-1",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    job_id = added.stdout.strip()
    shown = json.loads(invoke("job", "show", job_id, "--json", *base).stdout)
    assert (shown["state"], shown["payload"], shown["key"]) == (
        "scheduled",
        {"text": "hi"},
        "post-1",
    )
    assert shown["run_at_ms"] == 4099795200000  # 2099-12-01T09:00:00+01:00
    text = invoke("job", "show", job_id, *base).stdout
    assert "2099-12-01T08:00:00.000+00:00" in text
    replaced = invoke(
        "enqueue", *base, "--stream", stream, "--payload", '{"text": "edited"}',
        "--key", "post-1", "--delay", "1h", "--replace",
    )  # fmt: skip
    assert replaced.stdout.strip() == job_id
    assert json.loads(invoke("job", "show", job_id, "--json", *base).stdout)["payload"] == {
        "text": "edited"
    }
    moved = invoke("job", "reschedule", job_id, "--delay", "2h", *base)
    assert moved.returncode == 0, moved.stderr
    assert invoke("job", "cancel", job_id, *base).stdout.strip() == "cancelled"
    one_line_error(invoke("job", "cancel", job_id, *base), "already cancelled")
    one_line_error(invoke("job", "reschedule", job_id, "--delay", "1m", *base), "cancelled")
    assert invoke("job", "retry", job_id, *base).stdout.strip() == "queued"
    one_line_error(invoke("job", "show", f"{stream}:missing", *base), "no job")
    one_line_error(invoke("job", "show", "not-an-id", *base), "no job")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--at", "2026-12-01 09:00"], "has no time zone"),
        (["--at", "2026-03-29 02:30", "--tz", "Europe/Paris"], "does not exist"),
        (["--at", "2026-12-01T09:00:00Z", "--delay", "1m"], "not both"),
        (["--tz", "Europe/Paris"], "--tz goes with --at"),
        (["--replace"], "--replace needs --key"),
    ],
)
def test_bad_schedules_are_one_line(
    valkey_url: str, stream: str, args: list[str], fragment: str
) -> None:
    result = invoke(
        "enqueue", "--redis-url", valkey_url, "--stream", stream, "--payload", "1", *args
    )
    one_line_error(result, fragment)


def test_dead_letters_and_cron_from_the_command_line(redis_url: str, stream: str) -> None:
    base = ["--redis-url", redis_url]
    client = sync_client(redis_url)
    client.xadd(keys.lane(stream, "normal"), {"not": "ours"})
    invoke("enqueue", *base, "--stream", stream, "--payload", "1")
    consumed = invoke(
        "consume", *base, "--stream", stream, "--handler", "tests.handlers:noop", "--burst"
    )
    assert consumed.returncode == 0, consumed.stderr
    listed = json.loads(invoke("dead", "list", "--stream", stream, "--json", *base).stdout)
    assert [(d["job_id"], d["fields"]) for d in listed] == [(None, {"not": "ours"})]
    assert "foreign entry" in invoke("dead", "list", "--stream", stream, *base).stdout
    replay = invoke("dead", "replay", "--stream", stream, "--all", *base)
    assert replay.stdout.strip() == "replayed 0, skipped 1 (not replayable)"
    assert invoke("dead", "purge", "--stream", stream, *base).stdout.strip() == "purged 1"

    added = invoke(
        "cron", "add", "daily", "--stream", stream, "--cron", "30 2 * * *",
        "--tz", "Europe/Paris", "--payload", '{"report": true}', *base,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    [schedule] = json.loads(invoke("cron", "list", "--stream", stream, "--json", *base).stdout)
    assert (schedule["name"], schedule["cron"], schedule["tz"]) == (
        "daily",
        "30 2 * * *",
        "Europe/Paris",
    )
    assert schedule["last_ms"] > 0  # its first occurrence is waiting
    one_line_error(
        invoke("cron", "add", "bad", "--stream", stream, "--cron", "61 * * * *", *base),
        "invalid cron expression",
    )
    assert invoke("cron", "remove", "daily", "--stream", stream, *base).returncode == 0
    one_line_error(invoke("cron", "remove", "daily", "--stream", stream, *base), "no schedule")
    [s] = json.loads(invoke("stats", "--json", "--stream", stream, *base).stdout)["streams"]
    assert s["delayed"] == 0  # the waiting occurrence was cancelled with its schedule


def test_sigterm_interrupts_an_idle_blocking_read_at_once(redis_url: str, stream: str) -> None:
    """An idle worker waits in a 5 s blocking read; SIGTERM must not wait for it to time out."""
    worker = spawn_worker(
        "--redis-url", redis_url, "--stream", stream, "--handler", "tests.handlers:noop",
        "--log-level", "INFO",
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # wait until it is consuming
            if "consuming" in line:
                break
        time.sleep(0.5)  # now inside the blocking read
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
        took = time.monotonic() - signalled
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0
    assert took < 3.0, f"stop took {took:.1f}s: the blocking read was not interrupted"


def test_an_unreachable_cluster_is_one_line() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    url = f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    result = invoke("enqueue", "--redis-url", url, "--stream", "x", "--payload", "{}")
    one_line_error(result, f"cannot reach Redis at {url}: no seed node gave the slot map")
