"""Every ```console example of the README (and docs/*.md) runs as written, against a server
of its own: see tests/doc_examples.py for the conventions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamq.server import LocalServer
from tests.conftest import ROOT
from tests.doc_examples import JOB_ID, Block, Command, blocks, documents, matches, prepared

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


def run_example(command: Command, text: str, env: dict[str, str]) -> str:
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
            return out
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if command.error is not None:
        assert process.returncode != 0, (text, out)
        assert matches(command.error, err), (text, err)
    else:
        assert process.returncode == 0, (text, process.returncode, err)
        assert "Traceback" not in err, (text, err)
    return out


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 3
    assert sum(len(block.commands) for block in BLOCKS) >= 20


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.source)
def test_the_example_runs_as_written(block: Block, own_server: LocalServer) -> None:
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
