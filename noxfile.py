"""The other supported interpreters (3.12, 3.13) run the fast tier: the tests of the typed
boundary, every Lua script through its Python function, the codec and config, the outcome
rules and the CLI's parsing, on the Valkey server alone. The full suite runs on 3.11 (the
README's test command; tests/test_interpreters.py runs these sessions from it).

Sessions use uv to make their virtualenvs (seconds, from uv's cache) and never download an
interpreter: a version that is not installed is skipped (`nox` says so), and the test that
runs them fails in CI rather than skip.
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.12", "3.13"]
FAST_TIER = [
    "tests/test_codec.py",
    "tests/test_keys.py",
    "tests/test_outcomes.py",
    "tests/test_scripts.py",
    "tests/test_validation.py",
    "tests/test_admission.py",
    "tests/test_credentials.py",
]
TEST_TOOLS = ["pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "trustme", "pyyaml"]


def interpreter(version: str) -> str:
    """pyenv's build of the version when there is one (its shims answer only for the
    version pyenv has selected), else the name on PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else f"python{version}"


@nox.session(python=[interpreter(v) for v in PYTHONS], tags=["fast"])
def fast(session: nox.Session) -> None:
    session.install("-e", ".", *TEST_TOOLS)
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow",
        *FAST_TIER,
        env={"STREAMQ_TEST_ENGINES": "valkey"},
    )
