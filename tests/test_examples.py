"""Every code block a reader sees in the README and the docs is run, or says why not.

A fenced block is one of (tests/doc_examples.py, ``fences``):

- a ```` ```console ```` block: run as written by tests/test_readme_examples.py;
- a file under ``examples/``, named by the fence's title (``title="examples/x.py"``): on a
  docs page its body is the include ``--8<-- "examples/x.py"`` (pymdownx.snippets puts the file
  there at build time), in the README (which GitHub shows without includes) a verbatim copy of
  the file, held to it here. Every ``examples/*.py`` runs below against a real server;
  the data files (``post.json``, ``flow.json``, ...) are used by console blocks, and the
  configuration file is loaded by streamq;
- a ```` ```toml ```` block of streamq's configuration: loaded here by ``streamq.config``, so a
  misspelt field or a bad value fails (the same reading ``streamq --config`` does);
- marked not run, visibly: its title says ``Not run: <why>`` (shown above the block on the
  site), e.g. ```` ```sh title="Not run: installs the package" ````.

Anything else fails ``test_every_block_is_run_or_says_why_not``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamq import config
from streamq.errors import ConfigError
from streamq.server import LocalServer
from tests.conftest import ROOT
from tests.doc_examples import Fence, all_documents, blocks, documents, fences

EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
NOT_RUN = "Not run: "
CONFIG_FILE = EXAMPLES / "streamq.toml"


def problem(fence: Fence) -> str | None:
    """Why this block breaks the rule, or None."""
    if fence.language == "console":
        return None
    title = fence.title or ""
    if title.startswith("examples/"):
        path = ROOT / title
        if not path.is_file():
            return f"names {title}, which does not exist"
        included = f'--8<-- "{title}"'
        if fence.body.strip() == included:
            return None if fence.document.parent != ROOT else "the README cannot include"
        if fence.body.strip() == path.read_text(encoding="utf-8").strip():
            return None
        return f"is neither the include {included!r} nor a copy of {title}"
    if title.startswith(NOT_RUN):
        return None if len(title.removeprefix(NOT_RUN).strip()) >= 10 else "gives no reason"
    if fence.language == "toml":
        try:
            config.parse_config(tomllib.loads(fence.body), source=fence.source)
        except (ConfigError, tomllib.TOMLDecodeError) as exc:
            return f"is not a configuration streamq loads: {exc}"
        return None
    return "is not run, included from examples/, nor marked 'Not run: <why>'"


FENCES = [fence for path in all_documents(ROOT) for fence in fences(path)]


def test_there_are_blocks_of_every_kind() -> None:
    kinds = {fence.language for fence in FENCES}
    assert {"console", "python", "toml"} <= kinds
    assert any((fence.title or "").startswith("examples/") for fence in FENCES)


@pytest.mark.parametrize("fence", FENCES, ids=lambda fence: fence.source)
def test_every_block_is_run_or_says_why_not(fence: Fence) -> None:
    assert problem(fence) is None, f"{fence.source}: the block {problem(fence)}"


def test_an_unmarked_block_is_refused(tmp_path: Path) -> None:
    """The rule itself: each kind of block it takes, and the ones it must not."""
    page = tmp_path / "page.md"
    page.write_text(
        '```python\nprint("hi")\n```\n'
        '```sh title="Not run: installs the package"\npip install streamq\n```\n'
        '```sh title="Not run: "\npip install streamq\n```\n'
        '```python title="examples/taste.py"\n--8<-- "examples/taste.py"\n```\n'
        '```python title="examples/taste.py"\nprint("not the file")\n```\n'
        "```toml\n[streams.x]\nconcurency = 3\n```\n"
        "```toml\n[streams.x]\nconcurrency = 3\n```\n"
        "  ```console\n  $ streamq stats\n  ```\n",
        encoding="utf-8",
    )
    found = [problem(fence) for fence in fences(page)]
    assert [p is None for p in found] == [False, True, False, True, False, False, True, True]


def test_every_example_file_is_one_the_docs_use() -> None:
    """Every file shipped under examples/ (scripts, the handler module, the configuration, and
    the data files: post.json, posts.jsonl, flow.json, tokens) is used by the docs as the suite
    runs them: included into a page (a fence's title), or named by a console command that
    tests/test_readme_examples.py runs. None is only read, or only run."""
    commands = " ".join(
        command.text
        for path in documents(ROOT)
        for block in blocks(path)
        for command in block.commands
    )
    titles = " ".join(str(fence.title) for fence in FENCES)
    shipped = [
        path
        for path in sorted(EXAMPLES.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.name != "__init__.py"
    ]
    assert {"post.json", "posts.jsonl", "flow.json", "streamq.toml", "handlers.py"} <= {
        path.name for path in shipped
    }
    for path in shipped:
        name = path.relative_to(ROOT).as_posix()
        assert name in titles or name in commands, f"{name} is shipped but no page uses it"


def test_the_example_configuration_loads() -> None:
    loaded = config.load_config(CONFIG_FILE)
    assert loaded.streams["instagram"].handler == "mypkg.handlers:publish"


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """The README's second command is exactly what .ci/run runs, so it works as written."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.startswith("pip install -q -e")
    assert ci in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def own_server() -> Iterator[LocalServer]:
    """A server of the examples' own: their stream names and keys are fixed, as a reader's."""
    with LocalServer() as srv:
        yield srv


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_example_runs(script: Path, own_server: LocalServer) -> None:
    """Each examples/*.py as a reader runs it, against a server of its own: exit 0, no
    traceback; what it checks it asserts itself. Twice, as a reader trying it again would:
    what the first run left (keys held, jobs queued) must not break the second."""
    for _ in range(2):
        ran = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env={
                **os.environ,
                "STREAMQ_REDIS_URL": own_server.url,
                "PYTHONPATH": str(EXAMPLES),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "Traceback" not in ran.stderr, ran.stderr


MEASURED = re.compile(
    r"\d[\d,.]*\s*(?:jobs/s|posts/s|/s\b|ms\b|µs|[KMG]i?B\b|bytes|%|(?:jobs|posts) a second)"
)
"""What a measured figure looks like: a rate, a latency, a size, a share."""


def test_the_readme_is_the_front_door() -> None:
    """Issue 26's README: at most ~150 lines; what it is, the demo, the two commands, a taste of
    the API, where the docs are, the Python versions supported and tested, status and limits;
    and no measured figure (those live in bench/RESULTS.md, which the docs include)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    for needed in ("See it work", "Two commands", "A taste of the API", "Documentation",
                   "Python versions", "Container image", "Status and limits"):  # fmt: skip
        assert needed in sections, needed
    versions = text.split("\n## Python versions\n", 1)[1].split("\n## ", 1)[0]
    assert "3.11, 3.12 and 3.13 are supported" in versions
    assert "full suite runs on 3.11" in versions
    assert "`noxfile.py`" in versions
    assert "`streamq demo`" in text
    assert "`bench/RESULTS.md`" in text
    assert MEASURED.findall(text) == []
