"""Polling to a deadline with capped exponential backoff and jitter, reporting while it waits.

Used for what cannot be awaited on the server: the migration lock (taken with
non-blocking try-lock calls, so the waiter can name the holder) and ``wait``
(a read of the version table).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

REPORT_INTERVAL_SECONDS = 5.0


def poll(
    ready: Callable[[], bool],
    *,
    timeout: float,
    report: Callable[[float], None],
    first_delay: float,
    max_delay: float = 2.0,
) -> float | None:
    """Call ``ready`` until it returns True or ``timeout`` seconds pass.

    Between calls it sleeps a random time in [d/2, d], where d doubles from
    ``first_delay`` up to ``max_delay``, never past the deadline, so the last
    call happens at the deadline.

    Args:
        ready: the check; whatever it raises propagates.
        timeout: seconds until giving up.
        report: called with the seconds waited so far, after the first failed
            call and then every :data:`REPORT_INTERVAL_SECONDS`.
        first_delay: the first sleep's upper bound, seconds.
        max_delay: the cap of every sleep, seconds.

    Returns:
        Seconds waited until ``ready`` returned True, or ``None`` if the deadline passed first.
    """
    started = time.monotonic()
    deadline = started + timeout
    delay = first_delay
    next_report = started
    while not ready():
        now = time.monotonic()
        if now >= next_report:
            report(now - started)
            next_report = now + REPORT_INTERVAL_SECONDS
        if now >= deadline:
            return None
        time.sleep(min(random.uniform(delay / 2, delay), deadline - now))
        delay = min(delay * 2, max_delay)
    return time.monotonic() - started
