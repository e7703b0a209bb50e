"""``streamq completion bash|zsh|fish``: the shell's tab-completion script (argcomplete).

eval "$(streamq completion bash)"        # in ~/.bashrc
eval "$(streamq completion zsh)"         # in ~/.zshrc
streamq completion fish | source         # in ~/.config/fish/config.fish
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamq.commands.common import command
from streamq.config import Config

SHELLS = ("bash", "zsh", "fish")


def register(commands: Any) -> None:
    completion = command(
        commands, "completion", "print the tab-completion script of a shell", run, connects=False
    )
    completion.add_argument("shell", choices=SHELLS, help="bash, zsh or fish")


async def run(args: argparse.Namespace, config: Config) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["streamq"], shell=args.shell))
    return 0
