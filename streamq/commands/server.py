"""``streamq server start|stop|status``: the embedded Valkey server."""

from __future__ import annotations

import argparse
from typing import Any

from streamq import server
from streamq.commands.common import FAILURE, command, group, print_json
from streamq.config import Config


def register(commands: Any) -> None:
    actions = group(commands, "server", "manage the embedded Valkey server", connects=False)
    command(actions, "start", "start it (if not running) and print its URL", start, connects=False)
    command(actions, "stop", "stop it (if running)", stop, connects=False)
    status_parser = command(
        actions, "status", "running or not (exit 1 when not)", status, connects=False
    )
    status_parser.add_argument("--json", action="store_true", help="print the state as JSON")


async def start(args: argparse.Namespace, config: Config) -> int:
    state = server.start()
    print(f"running: pid {state.pid}, {server.url_for(state.home)}")
    return 0


async def stop(args: argparse.Namespace, config: Config) -> int:
    print("stopped" if server.stop() else "not running")
    return 0


async def status(args: argparse.Namespace, config: Config) -> int:
    state = server.status()
    url = server.url_for(state.home)
    if args.json:
        print_json({"running": state.running, "pid": state.pid, "url": url,
                    "version": state.version, "home": str(state.home)})  # fmt: skip
    elif state.running:
        print(f"running: pid {state.pid}, {url}, valkey {state.version}")
    else:
        print(f"not running (home {state.home})")
    return 0 if state.running else FAILURE
