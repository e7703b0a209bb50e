"""What the ``streamq`` command promises people and scripts alike: options mean the same
wherever they are given, one error prefix and uniform exit codes, full-width output through a
pipe, JSON on request, empty results said so, unknown streams refused, past times refused,
shell completion, and help for every option of every command."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamq import cli
from streamq.commands import account as account_cmd
from streamq.commands.common import COMMON_DEFAULTS
from streamq.server import LocalServer
from tests.conftest import ROOT, run_cli
from tests.test_cli import invoke, one_line_error

COMMON = {
    "--redis-url": "redis://127.0.0.1:1/0",
    "--config": "/nowhere/streamq.toml",
    "--log-level": "DEBUG",
    "--log-format": "json",
}
EXTRA = {("dead", "replay"): ["--all"], ("completion",): [], ("server", "start"): []}
"""Arguments a command needs beyond its required ones to parse."""


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and group action of the parser, with its path (('dead', 'list'), ...)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from leaves(child, (*path, name))


def required_args(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    extra = EXTRA.get(path, [])
    argv: list[str] = []
    for action in parser._actions:
        if action.option_strings and action.required:
            argv += [action.option_strings[0], str(next(iter(action.choices or ["s1"])))]
        elif not action.option_strings and action.nargs not in ("*", "?"):
            argv.append(str(next(iter(action.choices or ["s1"]))))
    return argv + extra


@pytest.fixture(scope="module")
def valkey_url() -> Iterator[str]:
    """One Valkey server for the module: what the command line promises does not depend on
    the engine, so these tests run once, not per engine."""
    with LocalServer() as srv:
        yield srv.url


LEAVES = list(leaves(cli.build_parser()))
CONNECTING = [path for path, parser in LEAVES if parser.get_default("connects")]


def takes(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in action.option_strings for action in parser._actions)


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=" ".join)
@pytest.mark.parametrize("option", list(COMMON))
def test_a_common_option_means_the_same_before_and_after_the_action(
    path: tuple[str, ...], option: str
) -> None:
    """`streamq dead --redis-url U list ...` connects to U, as `dead list ... --redis-url U`
    does; a command that does not use the option refuses it wherever it is put."""
    parser = dict(LEAVES)[path]
    needed = required_args(parser, path)
    dest = option.lstrip("-").replace("-", "_")
    value = COMMON[option]
    after = [*path, *needed, option, value]
    before = [path[0], option, value, *path[1:], *needed] if len(path) > 1 else None
    if not takes(parser, option):  # e.g. simulate's --redis-url: refused, not ignored
        for argv in (after, before):
            if argv is not None:
                with pytest.raises(SystemExit) as refused:
                    cli.parse(argv)
                assert refused.value.code == 2, argv
        return
    assert getattr(cli.parse(after), dest) == value
    if before is not None:
        assert getattr(cli.parse(before), dest) == value
    assert getattr(cli.parse([*path, *needed]), dest) == COMMON_DEFAULTS[dest]


@pytest.mark.parametrize(
    "argv",
    [
        ["job", "{url}", "show", "s:1-1"],
        ["dead", "{url}", "purge", "--stream", "s"],
        ["cron", "{url}", "list", "--stream", "s"],
        ["account", "{url}", "pause", "acme", "--stream", "s"],
        ["limits", "{url}", "show"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_group_level_url_is_the_server_acted_on(argv: list[str]) -> None:
    """Before: `job --redis-url DEAD show ID` exited 0, answered by the embedded server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    url = f"redis://127.0.0.1:{port}/0"
    args = [part for item in argv for part in (["--redis-url", url] if item == "{url}" else [item])]
    home = tempfile.mkdtemp(dir="/tmp", prefix="sqnever")  # short: unix socket paths are limited
    env = {"STREAMQ_HOME": home, "STREAMQ_REDIS_URL": ""}
    try:
        result = invoke(*args, env=env)
        started = Path(home, "valkey.sock").exists()  # the embedded server, acted on instead
    finally:
        invoke("server", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)
    one_line_error(result, f"cannot reach Redis at redis://127.0.0.1:{port}")
    assert result.returncode == 1
    assert not started


def test_a_group_level_log_level_is_honoured(valkey_url: str, stream: str) -> None:
    result = invoke("job", "--log-level", "DEBUG", "show", f"{stream}:1-1", "--redis-url",
                     valkey_url)  # fmt: skip
    assert result.returncode == 1
    assert "DEBUG" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["enqueue", "--stream", "s", "--payload", "1", "--delay", "soon"], 2, "--delay"),
        (["enqueue", "--stream", "s", "--payload", "1", "--at", "tomorrow"], 2, "--at"),
        (["enqueue", "--stream", "s", "--payload", "1", "--priority", "urgent"], 2, "urgent"),
        (["enqueue", "--stream", "s"], 2, "required: --payload"),
        (["enqueue", "--stream", "s", "--payload", "{nope"], 2, "not valid JSON"),
        (["stats", "--bogus"], 2, "unrecognized arguments"),
        (["job", "show", "s:1-1"], 1, "no job"),
        (["stats", "--stream", "nosuch-{uid}"], 1, "no stream 'nosuch-"),
        (["dead", "list", "--stream", "nosuch-{uid}"], 1, "no stream 'nosuch-"),
        (["dead", "list", "--stream", "nosuch-{uid}", "--json"], 1, "no stream 'nosuch-"),
        (["cron", "remove", "x", "--stream", "s"], 1, "no schedule 'x'"),
    ],
)
def test_one_prefix_and_uniform_exit_codes(
    valkey_url: str, stream: str, args: list[str], code: int, fragment: str
) -> None:
    """Before: a bad --delay said `streamq enqueue: error:`, a bad --at exited 1; unknown
    streams printed zeros or nothing with exit 0."""
    args = [arg.replace("{uid}", stream) for arg in args]
    result = invoke(*args, "--redis-url", valkey_url)
    one_line_error(result, fragment)
    assert result.returncode == code, result.stderr


def test_a_server_that_never_answers_is_a_timeout(tmp_path: Path) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text('socket_timeout = "6s"\n')
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        result = invoke("stats", "--redis-url", url, "--config", str(config))
    one_line_error(result)
    assert result.returncode == 3, result.stderr


def tomorrow_and_yesterday() -> tuple[str, str]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    fmt = "%Y-%m-%d %H:%M"
    return (now + timedelta(days=1)).strftime(fmt), (now - timedelta(days=1, hours=2)).strftime(fmt)


def test_a_past_at_is_refused_unless_allowed(valkey_url: str, stream: str) -> None:
    _, past = tomorrow_and_yesterday()
    base = ["--redis-url", valkey_url]
    refused = invoke("enqueue", "--stream", stream, "--payload", "1", "--at", past,
                      "--tz", "Europe/Paris", *base)  # fmt: skip
    one_line_error(refused, "in the past", "1d", "--allow-past")
    assert refused.returncode == 2
    taken = invoke("enqueue", "--stream", stream, "--payload", "1", "--at", past,
                    "--tz", "Europe/Paris", "--allow-past", *base)  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    job_id = taken.stdout.strip()
    shown = json.loads(invoke("job", "show", job_id, "--json", *base).stdout)
    assert shown["state"] == "queued", shown  # due at once, not scheduled

    later = invoke("enqueue", "--stream", stream, "--payload", "2", "--delay", "1h", *base)
    later_id = later.stdout.strip()
    moved = invoke("job", "reschedule", later_id, "--at", past, "--tz", "UTC", *base)
    one_line_error(moved, "in the past")
    assert moved.returncode == 2
    assert json.loads(invoke("job", "show", later_id, "--json", *base).stdout)["state"] == (
        "scheduled"
    )


def test_a_pipe_gets_every_column_uncut(valkey_url: str, stream: str) -> None:
    """Before: `streamq stats | grep instagram` found `insta…` and headers like `waiti…`."""
    long_stream = stream + "-" + "x" * 40
    invoke("enqueue", "--stream", long_stream, "--payload", "1", "--redis-url", valkey_url)
    result = run_cli("stats", "--stream", long_stream, "--redis-url", valkey_url,
                     env={"COLUMNS": "40"})  # fmt: skip  # a real pipe, a real width
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split("\t") == ["stream", "depth", "waiting", "pending", "oldest pending",
                                  "consumers", "dead", "delayed", "limited"]  # fmt: skip
    assert row.split("\t")[:3] == [long_stream, "1", "1"]


def run_in_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`streamq ARGS` with its stdout on a pseudo-terminal; (exit code, what it showed)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    process.wait(timeout=30)
    assert process.stderr is not None
    process.stderr.close()
    return process.returncode, shown.decode(errors="replace")


def test_empty_results_say_so_at_a_terminal_and_stay_valid_json(
    valkey_url: str, stream: str
) -> None:
    """Before: an empty dead-letter list printed nothing at all."""
    base = ["--redis-url", valkey_url]
    invoke("enqueue", "--stream", stream, "--payload", "1", *base)
    as_json = invoke("dead", "list", "--stream", stream, "--json", *base)
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    piped = invoke("dead", "list", "--stream", stream, *base)
    assert (piped.returncode, piped.stdout) == (0, "")
    assert f"no dead letters on {stream}" in piped.stderr
    code, shown = run_in_terminal("dead", "list", "--stream", stream, *base)
    assert code == 0
    assert f"no dead letters on {stream}" in shown
    code, shown = run_in_terminal("cron", "list", "--stream", stream, *base)
    assert (code, f"no schedules on {stream}" in shown) == (0, True)
    assert json.loads(invoke("cron", "list", "--stream", stream, "--json", *base).stdout) == []


def test_a_terminal_gets_a_full_width_table(valkey_url: str, stream: str) -> None:
    invoke("enqueue", "--stream", stream, "--payload", "1", "--redis-url", valkey_url)
    code, shown = run_in_terminal("stats", "--stream", stream, "--redis-url", valkey_url)
    assert code == 0
    assert stream in shown
    assert "oldest pending" in shown
    assert "\t" not in shown


def test_every_data_command_takes_json() -> None:
    printing = {
        ("stats",), ("events",), ("job", "show"), ("dead", "list"), ("cron", "list"),
        ("limits", "show"), ("health",), ("demo",), ("enqueue",), ("server", "status"),
    }  # fmt: skip
    for path, parser in LEAVES:
        if path in printing:
            assert takes(parser, "--json"), path


def test_every_option_has_help_and_every_command_its_own_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: no help for enqueue --stream, dead list --stream/--json/--count, dead replay
    --all, cron add --priority; `server start --help` printed its parent's usage."""
    for path, parser in LEAVES:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help, (path, action.option_strings or action.dest)
        with pytest.raises(SystemExit) as exited:
            cli.parse([*path, "--help"])
        assert exited.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: streamq {' '.join(path)} "), (path, shown[:80])
    assert "redis+cluster://" in dict(LEAVES)[("stats",)].format_help()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = invoke("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "streamq" in result.stdout
    assert "_ARGCOMPLETE" in result.stdout


def test_completion_answers_a_shell(tmp_path: Path) -> None:
    """What bash asks when the user types `streamq dead l<TAB>`."""
    out = tmp_path / "completions"
    line = "streamq dead l"
    result = subprocess.run(
        [sys.executable, "-m", "streamq"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={
            **os.environ,
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        },
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["list"]


def test_the_small_wordings(valkey_url: str, stream: str, tmp_path: Path) -> None:
    base = ["--redis-url", valkey_url]
    invoke("cron", "add", "daily", "--stream", stream, "--cron", "30 2 * * *", *base)
    listed = invoke("cron", "list", "--stream", stream, *base).stdout
    assert "next run" in listed
    assert "last fired" not in listed

    config = tmp_path / "streamq.toml"
    config.write_text(
        f'[[streams.{stream}.limits]]\nscope = "platform"\nmax = 10000\nper = "1d"\n'
        f'[[streams.{stream}.limits]]\nscope = "account"\nmax = 25\nper = "1h"\n'
    )
    invoke("enqueue", "--stream", stream, "--payload", "1", *base)
    shown = invoke("limits", "show", "--stream", stream, "--config", str(config), *base)
    assert shown.returncode == 0, shown.stderr
    assert "10000/day" in shown.stdout, shown.stdout
    assert "per day" in shown.stdout
    assert "25 per hour each" in shown.stdout
    assert "416.667" not in shown.stdout
    assert "86400s" not in shown.stdout

    invoke("account", "pause", "acme", "--stream", stream, *base)
    invoke("enqueue", "--stream", stream, "--payload", "1", "--account", "acme", *base)
    resumed = invoke("account", "resume", "acme", "--stream", stream, *base).stdout
    assert f"{stream}: resumed acme (" in resumed, resumed
    assert (account_cmd.jobs(1), account_cmd.jobs(2)) == ("1 waiting job", "2 waiting jobs")

    post = '{"video_url": "https://cdn.example.com/v.mp4", "title": ""}'
    refused = invoke("enqueue", "--stream", "youtube", "--payload", post, *base)
    one_line_error(refused, "youtube post refused: title: must not be empty")
    assert "Expected" not in refused.stderr
    assert "$." not in refused.stderr


def test_fuzzed_argv_stays_clean_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """A few command lines the fuzz test could draw, in-process: usage errors exit 2 with the
    one prefix, never a traceback."""
    for argv in (["dead", "list", "--stream"], ["job"], ["server", "start", "--redis-url=x"]):
        with pytest.raises(SystemExit) as exited, contextlib.redirect_stdout(io.StringIO()):
            cli.main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("streamq: error: "), err
        assert err.count("\n") == 1, err
