"""The ``scoretut`` command line (also ``python -m scoretut``).

``scoretut toy train|sample|eval …`` (:mod:`~scoretut.cli.toy`) and ``scoretut ddpm
proxy|train|sample|fid …`` (:mod:`~scoretut.cli.ddpm`).
Bad input never ends in a traceback: it prints one line naming the fix and exits with code 2;
:mod:`~scoretut.cli.common` maps the argument a library error names to its flag.
"""

from __future__ import annotations

import sys
from typing import Sequence

from scoretut.cli import ddpm, toy
from scoretut.cli.common import Parser, with_flags
from scoretut.errors import UsageError

COMMANDS = {**toy.COMMANDS, **ddpm.COMMANDS}


def build_parser() -> Parser:
    parser = Parser(prog="scoretut", description="Score-based and diffusion models from the command line.")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=Parser)
    toy.add_parsers(groups)
    ddpm.add_parsers(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[(args.group, args.cmd)](args)
    except UsageError as e:
        print(f"scoretut: error: {with_flags(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scoretut: interrupted; resume training with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
