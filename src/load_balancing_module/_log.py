"""Structured log events through the standard ``logging`` module.

Each event is one record whose message is ``event key=value ...`` and whose
``event`` and ``fields`` attributes carry the same data for a JSON formatter.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("load_balancing_module")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        logger.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})
