"""``streamq flow add|show|cancel|reschedule``: the names other checks rely on, one-line
refusals with exit 2, and JSON output."""

from __future__ import annotations

import json
import time

import anyio

from streamq import connection, keys
from streamq.server import LocalServer
from tests.test_cli import invoke


def test_flow_add_show_reschedule_cancel(server: LocalServer, stream: str) -> None:
    env = {"STREAMQ_REDIS_URL": server.url}
    flow = {
        "steps": [
            {"name": "upload", "stream": f"{stream}-v", "payload": {"file": "a.mp4"}},
            {"name": "publish", "stream": stream, "payload": "p", "after": ["upload"]},
        ],
        "on_complete": {"name": "notify", "stream": stream},
    }
    added = invoke("flow", "add", "--file", "-", "--delay", "1h", input=json.dumps(flow), env=env)
    assert added.returncode == 0, added.stderr
    flow_id, *rows = added.stdout.splitlines()
    assert flow_id.startswith("flow:")
    jobs = dict(row.split("\t") for row in rows)
    assert set(jobs) == {"upload", "publish", "notify"}
    shown = invoke("flow", "show", flow_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["state"] == "scheduled"
    assert {name: step["state"] for name, step in info["steps"].items()} == {
        "upload": "scheduled",
        "publish": "held",
        "notify": "held",
    }
    assert info["steps"]["publish"]["job"] == jobs["publish"]
    as_json = invoke("flow", "add", "--file", "-", "--json", input=json.dumps(flow), env=env)
    assert as_json.returncode == 0, as_json.stderr
    added_json = json.loads(as_json.stdout)
    assert added_json["id"].startswith("flow:")
    assert set(added_json["jobs"]) == {"upload", "publish", "notify"}
    assert invoke("flow", "cancel", added_json["id"], env=env).returncode == 0
    # A held step's job id is printed above, but its job is only enqueued once released: the
    # refusal says so, rather than leaving "never enqueued" to puzzle whoever pasted the id.
    held = invoke("job", "show", jobs["publish"], env=env)
    assert held.returncode == 1
    assert held.stderr == (
        f"streamq: error: no job {jobs['publish']!r} (never enqueued, a flow step not released "
        "yet, or its record passed retention)\n"
    )
    moved = invoke("flow", "reschedule", flow_id, "--delay", "2h", env=env)
    assert (moved.returncode, moved.stdout.split(" ")[0]) == (0, "1"), moved.stderr
    text = invoke("flow", "show", flow_id, env=env)
    assert "upload\tscheduled\t-\t" in text.stdout
    cancelled = invoke("flow", "cancel", flow_id, env=env)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled")

    async def upload_state() -> object:
        client = connection.client(server.url)
        try:
            state: object = await client.hget(keys.job(f"{stream}-v", jobs["upload"]), "state")
            return state
        finally:
            await client.aclose()

    assert anyio.run(upload_state) == b"cancelled"
    # Run again by hand, the step's job is queued; its flow keeps what it counted, and says so.
    again = invoke("job", "retry", jobs["upload"], env=env)
    assert (again.returncode, again.stdout) == (0, "queued\n"), again.stderr
    assert again.stderr == (
        f"streamq: note: step 'upload' of flow {flow_id}, which counted it cancelled: the flow "
        "keeps that outcome (a flow's end is final; see docs/flows.md)\n"
    )
    assert json.loads(invoke("flow", "show", flow_id, "--json", env=env).stdout)["state"] == (
        "cancelled"
    )
    assert anyio.run(upload_state) == b"queued"


def test_bad_flow_files_are_refused_in_one_line(server: LocalServer, stream: str) -> None:
    env = {"STREAMQ_REDIS_URL": server.url}
    cycle = [
        {"name": "a", "stream": stream, "after": ["b"]},
        {"name": "b", "stream": stream, "after": ["a"]},
    ]
    unknown = [{"name": "a", "stream": stream, "after": ["nope"]}]
    twice = [{"name": "a", "stream": stream}, {"name": "a", "stream": stream}]
    refused = [
        {"name": "a", "stream": stream},
        {"name": "post", "stream": "instagram", "payload": {"text": "no picture"}},
    ]
    cases = [
        (json.dumps(cycle), "streamq: error: the steps' 'after' make a cycle: "),
        (json.dumps(unknown), "streamq: error: step 'a' is after unknown step 'nope'"),
        (json.dumps(twice), "streamq: error: duplicate step name 'a'"),
        (json.dumps(refused), "streamq: error: step 'post': instagram post refused: "),
        ('[{"name": "a"}]', "streamq: error: flow file -: Object missing required field"),
        ("{", "streamq: error: flow file - is not valid JSON"),
        # As enqueue refuses them: before the flow's record is written, not a traceback after.
        (
            json.dumps([{"name": "a", "stream": stream, "max_attempts": 0}]),
            "streamq: error: step 'a': max_attempts must be from 1 to ",
        ),
        (
            json.dumps([{"name": "a", "stream": stream, "account": ""}]),
            "streamq: error: step 'a': invalid account ''",
        ),
    ]
    flows_before = anyio.run(flow_records, server.url)
    for text, message in cases:
        ran = invoke("flow", "add", "--file", "-", input=text, env=env)
        assert ran.returncode == 2, (text, ran.stdout)
        assert ran.stderr.startswith(message), ran.stderr
        assert ran.stderr.count("\n") == 1
    assert anyio.run(nothing_enqueued, server.url, stream)
    assert anyio.run(flow_records, server.url) == flows_before
    missing = invoke("flow", "show", "flow:0-0", env=env)
    assert (missing.returncode, missing.stderr) == (1, "streamq: error: no flow 'flow:0-0'\n")


async def nothing_enqueued(url: str, stream: str) -> bool:
    """No lane or schedule of the stream was written for the refused files."""
    client = connection.client(url)
    try:
        return int(await client.exists(*keys.lanes(stream), keys.delayed(stream))) == 0
    finally:
        await client.aclose()


async def flow_records(url: str) -> int:
    """How many flow records the server holds (other tests' among them)."""
    client = connection.client(url)
    try:
        return len([key async for key in client.scan_iter(match=keys.flow("*"))])
    finally:
        await client.aclose()


def test_cancelling_a_flow_that_ended_is_refused_like_a_finished_job(
    server: LocalServer, stream: str
) -> None:
    env = {"STREAMQ_REDIS_URL": server.url}
    steps = [{"name": "only", "stream": stream, "payload": "p"}]
    flow_id = invoke("flow", "add", "--file", "-", input=json.dumps(steps), env=env).stdout.split()[
        0
    ]
    ran = invoke(
        "consume",
        "--stream",
        stream,
        "--handler",
        "streamq.examples:print_post",
        "--burst",
        env=env,
    )
    assert ran.returncode == 0, ran.stderr

    def state() -> str:
        shown = invoke("flow", "show", flow_id, "--json", env=env)
        return str(json.loads(shown.stdout)["state"])

    deadline = time.monotonic() + 10
    while state() != "done":  # the step's end reaches its flow through the outbox
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = invoke("flow", "cancel", flow_id, env=env)
    assert (cancelled.returncode, cancelled.stdout) == (1, "")
    assert cancelled.stderr == (
        f"streamq: error: flow {flow_id} already ended done: nothing to cancel\n"
    )
