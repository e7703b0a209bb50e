"""``streamq admin``: the HTTP admin API and the web dashboard."""

from __future__ import annotations

import argparse
from typing import Any

from streamq.client import Queue
from streamq.commands.common import command, port
from streamq.config import Config


def register(commands: Any) -> None:
    admin = command(commands, "admin", "serve the HTTP admin API and the web dashboard", run)
    admin.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    admin.add_argument("--port", type=port, default=8080, help="port (8080; 0: any free port)")
    admin.add_argument(
        "--token-file",
        help="file holding one read-write bearer token, named admin (or $STREAMQ_ADMIN_TOKEN)",
    )
    admin.add_argument(
        "--tokens-file",
        help="TOML file of named tokens: [tokens.NAME] token = ... role = read-only|read-write "
        "(or $STREAMQ_ADMIN_TOKENS: NAME:ROLE:TOKEN,...)",
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    from streamq import admin

    admin_tokens = admin.load_tokens(args.token_file, args.tokens_file)
    sock = admin.bind(args.host, args.port)
    with sock:
        async with Queue(args.redis_url, config=config) as q:
            app = admin.create_app(q.redis, admin_tokens, config)
            print(f"streamq admin: serving {admin.url_of(sock)}", flush=True)
            await admin.serve(app, sock)
    return 0
