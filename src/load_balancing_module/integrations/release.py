"""The end of a held try: the response body is done, so the backend's slot is released.

``lb.call_held`` returns with the last try's slot still held (:class:`~load_balancing_module.calls.Held`);
an integration hands the response to its caller and, when the body ends, calls
:meth:`HeldTry.end` once. The answer's verdict stands (a 503 stays a failure, a 200 a success)
unless reading the body broke, which ``is_failure`` then judges. A caller that closes the body
early is not held against the backend. The latency recorded is the answer's (time to the
response head): how long a caller takes to read a stream is not the backend's.

The other helpers here are what both integrations do with ``call_held``'s errors.
"""

from __future__ import annotations

import sys
from typing import Any

from ..calls import Held
from ..exceptions import RoutingError
from ..module import LoadBalancingModule
from ..outcome import IsFailure, Outcome


class HeldTry:
    """Completes one held try, once."""

    __slots__ = ("lb", "held", "is_failure")

    def __init__(self, lb: LoadBalancingModule, held: Held[Any], is_failure: IsFailure) -> None:
        self.lb = lb
        self.held = held
        self.is_failure = is_failure

    def end(self, error: BaseException | None = None) -> None:
        """The body ended: read to its end or closed (``error`` is ``None``), or broken by ``error``."""
        held = self.held
        if not held.open:
            return
        held.open = False
        answer = held.outcome
        failure = answer.failure
        if error is not None and not failure:
            broken = Outcome(answer.backend_id, answer.attempt, answer.latency_ms, error=error)
            failure = bool(self.is_failure(broken))
        self.lb.complete_now(held.result, success=not failure, latency_ms=answer.latency_ms)


def last_error(error: RoutingError) -> BaseException | None:
    """The last try's error of a call whose tries all failed, noted with the balancer's summary
    (``RoutingError``'s message: how many tries, why no more); ``None`` when there is none."""
    cause = error.__cause__
    if cause is not None and sys.version_info >= (3, 11):
        cause.add_note(f"omnixan-lb: {error}")
    return cause
