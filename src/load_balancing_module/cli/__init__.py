"""The ``omnixan-lb`` command line: serve, check, demo, status.

Nothing of the library imports this package: ``import load_balancing_module``
loads none of it, nor the server, nor ``rich``. Every command but ``version`` (and
``status --json``) needs the proxy's dependencies, the ``[server]`` extra: without them it
says so in one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._extras import missing_modules
from ..build import __version__, build_kind
from ..exceptions import ConfigurationError

# What serve, check and demo import of the [server] extra (uvloop is optional: asyncio without it).
SERVER_MODULES = ("yaml", "aiohttp", "prometheus_client", "httptools", "cryptography", "pydantic_settings") + (
    ("tomli",) if sys.version_info < (3, 11) else ()
)
STATUS_MODULES = ("rich",)  # the status table; --json needs nothing more


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnixan-lb", description="OMNIXAN load balancer")
    parser.add_argument("--version", action="version", version=f"omnixan-lb {__version__} ({build_kind()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    demo = sub.add_parser("demo", help="run the proxy on real local backends with real traffic")
    demo.add_argument("--output", default="omnixan-lb-demo.svg", help="where to write the chart (SVG)")
    demo.add_argument("--library", action="store_true", help="show the library alone (LoadBalancingModule.call)")
    check = sub.add_parser("check", help="validate a config file and exit (0 valid, 2 invalid)")
    serve = sub.add_parser("serve", help="run the reverse proxy")
    for command in (check, serve):
        command.add_argument(
            "--config",
            "-c",
            default=os.environ.get("OMNIXAN_LB_CONFIG"),
            help="config file (YAML or TOML); default $OMNIXAN_LB_CONFIG",
        )
    status = sub.add_parser("status", help="show the live backend table of a running server's admin API")
    status.add_argument(
        "--admin",
        default=os.environ.get("OMNIXAN_LB_ADMIN", "http://127.0.0.1:9090"),
        help="admin listener URL; default $OMNIXAN_LB_ADMIN or http://127.0.0.1:9090",
    )
    status.add_argument(
        "--token",
        default=os.environ.get("OMNIXAN_ADMIN_TOKEN"),
        help="admin bearer token; default $OMNIXAN_ADMIN_TOKEN",
    )
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", "-w", action="store_true", help="redraw until Ctrl-C")
    mode.add_argument("--json", action="store_true", help="print the load distribution as JSON")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between redraws with --watch")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (logs are JSON lines on stderr)",
    )
    return parser


def check(path: str | None) -> int:
    import time

    from ..server.config import load_config
    from ..server.env_overrides import variables
    from ..server.tls import expired, load_tls

    if not path:
        print("omnixan-lb check: no config file (use --config FILE or set OMNIXAN_LB_CONFIG)", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
        tls = load_tls(config)  # what serve loads: the certificates and keys, checked to match
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        return 2
    # The rule `serve` applies at start (admin_token), with the token this environment would give it.
    token = config.admin.read_token(os.environ)
    problem = config.admin.exposure_problem(token)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if config.admin.open_to_network(token):
        print(
            f"warning: admin.listen: {config.admin.listen} serves the admin API to other hosts without a "
            "token (admin.allow_unauthenticated: true): whoever reaches it controls the balancer",
            file=sys.stderr,
        )
    for certificate in expired(tls, time.time()):
        print(f"warning: {certificate.cert}: the certificate has expired (clients will refuse it)", file=sys.stderr)
    summary = f"{len(config.backends)} backends, algorithm {config.algorithm.algorithm_type}"
    if config.pools or config.routes:
        summary += f"; {len(config.pools)} more pools, {len(config.routes)} routes"
    if variables(os.environ):  # what serve would take from this environment too
        summary += f"; over it: {', '.join(variables(os.environ))}"
    print(f"{path}: ok ({summary})")
    return 0


def missing_server(command: str, modules: tuple[str, ...]) -> bool:
    """Whether ``command`` lacks some of ``modules``: then say which extra brings them."""
    missing = missing_modules(modules)
    if missing:
        print(
            f"omnixan-lb {command} needs the proxy's dependencies: pip install 'omnixan-lb[server]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
    return bool(missing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"omnixan-lb {__version__} ({build_kind()})")
        return 0
    needs: tuple[str, ...]
    if args.command == "status":
        needs = () if args.json else STATUS_MODULES
    else:
        needs = SERVER_MODULES if args.command in ("serve", "check", "demo") else ()
    if needs and missing_server(args.command, needs):
        return 2
    if args.command == "check":
        return check(args.config)
    if args.command == "serve":
        if not args.config:
            print("omnixan-lb serve: no config file (use --config FILE or set OMNIXAN_LB_CONFIG)", file=sys.stderr)
            return 2
        from ..server.logs import setup_logging
        from ..server.supervisor import run

        setup_logging(args.log_level)
        return run(args.config, args.log_level)
    if args.command == "status":
        from .status import run as status

        if not args.interval > 0:
            parser.error("--interval must be > 0")
        return status(args.admin, args.token, watch=args.watch, as_json=args.json, interval=args.interval)
    if args.command == "demo" and args.library:
        from .demo_library import main as library_demo

        return library_demo()
    if args.command == "demo":
        from .demo_proxy import main as proxy_demo

        return proxy_demo(args.output)
    parser.print_help()
    return 0
