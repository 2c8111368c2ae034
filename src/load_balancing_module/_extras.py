"""The optional extras: the error that says which one a feature needs.

``pip install omnixan-lb`` brings what the library itself needs (pydantic, librt); what only some
uses need comes with an extra (pyproject.toml): ``[metrics]`` (prometheus-client), ``[redis]``,
``[aiohttp]``, ``[httpx]``, ``[server]`` (the proxy). A feature used without its extra raises
:func:`missing_extra`'s error instead of a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib

__all__ = ["missing_extra", "missing_modules", "require"]


def missing_extra(feature: str, extra: str, module: str) -> ModuleNotFoundError:
    """The error for ``feature`` used without ``module``, which ``extra`` installs."""
    return ModuleNotFoundError(f"{feature} needs {module}: pip install 'omnixan-lb[{extra}]'", name=module)


def require(feature: str, extra: str, module: str) -> None:
    """Import ``module`` (a top-level package) or raise :func:`missing_extra`'s error."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the package is there but broken (one of its own dependencies is not)
            raise
        raise missing_extra(feature, extra, module) from exc


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` (top-level packages) that cannot be imported here."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing
