"""The ``omnixan-lb`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .exceptions import ConfigurationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnixan-lb", description="OMNIXAN load balancer")
    parser.add_argument("--version", action="version", version=f"omnixan-lb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    sub.add_parser("demo", help="run the library against three real local HTTP backends")
    check = sub.add_parser("check", help="validate a config file and exit (0 valid, 2 invalid)")
    check.add_argument("--config", "-c", default=os.environ.get("OMNIXAN_LB_CONFIG"),
                       help="config file (YAML or TOML); default $OMNIXAN_LB_CONFIG")  # fmt: skip
    return parser


def check(path: str | None) -> int:
    from .server.config import load_config

    if not path:
        print("omnixan-lb check: no config file (use --config FILE or set OMNIXAN_LB_CONFIG)", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        return 2
    print(f"{path}: ok ({len(config.backends)} backends, algorithm {config.algorithm.algorithm_type.value})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"omnixan-lb {__version__}")
        return 0
    if args.command == "check":
        return check(args.config)
    if args.command == "demo":
        from .demo import main as demo

        return demo()
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
