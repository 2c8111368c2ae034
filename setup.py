"""Build hook for the optional compiled build; all metadata is in pyproject.toml.

With ``OMNIXAN_LB_COMPILE=1`` the modules on the request path are compiled to C
extensions with mypyc (the code is the same typed Python; mypyc turns it into C
that skips the interpreter's dispatch). Without it the package is pure Python.
The compiled build type-checks while it compiles, so it needs mypy and the
package's dependencies in the build environment: build it with
``--no-build-isolation`` from an environment that has the ``dev`` extra
(``make compiled`` does). See docs/performance.md.
"""

import os

from setuptools import setup

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
    "src/load_balancing_module/server/accesslog.py",
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

if os.environ.get("OMNIXAN_LB_COMPILE") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()
