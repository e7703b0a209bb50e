"""Every key name comes from streamq.keys: the names the scripts build themselves, the README's
data-layout table and keys.py's own docstring all agree with its functions."""

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
        keys.paused(S): "paused",
        keys.pause_reasons(S): "pause_reasons",
        keys.parked(S, A): "parked",
        keys.samples(S): "samples",
        keys.lateness(S): "lateness",
    }


def test_the_readme_data_layout_table_lists_exactly_the_keys_of_keys_py() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Redis data layout", 1)[1].split("\n## ", 1)[0]
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
    """Scripts build per-account keys and records from the stream's prefix ('streamq:{S}:'):
    each fragment they append must give the name keys.py gives."""
    prefix = keys.script_prefix(S)
    built = {
        "events": keys.events(S),
        "meta": keys.meta(S),
        "paused": keys.paused(S),
        "plan:p": keys.plan(S),
        "job:": keys.job(S, ""),
        "lane:": keys.lane(S, "high").removesuffix("high"),
        "held:": keys.held(S, ""),
        "parked:": keys.parked(S, ""),
        "plan:a:": keys.plan(S, ""),
        "rate:a:": keys.rate_log(S, ""),
        "turns:": keys.turns(S, ""),
    }
    found: set[str] = set()
    for name in scripts.names():
        source = scripts.load(name).source.decode()
        found.update(re.findall(r"prefix \.\. '([^']*)'", source))
        # The reasons hash is the paused hash's name plus ':why'.
        for suffix in re.findall(r"paused \.\. '([^']*)'", source):
            assert keys.paused(S) + suffix == keys.pause_reasons(S)
    assert found, "no script builds a name: this test no longer looks at the right thing"
    assert found <= set(built), f"names keys.py does not know: {found - set(built)}"
    for fragment in found:
        assert prefix + fragment == built[fragment], fragment


def test_the_autoscalers_lock_is_named_by_keys_py() -> None:
    assert keys.autoscaler_leader(["b", "a"]) == "streamq:autoscaler:leader:a,b"
    assert keys.autoscaler_fence(["a", "b"]) == "streamq:autoscaler:leader:a,b:fence"
