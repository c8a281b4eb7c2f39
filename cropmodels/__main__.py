"""Command line of the core: ``python -m cropmodels <command> ...``.

Each command is a function taking the parsed arguments and returning an exit code; later
commands (extract, train, evaluate, classify, models) are added to ``build_parser`` the
same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from . import __version__

Command = Callable[[argparse.Namespace], int]


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect

    report = collect()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return 1 if report.missing else 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="python -m cropmodels",
        description="Parcel crop classification after Garnot et al. (IGARSS 2019).",
    )
    parser.add_argument("--version", action="version", version=f"cropmodels {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}

    p = sub.add_parser("doctor", help="report versions, missing packages and the device in use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    commands["doctor"] = cmd_doctor

    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
