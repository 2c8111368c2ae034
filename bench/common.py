"""What every benchmark records beside its figures: the machine and the command."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python and kernel: what a figure depends on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a table header or a figure caption."""
    return f"{info['cpu']}, {info['cores']} cores, {info['python']}, {info['kernel']}"


def command_line() -> str:
    """The command that is running, relative to the repository root when possible."""
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(ROOT))
    except ValueError:
        shown = exe.name
    argv = list(sys.argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and argv:  # run with -m
        name = spec.name.removesuffix(".__main__")
        argv[0:1] = ["-m", name]
    elif argv and argv[0].endswith(".py"):
        path = Path(argv[0]).resolve()
        with contextlib.suppress(ValueError):
            argv[0] = str(path.relative_to(ROOT))
    return shlex.join([shown, *argv])


def write_json(results: dict[str, Any], path: str | None) -> None:
    """``--json PATH`` of every benchmark script: the results as JSON (nothing without a path)."""
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
