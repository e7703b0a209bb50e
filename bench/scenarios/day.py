"""day: placeholder."""

from __future__ import annotations

import argparse

from bench.common import Section
from bench.report import UI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    return []
