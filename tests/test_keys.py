"""Every key name comes from streamq.keys: the names the scripts build themselves, the docs'
data-layout table (docs/concepts.md) and keys.py's own docstring all agree with its functions."""

from __future__ import annotations

import re

from streamq import keys, scripts
from tests.conftest import ROOT

S, A = "S", "<A>"


def documented() -> dict[str, str]:
    """Every key pattern keys.py names, built by its functions for stream S and account <A>."""
    return {
        keys.STREAM_REGISTRY: "registry",
        **{keys.lane(S, lane): "lane" for lane in keys.LANES},
        keys.dead(S): "dead",
        keys.dedup(S): "dedup",
        keys.delayed(S): "delayed",
        keys.job(S, "<id>"): "job",
        keys.counts(S): "counts",
        keys.events(S): "events",
        keys.meta(S): "meta",
        keys.control(S): "control",
        keys.cron(S): "cron",
        keys.cron_fired(S): "cron_fired",
        keys.rate_log(S): "rate_log",
        keys.rate_log(S, A): "rate_log",
        keys.plan(S): "plan",
        keys.plan(S, A): "plan",
        keys.turns(S, A): "turns",
        keys.held(S, A): "held",
        keys.due(S, A): "due",
        keys.holding(S): "holding",
        keys.finished(S, "<state>"): "finished",
        keys.paused(S): "paused",
        keys.pause_reasons(S): "pause_reasons",
        keys.parked(S, A): "parked",
        keys.samples(S): "samples",
        keys.series(S, "<minute ms>"): "series",  # type: ignore[arg-type]
        keys.lateness(S): "lateness",
        keys.workers(S): "workers",
        keys.workers_gone(S): "workers_gone",
        keys.liveness(S): "liveness",
        keys.flow_outbox(S): "flow_outbox",
        keys.flows_told(S): "flows_told",
        keys.flow("flow:<F>"): "flow",
        keys.flow_key("<K>"): "flow_key",
    }


def test_the_docs_data_layout_table_lists_exactly_the_keys_of_keys_py() -> None:
    """The table a newcomer reads (docs/concepts.md, with each key's type and what it holds);
    the reference page beside it is generated from keys.py itself."""
    page = (ROOT / "docs" / "concepts.md").read_text()
    section = page.split("## Redis data layout", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first_cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", first_cell)
        base = names[0]
        listed.add(base)
        stem = keys.stream_prefix(S)
        # `streamq:{S}:cron`, `:cron:last`: the later names are short for the same stream's.
        listed.update(stem + name for name in names[1:])
    assert listed == set(documented())


def test_keys_py_docstring_names_every_key() -> None:
    doc = keys.__doc__ or ""
    stem = keys.stream_prefix(S) + ":"
    for key in documented():
        if key.startswith(stem):
            kind = key.removeprefix(stem).split(":")[0]
            assert f"streamq:{{S}}:{kind}" in doc, key
        else:
            assert key in doc, key


def test_every_name_a_script_builds_is_one_keys_py_builds() -> None:
    """Scripts build per-account keys and records from the stream's prefix ('streamq:{S}:'), in
    one include, lua/include/stream_keys.lua: each of its functions must give the name keys.py
    gives, and no script may build a name anywhere else."""
    expected = {
        "job_key": keys.job(S, A),
        "lane_key": keys.lane(S, "high").removesuffix("high") + A,
        "events_key": keys.events(S),
        "meta_key": keys.meta(S),
        "paused_key": keys.paused(S),
        "rate_key": keys.rate_log(S, A),
        "platform_plan_key": keys.plan(S),
        "plan_key": keys.plan(S, A),
        "parked_key": keys.parked(S, A),
        "turns_key": keys.turns(S, A),
        "held_key": keys.held(S, A),
        "due_key": keys.due(S, A),
        "holding_key": keys.holding(S),
        "finished_key": keys.finished(S, A),
        "flow_outbox_key": keys.flow_outbox(S),
        "liveness_key": keys.liveness(S),
    }
    # The one name of two parts (a lane and an account).
    assert keys.order(S, "high", A) == keys.script_prefix(S) + "order:high:" + A
    include = (ROOT / "streamq/lua/include/stream_keys.lua").read_text()
    defined = re.findall(
        r"^local function (\w+)\(prefix(?:, \w+)?\) return prefix \.\. '([^']*)'( \.\. \w+)? end$",
        include,
        re.MULTILINE,
    )
    assert {name for name, _, _ in defined} == set(expected)
    assert (
        "local function order_key(prefix, lane, account)\n"
        "  return prefix .. 'order:' .. lane .. ':' .. account\nend\n"
    ) in include
    for name, fragment, tail in defined:
        assert keys.script_prefix(S) + fragment + (A if tail else "") == expected[name], name
    for name in scripts.names():
        source = scripts.load(name).source.decode().replace(include, "")
        assert "prefix .. '" not in source, f"{name} builds a key name outside stream_keys.lua"
        for suffix in re.findall(r"paused \.\. '([^']*)'", source):
            assert keys.paused(S) + suffix == keys.pause_reasons(S)


def test_the_autoscalers_lock_is_named_by_keys_py() -> None:
    assert keys.autoscaler_leader(["b", "a"]) == "streamq:autoscaler:leader:a,b"
    assert keys.autoscaler_fence(["a", "b"]) == "streamq:autoscaler:leader:a,b:fence"
