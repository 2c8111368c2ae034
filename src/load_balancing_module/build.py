"""Which build of the package runs: its version, and whether the request path is compiled.

This module is on setup.py's list of compiled modules, as the whole request path is: compiled by
mypyc, it is an extension module, not a ``.py`` file. ``omnixan-lb --version``, the
``omnixan_lb_build_info`` gauge and the ``server_started`` log line all report it.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["COMPILED", "__version__", "build_kind", "mypyc_attr"]

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # a plain install has no mypy_extensions: the decorator only speaks to the compiler

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


__version__: Final = "0.1.0"
COMPILED: Final = not __file__.endswith(".py")


def build_kind() -> str:
    """``compiled with mypyc`` or ``pure Python``."""
    return "compiled with mypyc" if COMPILED else "pure Python"
