"""The ``omnixan-lb`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnixan-lb", description="OMNIXAN load balancer")
    parser.add_argument("--version", action="version", version=f"omnixan-lb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    sub.add_parser("demo", help="run the library against three real local HTTP backends")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"omnixan-lb {__version__}")
        return 0
    if args.command == "demo":
        from .demo import main as demo

        return demo()
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
