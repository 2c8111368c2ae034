"""Build hook: the request path compiled by mypyc when a C compiler is at hand; metadata is in pyproject.toml.

``pip install .`` (an isolated build: ``[build-system] requires`` brings mypy and the packages the
type checker reads) compiles the modules on the request path to C extensions with mypyc: the same
typed Python, run without the interpreter's dispatch, about twice the requests per CPU second.
Without a C compiler or the Python headers, or if the compilation fails, it installs the pure
Python package instead and says so in one warning line. ``OMNIXAN_LB_COMPILE=0`` asks for pure
Python (an editable install for development); ``OMNIXAN_LB_COMPILE=1`` insists on the compiled
build (a failure is an error). See docs/performance.md.
"""

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The request path of the proxy and of the library (routing, completion, statistics).
COMPILED = [
    "src/load_balancing_module/server/proxy.py",
    "src/load_balancing_module/server/context.py",
    "src/load_balancing_module/server/client.py",
    "src/load_balancing_module/server/reader.py",
    "src/load_balancing_module/server/flow.py",
    "src/load_balancing_module/server/timers.py",
    "src/load_balancing_module/server/exchange.py",
    "src/load_balancing_module/server/relay.py",
    "src/load_balancing_module/server/attempt.py",
    "src/load_balancing_module/server/outbound.py",
    "src/load_balancing_module/server/phase.py",
    "src/load_balancing_module/server/upstream.py",
    "src/load_balancing_module/server/headers.py",
    "src/load_balancing_module/server/http.py",
    "src/load_balancing_module/server/response.py",
    "src/load_balancing_module/server/trusted.py",
    "src/load_balancing_module/server/proxy_protocol.py",
    "src/load_balancing_module/server/accesslog.py",
    "src/load_balancing_module/server/logformat.py",
    "src/load_balancing_module/server/routing.py",
    "src/load_balancing_module/server/filters.py",
    "src/load_balancing_module/module.py",
    "src/load_balancing_module/calls.py",
    "src/load_balancing_module/limiter.py",
    "src/load_balancing_module/slow_start.py",
    "src/load_balancing_module/views.py",
    "src/load_balancing_module/hooks.py",
    "src/load_balancing_module/probing.py",
    "src/load_balancing_module/draining.py",
    "src/load_balancing_module/route.py",
    "src/load_balancing_module/router.py",
    "src/load_balancing_module/backend.py",
    "src/load_balancing_module/stats.py",
    "src/load_balancing_module/breaker.py",
    "src/load_balancing_module/clock.py",
    "src/load_balancing_module/build.py",
    "src/load_balancing_module/retry.py",
    "src/load_balancing_module/outcome.py",
    "src/load_balancing_module/algorithms/__init__.py",
    "src/load_balancing_module/algorithms/_heap.py",
    "src/load_balancing_module/algorithms/_place.py",
    "src/load_balancing_module/algorithms/_winner_tree.py",
    "src/load_balancing_module/algorithms/_rotation.py",
    "src/load_balancing_module/algorithms/_sampling.py",
    "src/load_balancing_module/algorithms/_weight_classes.py",
    "src/load_balancing_module/algorithms/base.py",
    "src/load_balancing_module/algorithms/ip_hash.py",
    "src/load_balancing_module/algorithms/least_connections.py",
    "src/load_balancing_module/algorithms/least_latency.py",
    "src/load_balancing_module/algorithms/quantum_aware.py",
    "src/load_balancing_module/algorithms/round_robin.py",
    "src/load_balancing_module/algorithms/weighted.py",
]


def warn(reason: str) -> None:
    print(f"omnixan-lb: installing the pure Python build: {reason}", file=sys.stderr)


def compiler_missing() -> str | None:
    """Why the C extensions cannot be built here, or None if they can."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc).split()[0]) is None:
        return f"no C compiler ({cc}) found; the compiled build needs one"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    return None


class OptionalBuildExt(build_ext):
    """Build the extensions; in the automatic mode, a failure leaves the pure Python package."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler failed: the .py files are installed all the same
            warn(f"compiling failed: {exc}")
            for ext in self.extensions:  # no half of a compiled build: its modules import each other
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []


def extensions(mode: str) -> dict[str, object]:
    if mode == "0":
        return {}
    if mode != "1":
        reason = compiler_missing()
        if reason is not None:
            warn(reason)
            return {}
    try:
        from mypyc.build import mypycify

        modules = mypycify(COMPILED, opt_level="3")
    except (Exception, SystemExit) as exc:  # no mypy, or a type error (mypyc exits): fatal only if forced
        if mode == "1":
            raise
        warn(f"mypyc could not compile: {exc}")
        return {}
    return (
        {"ext_modules": modules}
        if mode == "1"
        else {"ext_modules": modules, "cmdclass": {"build_ext": OptionalBuildExt}}
    )


setup(**extensions(os.environ.get("OMNIXAN_LB_COMPILE", "auto")))  # type: ignore[arg-type]
