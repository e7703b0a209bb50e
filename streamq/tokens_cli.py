"""The command line of the token store: ``streamq tokens put|import|list|keygen`` and
``streamq account status``. cli.py wires these in; this module holds what they do.

No token is ever taken from the command line (it would show in ``ps`` and shell history):
``tokens put`` reads the platform's JSON answer from standard input or a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import msgspec

from streamq import limiter, platforms, tokens
from streamq.client import Queue
from streamq.config import Config
from streamq.errors import ConfigError
from streamq.platforms.credentials import Secret, load_provider
from streamq.tokens import Tokens
from streamq.tokenstore import Keyring, TokenStatus


def add_tokens_parser(commands: Any, common: argparse.ArgumentParser, parser_class: Any) -> None:
    tokens = commands.add_parser("tokens", parents=[common], help="the token store")
    actions = tokens.add_subparsers(dest="action", required=True, parser_class=parser_class)
    put = actions.add_parser(
        "put",
        parents=[common],
        help="store an account's tokens (JSON on stdin or --file); resumes it if it waited",
    )
    put.add_argument("platform", choices=platforms.PLATFORMS)
    put.add_argument("account")
    put.add_argument(
        "--file",
        help='JSON file ("-": stdin, the default): {"access_token", "refresh_token", '
        '"expires_in", "scope", "user_id"}, as the platform answered the sign-in',
    )
    imported = actions.add_parser(
        "import", parents=[common], help="copy tokens from another provider into the store"
    )
    imported.add_argument("platform", choices=platforms.PLATFORMS)
    imported.add_argument("account", nargs="+")
    imported.add_argument(
        "--from",
        dest="source",
        default=None,
        help='"env" (default), "file:PATH" or "package.module:function"',
    )
    listing = actions.add_parser("list", parents=[common], help="every stored account's state")
    listing.add_argument("--json", action="store_true")
    actions.add_parser("keygen", parents=[common], help="print a new encryption key entry")


def add_account_status(account_actions: Any, common: argparse.ArgumentParser) -> None:
    status = account_actions.add_parser(
        "status", parents=[common], help="an account's token and pauses"
    )
    status.add_argument("platform", choices=platforms.PLATFORMS)
    status.add_argument("account")
    status.add_argument("--json", action="store_true")


async def tokens_command(args: argparse.Namespace, config: Config) -> int:
    if args.action == "keygen":
        print(Keyring.generate(f"k{int(time.time())}"))
        return 0
    async with Queue(args.redis_url, config=config) as q:
        store = Tokens(q)
        if args.action == "put":
            return await _put(store, args)
        if args.action == "import":
            provider = load_provider(args.source or "env")
            pairs = [(args.platform, limiter.check_account(a)) for a in args.account]
            copied = await store.import_from(provider, pairs)
            for platform, account in copied:
                print(f"{platform}/{account}: imported")
            missing = len(pairs) - len(copied)
            if missing:
                print(f"{missing} account(s) had no token in that provider", file=sys.stderr)
            return 0 if copied else 1
        rows = [
            status
            for platform, account in await store.store.accounts()
            if (status := await store.status(platform, account)) is not None
        ]
        if args.json:
            sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        for row in rows if not args.json else []:
            print(_status_line(row))
        if not rows and not args.json:
            print("no tokens stored")
    return 0


async def _put(store: Tokens, args: argparse.Namespace) -> int:
    limiter.check_account(args.account)
    source = args.file or "-"
    try:
        text = sys.stdin.read() if source == "-" else open(source).read()  # noqa: SIM115, ASYNC230
        answer = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"tokens file {source}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError("the tokens are not JSON (the text is not shown)") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise ConfigError('the tokens must be a JSON object with "access_token"')
    scope = answer.get("scope") or ""
    resumed = await store.put(
        args.platform,
        args.account,
        Secret(answer["access_token"]),
        refresh_token=Secret(answer["refresh_token"]) if answer.get("refresh_token") else None,
        expires_in=None if answer.get("expires_in") is None else float(answer["expires_in"]),
        refresh_expires_in=(
            None
            if answer.get("refresh_token_expires_in") is None
            else float(answer["refresh_token_expires_in"])
        ),
        scopes=scope.replace(",", " ").split() if isinstance(scope, str) else list(scope),
        user_id=None if answer.get("user_id") is None else str(answer["user_id"]),
    )
    shown = f"{args.platform}/{args.account}: stored"
    print(shown + (f"; resumed, {resumed} waiting jobs released" if resumed else ""))
    return 0


def _status_line(row: TokenStatus) -> str:
    expires = row.expires_in_seconds
    life = "no expiry" if expires is None else f"expires in {expires:g}s"
    extra = f" ({row.reason})" if row.reason else ""
    return (
        f"{row.platform}/{row.account}: {row.state}{extra}, {life}, "
        f"refreshes {row.refreshes}, version {row.version}"
    )


async def account_status(args: argparse.Namespace, config: Config) -> int:
    """The account's token state and its pauses on the platform's streams."""
    limiter.check_account(args.account)
    async with Queue(args.redis_url, config=config) as q:
        report = await tokens.account_status(q.redis, config, args.platform, args.account)
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return 0
    print(f"{args.platform}/{args.account}: {report.state}")
    if report.token is not None:
        print(f"  token: {_status_line(report.token)}")
    for pause in report.pauses:
        print(f"  paused on {pause.stream}: {pause.reason}")
    return 0
