"""The package as a team installs it: the wheel and sdist build and pass `twine check`, and the
wheel, installed alone into a fresh virtualenv away from the checkout, carries everything
streamq needs at run time (its Lua scripts, the dashboard's assets, py.typed): `streamq demo
--duration 5s`, run by the venv's own `streamq` script, loses nothing."""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import streamq
from tests.conftest import ROOT


class Installed:
    """The wheel installed alone into a fresh virtualenv, away from the checkout: the venv's
    own ``streamq`` script and interpreter, run from a directory of their own."""

    def __init__(self, wheel: Path, venv: Path, home: Path) -> None:
        self.wheel = wheel
        self.venv = venv
        self.home = home

    @property
    def site_packages(self) -> Path:
        [site] = self.venv.glob("lib/python3.*/site-packages")
        return site

    def run(
        self, program: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(self.venv / "bin" / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
            env=env,
        )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv holding the wheel (with its ``streamq`` script) and no checkout. Its
    dependencies are this environment's, appended to its path by a ``.pth`` line so that no
    index is needed: a directory added that way has its own ``.pth`` files ignored, so the
    editable install's pointer at the checkout there does not apply."""
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path_factory.mktemp("venv")
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    fresh = Installed(wheel, venv, tmp_path_factory.mktemp("home"))
    dependencies = sysconfig.get_paths()["purelib"]
    (fresh.site_packages / "_test_dependencies.pth").write_text(dependencies + "\n")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    return fresh


def test_the_wheel_and_sdist_pass_twine_check_and_carry_the_version(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert [f.name for f in files] == [
        f"streamq-{streamq.__version__}-py3-none-any.whl",
        f"streamq-{streamq.__version__}.tar.gz",
    ]
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_wheel_says_its_version_pythons_and_where_its_docs_and_changes_are(
    dist: Path,
) -> None:
    """The metadata a team's tools read: the version, the Pythons supported (the ones noxfile.py
    and the suite test, no more), typed, and the project's URLs."""
    import noxfile

    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    assert metadata["Version"] == streamq.__version__
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = metadata.get_all("Classifier") or []
    supported = sorted(c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(
        r"Programming Language :: Python :: 3\.\d+", c))  # fmt: skip
    assert supported == sorted(["3.11", *noxfile.PYTHONS])
    assert "Typing :: Typed" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)


def test_the_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in text
    releases = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert releases[0] == "[Unreleased]"
    for release in releases[1:]:
        assert re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", release), release
    assert f"## [{streamq.__version__}] - " in text
    kinds = set(re.findall(r"^### (.+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


def test_the_wheel_ships_every_script_asset_and_py_typed(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    for source in [
        *(ROOT / "streamq" / "lua").rglob("*.lua"),
        *(ROOT / "streamq" / "admin_static").rglob("*"),
        ROOT / "streamq" / "py.typed",
    ]:
        if source.is_file():
            assert source.relative_to(ROOT).as_posix() in names, source
    assert not any(name.startswith("tests/") for name in names)
    where = installed.run("python", "-c", "import streamq; print(streamq.__file__)")
    assert where.stdout.strip() == str(installed.site_packages / "streamq" / "__init__.py"), where


@pytest.mark.slow
def test_the_installed_demo_loses_nothing_and_posts_nothing_twice(installed: Installed) -> None:
    before = set(os.listdir("/tmp"))
    result = installed.run("streamq", "demo", "--duration", "5s", "--json", "--seed", "7")
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["lost"] == 0
    assert summary["unfinished"] == 0
    assert summary["duplicates"] == 0
    assert summary["published"] >= 200
    assert summary["dead"] > 0  # the posts that break the content policy
    assert summary["expired"] == 3
    assert summary["refused_at_enqueue"] == 3
    assert summary["rate_limited"] > 0  # the launch burst on x
    assert summary["published"] + summary["dead"] + summary["expired"] == summary["scheduled"]
    # Some content goes out as flows: cross-posts, and a launch whose instagram step is followed
    # by the first comment on the media it published (checked against the simulator's record,
    # with the flows' posts, in lost and duplicates above).
    assert summary["flows"] == 4
    assert summary["flows_done"] == 4
    assert summary["flows_failed"] == 0
    assert summary["comments"] == 1
    # A job is recovered only after an answer lost once the platform had taken the post, or a
    # request that timed out on this busy machine (a retry): not every lookup that listed some
    # post of the account (it said 45 recovered beside 2 lost answers).
    sim = summary["simulator"]
    lost_answers = sim["lost_answers"] + sim["dropped"] + sim["hung"]
    assert summary["recovered_by_lookup"] <= lost_answers + summary["retried"]
    assert summary["recovered_by_lookup"] < sim["lookups"]
    assert summary["simulator"]["comments"] == 1
    # Tokens expire during the demo: refreshed, once per account per expiry; a revoked refresh
    # token is presented only by the account whose user revoked the app (a new sign-in then
    # resumes it: nothing is lost, as asserted above).
    assert summary["token_refreshes"] > 0
    assert summary["simulator"]["early_refreshes"] == 0
    assert summary["simulator"]["revoked_refresh_presented"] <= 1
    assert summary["reauth_required"] <= 1
    # It cleaned up: its home is gone and its server stopped.
    assert not os.path.exists(summary["home"])
    assert _gone(summary["server_pid"])
    assert not {name for name in set(os.listdir("/tmp")) - before if name.startswith("sqdemo-")}


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts: this sandbox's init does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" in status.read_text()
