"""``streamq tokens put|import|list|keygen`` and ``streamq account status``: the token store
from the command line.

No token is ever taken from the command line (it would show in ``ps`` and shell history):
``tokens put`` reads the platform's JSON answer from standard input or a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from streamq import limiter, platforms, tokens
from streamq.client import Queue
from streamq.commands.common import NotFound, command, group, nothing, print_json
from streamq.config import Config
from streamq.errors import ConfigError
from streamq.platforms.credentials import Secret, load_provider
from streamq.tokens import Tokens
from streamq.tokenstore import Keyring, TokenStatus, TokenStore


def register(commands: Any) -> None:
    actions = group(commands, "tokens", "the token store: put, import, list tokens")
    put = command(
        actions,
        "put",
        "store an account's tokens (JSON on stdin or --file); resumes it if it waited",
        run_put,
    )
    put.add_argument("platform", choices=platforms.PLATFORMS, help="the platform")
    put.add_argument("account", help="the account, as given to enqueue --account")
    put.add_argument(
        "--file",
        help='JSON file ("-": stdin, the default): {"access_token", "refresh_token", '
        '"expires_in", "scope", "user_id"}, as the platform answered the sign-in',
    )
    imported = command(
        actions, "import", "copy tokens from another provider into the store", run_import
    )
    imported.add_argument("platform", choices=platforms.PLATFORMS, help="the platform")
    imported.add_argument("account", nargs="+", help="the accounts to copy")
    imported.add_argument(
        "--from",
        dest="source",
        default=None,
        help='"env" (default), "file:PATH" or "package.module:function"',
    )
    listing = command(actions, "list", "every stored account's token state", run_list)
    listing.add_argument("--json", action="store_true", help="one JSON array")
    command(actions, "keygen", "print a new encryption key entry", run_keygen)


def add_account_status(actions: Any) -> None:
    """``streamq account status PLATFORM ACCOUNT`` (wired in by streamq.commands.account)."""
    status = command(actions, "status", "an account's token state and pauses", account_status)
    status.add_argument("platform", choices=platforms.PLATFORMS, help="the platform")
    status.add_argument("account", help="the account, as given to enqueue --account")
    status.add_argument("--json", action="store_true", help="one JSON object")


async def run_keygen(args: argparse.Namespace, config: Config) -> int:
    print(Keyring.generate(f"k{int(time.time())}"))
    return 0


async def run_put(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        return await _put(Tokens(q), args)


async def run_import(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        provider = load_provider(args.source or "env")
        pairs = [(args.platform, limiter.check_account(a)) for a in args.account]
        copied = await Tokens(q).import_from(provider, pairs)
    for platform, account in copied:
        print(f"{platform}/{account}: imported")
    missing = len(pairs) - len(copied)
    if missing:
        print(f"{missing} account(s) had no token in that provider", file=sys.stderr)
    if not copied:
        raise NotFound("no token found for those accounts")
    return 0


async def run_list(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        store = TokenStore(q.redis, None)  # states only: no key needed
        rows = [
            status
            for platform, account in await store.accounts()
            if (status := await store.status(platform, account)) is not None
        ]
    if args.json:
        print_json(rows)
    elif not rows:
        nothing("no tokens stored")
    for row in rows if not args.json else []:
        print(_status_line(row))
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
        print_json(report)
        return 0
    print(f"{args.platform}/{args.account}: {report.state}")
    if report.token is not None:
        print(f"  token: {_status_line(report.token)}")
    for pause in report.pauses:
        print(f"  paused on {pause.stream}: {pause.reason}")
    return 0
