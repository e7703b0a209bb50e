"""The documentation site: it builds with no warning (``mkdocs build --strict``, links and
anchors checked), a link to a missing page or anchor fails the build, and the generated
reference pages (docs/hooks.py) hold every command, option, config field, Redis key and admin
route the code has."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
import yaml
from markdown.extensions.toc import slugify  # type: ignore[import-untyped]  # the toc anchors
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

import streamq
from streamq import admin, cli, config, keys
from tests.conftest import ROOT


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = load_hooks()


def test_the_site_builds_strict_with_no_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    ran = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert "WARNING" not in output, output
    for page in HOOKS.GENERATED:
        assert (site / page.removesuffix(".md") / "index.html").is_file(), page
    python_api = (site / "reference" / "python" / "index.html").read_text(encoding="utf-8")
    public = [getattr(streamq, name) for name in streamq.__all__ if name != "__version__"]
    for obj in [*public, streamq.Queue.enqueue, streamq.Queue.wait]:
        name = f"{obj.__module__}.{obj.__qualname__}"
        assert f'id="{name}"' in python_api, name


# -- the checks of links and anchors, shown on a small site with the real settings ------------


def small_site(tmp_path: Path, index: str, nav: list[Any] | None = None) -> Path:
    """A two-page site with mkdocs.yml's validation and Markdown settings."""
    real = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n{index}\n", encoding="utf-8")
    (docs / "other.md").write_text("# Other\n\n## A section\n\nText.\n", encoding="utf-8")
    settings = {
        "site_name": "small",
        "docs_dir": str(docs),
        "site_dir": str(tmp_path / "site"),
        "strict": real["strict"],
        "validation": real["validation"],
        "markdown_extensions": real["markdown_extensions"],
        "nav": nav if nav is not None else ["index.md", "other.md"],
    }
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def build_small(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings of the build; raises Abort when strict mode stops it."""
    with caplog.at_level(logging.WARNING, logger="mkdocs"):
        build(load_config(str(path)))
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_small_site_builds_when_every_link_resolves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_site(tmp_path, "[other](other.md), [a section](other.md#a-section)")
    assert build_small(path, caplog) == []


@pytest.mark.parametrize(
    ("index", "nav", "warned"),
    [
        ("[gone](missing.md)", None, "'missing.md', but the target is not found"),
        ("[gone](other.md#no-such-section)", None, "anchor '#no-such-section'"),
        ("[gone](#no-such-section)", None, "there is no such anchor on this page"),
        ("[root](/other/)", None, "an absolute link"),
        ("[other](other.md)", ["index.md"], 'not included in the "nav"'),
        ("[other](other.md)", ["index.md", "other.md", "missing.md"], "'missing.md'"),
    ],
    ids=["missing page", "missing anchor", "missing anchor here", "absolute", "omitted", "nav"],
)
def test_a_broken_link_fails_the_strict_build(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    index: str,
    nav: list[Any] | None,
    warned: str,
) -> None:
    with pytest.raises(Abort):
        build_small(small_site(tmp_path, index, nav), caplog)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(warned in message for message in messages), messages


# -- the generated reference pages hold everything the code has ------------------------------


def parsers(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*words, name), sub))
                found += parsers(sub, (*words, name))
    return found


def test_the_cli_reference_has_every_command_and_option() -> None:
    page = HOOKS.cli_reference()
    every = parsers(cli.build_parser())
    assert len(every) >= 40  # groups and their actions
    for words, parser in every:
        assert f"{{#streamq-{'-'.join(words)}}}" in page, words
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"`{flag}" in page, (words, flag)


def test_the_configuration_reference_has_every_table_and_field() -> None:
    page = HOOKS.configuration_reference()
    structs = [
        value
        for value in vars(config).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value is not msgspec.Struct
    ]
    assert len(structs) >= 10
    for struct in structs:
        anchor = "top-level" if struct is config.Config else HOOKS._table_anchor(struct)
        section = page.split(f"{{#{anchor}}}", 1)
        assert len(section) == 2, struct
        table = section[1].split("\n## ", 1)[0]
        for field in msgspec.structs.fields(struct):
            assert f"| `{field.name}` |" in table, (struct, field.name)
    assert "| `concurrency` | `int` | `32` |" in page
    assert "Runs of a job before it is dead-lettered" in page  # a field's docstring


NOT_KEY_BUILDERS = {
    "check_key", "check_account", "check_stream_name", "partition", "partitions", "base_stream",
    "partition_index", "stream_of_job", "lanes", "pause_field", "token_member",
    "stream_prefix", "script_prefix", "token_prefix",
}  # fmt: skip
"""What keys.py holds besides key builders: validators, names of streams, fields, members."""


def test_the_data_layout_has_every_key_builder() -> None:
    page = HOOKS.data_layout_reference()
    builders = [
        name
        for name, function in inspect.getmembers(keys, inspect.isfunction)
        if function.__module__ == keys.__name__
        and not name.startswith("_")
        and name not in NOT_KEY_BUILDERS
    ]
    assert len(builders) >= 30
    for name in builders:
        assert f"`keys.{name}(" in page, name
    assert "| `streamq:{S}:dead` | `keys.dead(S)` | dead letters:" in page
    assert "| `streamq:{S}:rate:a:<A>` | `keys.rate_log(S, <A>)` |" in page
    assert "| `streamq:{S}:rate:p` | `keys.rate_log(S)` |" in page


def test_the_admin_reference_has_every_route_parameter_and_schema() -> None:
    page = HOOKS.admin_api_reference()
    document = admin.openapi_document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert f"### {method.upper()} `{path}` {{#{operation['operationId']}}}" in page
            for parameter in operation.get("parameters", []):
                assert f"| `{parameter['name']}` | {parameter['in']} |" in page, parameter
    for name in document["components"]["schemas"]:
        assert f"### {name} {{#schema-{name.lower()}}}" in page, name


def test_the_events_reference_has_every_type_and_field() -> None:
    page = HOOKS.events_reference()
    for name in config.EVENT_TYPES:
        assert f"| `{name}` |" in page, name
    for field in msgspec.structs.fields(streamq.Event):
        assert f"| `{field.name}` |" in page, field.name
    assert "its stream's events: resume after it" in page  # a field's docstring


def test_an_event_type_without_a_meaning_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "EVENT_TYPES", (*config.EVENT_TYPES, "invented"))
    with pytest.raises(ValueError, match="invented"):
        HOOKS.events_reference()


def test_the_performance_page_is_bench_results_itself() -> None:
    """Figures are not retyped: the page holds every recorded run of bench/RESULTS.md, each
    section one level down under the page's own title."""
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert HOOKS.BENCH_RESULTS in page
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    included = HOOKS.bench_results()
    runs = [line for line in results.splitlines() if line.startswith("## ")]
    assert len(runs) >= 10
    for heading in runs:
        assert f"#{heading}\n" in included, heading
    assert "\n# " not in f"\n{included}"


def test_the_built_in_limits_table_is_the_code_s() -> None:
    from streamq import limiter

    page = (ROOT / "docs" / "rate-limits.md").read_text(encoding="utf-8")
    assert HOOKS.BUILTIN_LIMITS in page
    table = HOOKS.builtin_limits()
    for name in limiter.DEFAULT_LIMITS:
        assert f"\n| {name} | " in table, name
    assert "| x | account 100 / 15m, platform 10,000 / 24h | X API v2" in table


METRIC_LITERAL = re.compile(r"""["'](streamq_[a-z0-9_]+)["']""")
DOC_METRICS = re.compile(r"^\s*\| (`streamq_[^|]+)\|", re.MULTILINE)


def documented_metrics(*pages: str) -> set[str]:
    """The metrics of the pages' tables: `streamq_stream_length`, `_pending` in one cell
    means streamq_stream_length and streamq_stream_pending; a full name stands for itself."""
    found: set[str] = set()
    for page in pages:
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        for first_cell in DOC_METRICS.findall(text):
            names = re.findall(r"`([^`]+)`", first_cell)
            prefix = "_".join(names[0].split("_")[:2]) + "_"
            found.add(names[0])
            found.update(
                name if name.startswith("streamq_") else prefix + name.lstrip("_")
                for name in names[1:]
            )
    return found


def test_the_metrics_tables_name_every_metric_and_no_other() -> None:
    """The Prometheus metrics as the docs list them (monitoring, autoscaling) are the ones the
    code registers: a metric added, renamed or dropped fails here until the docs say so."""
    sources = [*(ROOT / "streamq").rglob("*.py"), *(ROOT / "autoscaler").glob("*.py")]
    registered = {
        name
        for path in sources
        for name in METRIC_LITERAL.findall(path.read_text(encoding="utf-8"))
    }
    from streamq import metrics

    registered |= {f"streamq_stream_{name}" for name, _ in metrics._STREAM_GAUGES}
    assert len(registered) >= 20
    assert documented_metrics("monitoring.md", "autoscaling.md") == registered


# -- the pages issue 26 names, each reachable from the home page -----------------------------

NEWCOMER_TOPICS = {
    "getting started: the demo": "getting-started.md#see-it-work-streamq-demo",
    "getting started: the two commands": "getting-started.md#two-commands",
    "concepts: streams, lanes, groups": "concepts.md#streams-lanes-and-groups",
    "concepts: records": "concepts.md#records",
    "concepts: the job lifecycle": "concepts.md#a-jobs-life",
    "scheduling and time zones": "scheduling.md#scheduling-and-time-zones",
    "retries and dead letters": "scheduling.md#retries-and-dead-letters",
    "rate limits and accounts": "rate-limits.md",
    "publishers": "publishers.md",
    "credentials": "credentials.md",
    "flows": "flows.md",
    "events": "events.md#events",
    "webhooks": "events.md#webhooks",
    "operations: scaling": "operations.md#scaling",
    "operations: the autoscaler": "autoscaling.md",
    "operations: Kubernetes": "kubernetes.md",
    "operations: Redis Cluster": "cluster.md",
    "operations: upgrades": "operations.md#upgrades",
    "operations: backups": "operations.md#backups",
    "monitoring: metrics": "monitoring.md#prometheus-metrics",
    "monitoring: health": "monitoring.md#health-as-a-probe",
    "monitoring: top": "monitoring.md#streamq-top",
    "monitoring: the dashboard": "dashboard.md",
    "reliability: what is guaranteed": "reliability.md#what-is-guaranteed",
    "reliability: the fault table": "reliability.md#faults-and-their-figures",
    "security: ACL": "security.md#least-privilege-redis-users",
    "security: TLS": "security.md#tls",
    "security: secrets": "security.md#secrets",
    "performance: the recorded runs": "performance.md#recorded-runs",
    "reference: CLI": "reference/cli.md",
    "reference: Python API": "reference/python.md",
    "reference: configuration": "reference/configuration.md",
    "reference: data layout": "reference/data-layout.md",
    "reference: events": "reference/events.md",
    "reference: admin API": "reference/admin-api.md",
}
"""Every page (and section) a newcomer looks for, as issue 26 lists them, and where it is."""


def headings_anchors(page: Path) -> set[str]:
    """The anchors the toc extension gives the page's headings (outside code fences)."""

    found: set[str] = set()
    fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            title = re.sub(r"\s*\{#[^}]*\}\s*$", "", line.lstrip("#").strip())
            found.add(slugify(title.replace("`", ""), "-"))
    return found


def test_every_page_a_newcomer_looks_for_exists_and_the_home_page_links_it() -> None:
    """A page or section renamed or dropped fails here (and the strict build fails on the home
    page's link to it)."""
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    generated = set(HOOKS.GENERATED)
    for topic, target in NEWCOMER_TOPICS.items():
        assert f"]({target})" in home, topic
        path, _, anchor = target.partition("#")
        if path in generated:
            continue
        page = ROOT / "docs" / path
        assert page.is_file(), topic
        if anchor:
            assert anchor in headings_anchors(page), topic
    lifecycle = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    diagram = lifecycle.split("## A job's life", 1)[1].split("\n## ", 1)[0]
    assert "diagram of the job lifecycle" in diagram
    for state in ("scheduled", "queued", "running", "retrying", "done", "dead", "expired"):
        assert state in diagram, state


def test_the_layout_names_every_module_and_only_modules_that_exist() -> None:
    """docs/development.md's Layout: every module of streamq/ and autoscaler/ is named there (a
    new module fails until it is), and every file it names exists (a renamed one fails)."""
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    assert layout.rstrip().endswith("."), "the Layout section ends mid-sentence"
    named = set(re.findall(r"`([\w/*]+\.(?:py|md))`", layout))
    trees = [ROOT / "streamq", ROOT / "autoscaler", ROOT / "bench"]
    for name in named:
        found = [
            path
            for tree in trees
            for path in (tree.glob(name) if "/" in name else tree.rglob(name))
        ]
        found += ROOT.glob(name) if "/" in name else []
        assert found, f"the Layout names {name}, which does not exist"
    for tree in trees[:2]:
        for module in tree.glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in named, f"the Layout leaves out {module}"


RUN_LINK = re.compile(r"\]\(performance\.md#(\d[^)]*)\)")
"""A link to one recorded run: its anchor starts with its date."""


def test_figures_cited_on_other_pages_link_the_recorded_run_they_come_from() -> None:
    """A page that quotes a measured figure links the dated run of bench/RESULTS.md it comes
    from (a section of the performance page, with its machine and load), so a reader can check
    it and a run renamed or dropped fails here and in the strict build."""

    runs = {
        slugify(line[3:].replace("`", ""), "-")
        for line in (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    linked = 0
    for page in sorted((ROOT / "docs").rglob("*.md")):
        if page.name in ("performance.md", "development.md"):
            continue
        text = page.read_text(encoding="utf-8")
        anchors = RUN_LINK.findall(text)
        for anchor in anchors:
            assert anchor in runs, (page.name, anchor)
        linked += len(anchors)
        if "bench/RESULTS.md" in text:
            assert anchors, f"{page.name} cites bench/RESULTS.md without linking the run"
    assert linked >= 10
