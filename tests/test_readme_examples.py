"""Every ```console example of the README and the docs (docs/**/*.md) runs as written, against
a server of its own: see tests/doc_examples.py for the conventions."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamq.server import LocalServer
from tests.conftest import ROOT
from tests.doc_examples import JOB_ID, Block, Command, blocks, documents, matches, prepared
from tests.test_cli import invoke

BLOCKS = [block for path in documents(ROOT) for block in blocks(path)]
STILL_RUNNING_AFTER = 4.0


@pytest.fixture(scope="module")
def own_server() -> Iterator[LocalServer]:
    """Fixed stream names (instagram, x) on a server no other test uses."""
    with LocalServer() as srv:
        yield srv


def shell(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """The command through bash (redirections, $(...)), in a session of its own so that it
    and its children are stopped together, by its PID."""
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


SHELL_SYNTAX = re.compile(r"[|<>;&$`]")
"""What only a shell can run: pipes, redirections, variables, $(...)."""


def in_process(command: Command, text: str) -> list[str] | None:
    """The argv of a plain ``streamq ...`` command that ends by itself, to be run in this
    process (``cli.main``): the same parser, output and exit code without a new interpreter
    per command. None for anything that needs a shell or runs until stopped."""
    if command.runs_until_stopped or SHELL_SYNTAX.search(text.split("#", 1)[0]):
        return None
    words = shlex.split(text, comments=True)
    return words[1:] if words and words[0] == "streamq" else None


def run_example(command: Command, text: str, env: dict[str, str]) -> str:
    argv = in_process(command, text)
    if argv is not None:
        ran = invoke(*argv, env={"STREAMQ_REDIS_URL": env["STREAMQ_REDIS_URL"], "COLUMNS": "120"})
        returncode, out, err = ran.returncode, ran.stdout, ran.stderr
    else:
        returncode, out, err = run_in_shell(command, text, env)
        if command.runs_until_stopped:
            return out  # it was still running when stopped: checked in run_in_shell
    if command.error is not None:
        assert returncode != 0, (text, out)
        assert matches(command.error, err), (text, err)
    else:
        assert returncode == 0, (text, returncode, err)
        assert "Traceback" not in err, (text, err)
    return out


def run_in_shell(command: Command, text: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = shell(text, env)
    try:
        if command.runs_until_stopped:
            try:
                out, err = process.communicate(timeout=STILL_RUNNING_AFTER)
            except subprocess.TimeoutExpired:
                pass  # still running, as it should
            else:
                pytest.fail(f"{text!r} stopped (exit {process.returncode}): {err}")
            os.killpg(process.pid, signal.SIGTERM)
            out, err = process.communicate(timeout=30)
            return process.returncode, out, err
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, out, err


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 3
    assert sum(len(block.commands) for block in BLOCKS) >= 20


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.source)
def test_the_example_runs_as_written(
    block: Block, own_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # as the shell runs them: paths like examples/post.json
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # as PYTHONPATH does: mypkg
    env = {
        **os.environ,
        "STREAMQ_REDIS_URL": own_server.url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT / "examples"),
        "COLUMNS": "120",
    }
    ids: dict[str, str] = {}
    started = time.monotonic()
    for command in block.commands:
        text = prepared(command.text, ids)
        out = run_example(command, text, env)
        for expected in command.expected:
            placeholder = JOB_ID.fullmatch(expected.strip())
            if placeholder is not None:
                printed = JOB_ID.search(out)
                assert printed is not None, (text, out)
                ids[placeholder[0]] = printed[0]
            elif not expected.startswith("streamq: error:") and not command.runs_until_stopped:
                assert matches(expected, out), (text, expected, out)
    assert time.monotonic() - started < 120


def test_the_extractor_reads_commands_outputs_and_continuations(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "```sh\nstreamq stats\n```\n"  # not a console block: prose for the reader
        "```console\n"
        '$ streamq enqueue --stream x --payload 1 --at "2020-01-02 09:00" --tz UTC \\\n'
        "    --key k   # a comment\n"
        "x:19ab5f0c2e1-8d2f0a6b9c41\n"
        "$ streamq job show x:19ab5f0c2e1-8d2f0a6b9c41\n"
        "$ streamq consume --stream x\n"
        "$ streamq consume --stream x --burst\n"
        "$ streamq enqueue --stream x --payload nope\n"
        "streamq: error: payload is not valid JSON...\n"
        "```\n",
        encoding="utf-8",
    )
    [block] = blocks(doc)
    enqueue, show, consume, burst, bad = block.commands
    assert enqueue.text.endswith("--tz UTC --key k   # a comment")
    assert enqueue.expected == ["x:19ab5f0c2e1-8d2f0a6b9c41"]
    assert (consume.runs_until_stopped, burst.runs_until_stopped) == (True, False)
    assert bad.error == "streamq: error: payload is not valid JSON..."
    assert matches(bad.error, "streamq: error: payload is not valid JSON: line 1\n")
    ran = prepared(enqueue.text, {}, now=datetime(2030, 5, 6, 23, 59, tzinfo=UTC))
    assert '--at "2030-05-07 09:00"' in ran
    real = {"x:19ab5f0c2e1-8d2f0a6b9c41": "x:0000000000a-0000000000b"}
    assert prepared(show.text, real).endswith("x:0000000000a-0000000000b")


FIXED_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b|datetime\(\s*20\d\d\b")
"""A calendar date written into an example: it would be in the past some day."""


def test_no_example_names_a_fixed_date() -> None:
    """Dates in examples are relative (``--delay``, ``$(date -d tomorrow +%F)``, computed in
    Python): the runner's move of ``--at`` dates to tomorrow must have nothing to move, and
    no example file holds a date (but a token's far expiry in the token store's samples)."""
    for block in BLOCKS:
        for command in block.commands:
            assert not FIXED_DATE.search(command.text), (block.source, command.text)
    for script in sorted((ROOT / "examples").rglob("*.py")):
        assert not FIXED_DATE.search(script.read_text(encoding="utf-8")), script
