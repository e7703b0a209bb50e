"""Generated config files and command lines: each one is taken, or refused with one line
(``ConfigError`` in Python; ``streamq: error: ...`` or a usage line and a non-zero exit on the
command line), never a traceback."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamq import cli
from streamq.config import Config, load_config
from streamq.errors import ConfigError
from streamq.server import LocalServer
from tests.conftest import run_cli
from tests.test_cli import invoke, one_line_error


@pytest.fixture(scope="module")
def valkey() -> Iterator[LocalServer]:
    """One Valkey server for the module: how a command line is refused does not depend on the
    engine, so these tests run once, not per engine."""
    with LocalServer() as srv:
        yield srv


STREAM_FIELDS = [
    "handler", "publisher", "concurrency", "prefetch", "visibility_timeout", "liveness_timeout",
    "max_deliveries",
    "grace", "max_attempts", "backoff", "expire_after", "job_timeout", "retention",
    "max_payload_bytes", "limits", "autoscale", "events", "webhooks", "hooks", "health",
]  # fmt: skip
NESTED_FIELDS = [
    "base", "factor", "max", "jitter", "scope", "per", "min_interval", "enabled", "max_len",
    "max_age", "skip", "url", "events", "secret_env", "timeout", "max_attempts", "min_workers",
    "expected_workers", "min_alive", "max_depth", "max_error_rate", "deployment", "colour",
]  # fmt: skip


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)  # a JSON number or string is a TOML one
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.sampled_from(["10s", "250ms", "7d", "-1s", "soon", "", "1e400s", "x:y", "account"])
    | st.text(max_size=20)
)
nested = st.dictionaries(st.sampled_from(NESTED_FIELDS), scalars | st.lists(scalars, max_size=3),
                         max_size=4)  # fmt: skip
stream_tables = st.dictionaries(
    st.sampled_from(STREAM_FIELDS),
    scalars | nested | st.lists(nested, max_size=2) | st.lists(scalars, max_size=2),
    max_size=5,
)
stream_names = st.sampled_from(["instagram", "news", "bad name", "a.b", "-x", "ü"])
documents = st.fixed_dictionaries(
    {},
    optional={
        "redis_url": scalars,
        "streams": st.dictionaries(stream_names, stream_tables, max_size=2) | scalars,
        "platforms": st.dictionaries(st.sampled_from(["x", "tiktok"]), nested, max_size=2),
        "credentials": scalars,
        "colour": scalars,
    },
)


def toml_document(document: dict[str, Any]) -> str:
    streams = document.get("streams")
    tables = streams if isinstance(streams, dict) else {}
    lines = [f"{key} = {toml_value(value)}" for key, value in document.items()
             if not (key == "streams" and tables)]  # fmt: skip
    for name, table in tables.items():
        lines.append(f"[streams.{json.dumps(name)}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(document=documents)
@example(document={"streams": {"news": {"visibility_timeout": "1e400s"}}})
@example(document={"streams": {"news": {"backoff": {"base": math.nan}}}})
@example(document={"streams": {"news": {"concurrency": 2**63 - 1}}})
@example(document={"streams": {"news": {"visibility_timeout": math.inf}}})
@example(document={"streams": {"news": {"max_payload_bytes": 2**40}}})
def test_a_generated_config_is_parsed_or_refused_in_one_line(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "streamq.toml"
    path.write_text(toml_document(document), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message
        assert "\n" not in message.strip()
        return
    assert isinstance(config, Config)
    for stream in config.streams.values():
        # Every accepted number is one the worker can use.
        assert 1 <= stream.concurrency <= 10_000
        assert stream.max_payload_bytes <= 512 << 20
        assert math.isfinite(stream.visibility_timeout)
        assert math.isfinite(stream.backoff.base)
        assert math.isfinite(stream.backoff.max)


@pytest.mark.parametrize(
    "text",
    ["[streams", "streams = 3", "[streams.news]\nconcurrency = 0", "\x00", "[[streams]]\na=1",
     "[streams.news]\nbackoff = 'fast'", "[streams.news]\nlimits = [1]",
     "[streams.news]\nvisibility_timeout = nan", "[streams.news]\nbackoff = {base = inf}"],
)  # fmt: skip
def test_the_cli_refuses_a_bad_config_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "streamq.toml"
    path.write_text(text)
    one_line_error(invoke("stats", "--redis-url", "redis://127.0.0.1:1", "--config", str(path)))


COMMANDS = [
    ["enqueue", "--stream"], ["enqueue", "--payload"], ["enqueue", "--key"],
    ["enqueue", "--priority"], ["enqueue", "--delay"], ["enqueue", "--at"], ["enqueue", "--tz"],
    ["enqueue", "--max-attempts"], ["enqueue", "--job-timeout"], ["enqueue", "--account"],
    ["stats", "--stream"], ["job", "show"], ["job", "cancel"], ["dead", "list", "--stream"],
    ["dead", "list", "--count"], ["limits", "show", "--account"], ["cron", "list", "--stream"],
    ["account", "pause"], ["consume", "--concurrency"], ["consume", "--visibility-timeout"],
]  # fmt: skip
argument_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
argument_values = argument_text | st.sampled_from(
    ["-1", "0", "1e400", "99999999999999999999", "10s", "nan", "{}", "[]", '"x"', "@/no/file",
     "-", "high", "a:b", "x" * 600, "2026-13-45T25:00", "Mars/Olympus"]
)  # fmt: skip


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=st.lists(st.tuples(st.sampled_from(COMMANDS), argument_values), min_size=1,
                      max_size=3))  # fmt: skip
def test_generated_command_lines_exit_cleanly(
    valkey: LocalServer, capsys: pytest.CaptureFixture[str], parts: list[tuple[list[str], str]]
) -> None:
    """In-process (``cli.main``), against a real server: any outcome but an exception other
    than SystemExit (a traceback) is fine; a failure is one line."""
    command = parts[0][0][:-1] if parts[0][0][-1].startswith("--") else parts[0][0]
    argv = [*command, "--redis-url", valkey.url]
    for flags, value in parts:
        if flags[: len(command)] == command and flags[-1].startswith("--"):
            argv.append(f"{flags[-1]}={value}")
        elif flags[: len(command)] == command:
            argv.append(value)
    if command == ["consume"]:
        argv += ["--stream", "fuzz", "--handler", "tests.nowhere:handler"]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    code = exited.value.code
    if code not in (0, None):
        assert code in (1, 2), (argv, code, err)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert "Traceback" not in err, (argv, err)
        assert "error:" in last, (argv, err)


def test_a_few_command_lines_through_a_real_process(valkey: LocalServer) -> None:
    for argv in (
        ["enqueue", "--stream", "s", "--payload", "1", "--max-attempts", "99999999999999999999"],
        ["enqueue", "--stream", "s", "--payload", "1", "--delay", "1e400"],
        ["enqueue", "--stream", "s", "--payload", "[1, NaN]"],
        ["job", "show", "s:" + "x" * 5000],
        ["dead", "list", "--stream", "s", "--count", "0"],
    ):
        result = run_cli(*argv, "--redis-url", valkey.url, env={"COLUMNS": "100"})
        assert result.returncode in (1, 2), (argv, result)
        assert len(result.stderr.strip().splitlines()) == 1, (argv, result.stderr)
        assert "Traceback" not in result.stderr
