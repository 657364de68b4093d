"""Every backoff of the library, from tenacity's wait strategies.

The lanes retry through ``tenacity.Retrying`` with :func:`exponential_wait`; loops that are not
a single call to retry (a worker's own loop, a source's polling) take their delays from a
:class:`Backoff`, which asks the same kind of tenacity strategy for the n-th delay.
"""

from __future__ import annotations

from typing import Any, cast

import tenacity
from tenacity.wait import wait_base

__all__ = ["exponential_wait", "Backoff"]


def exponential_wait(first: float, cap: float, jitter: float = 0.0) -> wait_base:
    """``first``, 2x, 4x ... seconds, at most ``cap``, plus up to ``jitter`` seconds at random."""
    wait: wait_base = tenacity.wait_exponential(multiplier=first, max=cap)
    if jitter > 0:
        wait = wait + tenacity.wait_random(0, jitter)
    return wait


class Backoff:
    """Successive delays after consecutive failures; :meth:`reset` after a success."""

    def __init__(self, wait: wait_base) -> None:
        self.wait = wait
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.failures += 1
        state = tenacity.RetryCallState(cast(Any, None), None, (), {})
        state.attempt_number = self.failures
        return float(self.wait(state))

    def reset(self) -> None:
        self.failures = 0
