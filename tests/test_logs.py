"""Structured logging: JSON lines with job fields, and no payload bodies at INFO."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streamq import logs
from tests.conftest import run_cli

MARK = "payload-body-must-not-be-logged"


def enqueue(redis_url: str, stream: str, payload: dict[str, str], *more: str) -> str:
    args = ("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload")
    result = run_cli(*args, json.dumps(payload), *more)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.any_engine
def test_json_lines_carry_job_fields_and_no_payload(redis_url: str, stream: str) -> None:
    ok = enqueue(redis_url, stream, {"text": MARK})
    dead = enqueue(redis_url, stream, {"text": MARK, "then": "fail"})
    retried = enqueue(redis_url, stream, {"text": MARK, "then": "retry"}, "--max-attempts", "2")
    result = run_cli(
        "consume", "--redis-url", redis_url, "--stream", stream, "--burst",
        "--handler", "tests.handlers:outcome", "--log-format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert MARK not in result.stdout + result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    job_lines = [e for e in entries if f"{stream}:" in e["message"]]
    for entry in job_lines:
        assert entry["job_id"] in entry["message"]
        assert entry["stream"] == stream
        assert isinstance(entry["attempt"], int)
    [dead_line] = [e for e in job_lines if e["job_id"] == dead]
    assert dead_line["level"] == "WARNING"
    assert dead_line["message"] == f"job {dead} is dead: asked to fail"
    # (Burst mode may or may not see the second attempt, due 10 ms later.)
    [retry_line] = [e for e in job_lines if e["job_id"] == retried and e["attempt"] == 1]
    assert retry_line["message"].startswith(f"job {retried} attempt 1 failed (Retry: asked")
    assert ok not in {e["job_id"] for e in job_lines}  # a job that succeeds logs nothing
    started = next(e for e in entries if "consuming" in e["message"])
    assert started["stream"] == stream
    assert started["consumer"]


@pytest.mark.any_engine
def test_text_lines_end_with_the_job_fields(redis_url: str, stream: str) -> None:
    dead = enqueue(redis_url, stream, {"text": MARK, "then": "fail"})
    result = run_cli(
        "consume", "--redis-url", redis_url, "--stream", stream, "--burst",
        "--handler", "tests.handlers:outcome",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "is dead" in line]
    assert line.endswith(f"[job_id={dead} stream={stream} attempt=1]"), line
    assert MARK not in result.stderr


def test_setup_replaces_its_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        out = io.StringIO()
        logs.setup("INFO", "json", out)
        logs.setup("INFO", "json", out)
        logging.getLogger("streamq.test").info("once", extra=logs.job("s:1", "s", 2))
        [line] = out.getvalue().splitlines()
        assert json.loads(line) | {"ts": None} == {
            "ts": None, "level": "INFO", "logger": "streamq.test", "message": "once",
            "job_id": "s:1", "stream": "s", "attempt": 2,
        }  # fmt: skip
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
