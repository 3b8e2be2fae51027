"""The process around a run: signals, the deadline, the watchdog, the document's file descriptor, the GC.

Signal handlers are installed before anything heavy is imported (first by
:mod:`runner.__main__`, then by :func:`stop_on_signals`), so a SIGTERM or SIGINT
during start-up ends the run like any other: one line, 143 or 130. A signal or
the deadline stops the run through :func:`runner.stopping.stop` (at once, or at the
next safe point of a thread that runs the revisions). After either, the watchdog
gives rollback and lock release ``MIGRATION_GRACE_PERIOD`` seconds, then exits with
the same code (``os._exit``); the server rolls back and frees the lock when the
connection dies. Reporting at the end has its own bound and never changes the code.
Every code and event here comes from :func:`runner.errors.outcome_of` and
:func:`runner.errors.abandoned`, the one table of outcomes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn, TextIO

import runner
from runner import stopping
from runner.errors import Interrupted, Outcome, RunTimeout, abandoned, outcome_of

DEFAULT_GRACE_SECONDS = 10.0
# Writing the termination message, the result document and pushing metrics, after the work.
REPORT_BOUND_SECONDS = 10.0


class Watchdog:
    """Ends the process with an outcome's code after a delay, whatever the main thread is stuck in.

    Attributes:
        grace_seconds: ``MIGRATION_GRACE_PERIOD``, once the settings are read.
        on_expiry: called with the exit code just before the process ends (the termination message).
    """

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None
        self.grace_seconds = DEFAULT_GRACE_SECONDS
        self.on_expiry: Callable[[int], None] = lambda _: None

    def arm(self, seconds: float, outcome: Outcome, reason: str) -> None:
        """In ``seconds``, end the process with ``outcome``'s code, logging ``run.abandoned`` with ``reason``."""
        self.disarm()
        self._timer = threading.Timer(seconds, self._expire, args=(abandoned(outcome, reason, seconds),))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        """Cancel the pending expiry, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, outcome: Outcome) -> None:
        # No logging module here: the main thread may hold its locks.
        line = {"level": outcome.level, "event": outcome.event, **outcome.details, "exit_code": int(outcome.code)}
        with contextlib.suppress(Exception):
            os.write(2, (json.dumps(line) + "\n").encode())
        with contextlib.suppress(Exception):
            self.on_expiry(int(outcome.code))
        os._exit(int(outcome.code))


watchdog = Watchdog()


def ignore_signals() -> None:
    """SIGTERM and SIGINT do nothing from now on: a second one must not interrupt the clean-up."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_by_signal(signum: int, _: FrameType | None) -> None:
    ignore_signals()
    error = Interrupted(signum)
    watchdog.arm(watchdog.grace_seconds, outcome_of(error), f"{signal.Signals(signum).name}: grace period over")
    stopping.stop(error)  # raises here, unless revisions run in another thread


def stop_on_signals() -> None:
    """SIGTERM and SIGINT stop the run (130/143). First of all: PID 1 in a container ignores them otherwise."""
    signal.signal(signal.SIGTERM, _stop_by_signal)
    signal.signal(signal.SIGINT, _stop_by_signal)


def start_deadline(seconds: float) -> None:
    """Stop the run as on SIGTERM, with exit 75, after ``seconds`` (0: never)."""
    if seconds <= 0:
        return

    def expire(_: int, __: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        ignore_signals()
        error = RunTimeout(seconds)
        watchdog.arm(watchdog.grace_seconds, outcome_of(error), "MIGRATION_TIMEOUT: grace period over")
        stopping.stop(error)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


class ReportingCut(Exception):
    """A signal arrived while the run reported; what is left of the reporting is skipped.

    An ``Exception``, so each publishing step's best-effort handler catches it too.
    """


def _cut_reporting(_: int, __: FrameType | None) -> None:
    ignore_signals()
    raise ReportingCut


@contextlib.contextmanager
def reporting(result: Outcome) -> Iterator[None]:
    """The end of a run: no deadline, a bound of its own, and a signal cuts it short, keeping ``result``'s code."""
    signal.setitimer(signal.ITIMER_REAL, 0)  # the deadline covers the work, not the reporting
    watchdog.arm(REPORT_BOUND_SECONDS, result, "reporting took too long")
    signal.signal(signal.SIGTERM, _cut_reporting)
    signal.signal(signal.SIGINT, _cut_reporting)
    with contextlib.suppress(ReportingCut):
        yield
    watchdog.disarm()


def linger(seconds: float, announce: Callable[[], None]) -> None:
    """Sleep ``seconds`` (metrics stay up meanwhile); a signal cuts it short. Signals are ignored afterwards."""

    def stop(_: int, __: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        if seconds > 0:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            announce()
            time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        ignore_signals()


def claim_stdout() -> TextIO:
    """Keep the real stdout for the document alone; fd 1 then points at stderr.

    At the file-descriptor level, so that ``print()``, a subprocess or a C
    extension in project code cannot add a byte to the document.
    """
    sys.stdout.flush()
    document_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(document_fd, "w", encoding="utf-8")


def run_program(main: Callable[[], int]) -> NoReturn:
    """Run ``main`` with the GC tuned for a short run, then exit with its code without a final collection.

    Raises:
        SystemExit: always, with ``main``'s exit code.
    """
    gc.set_threshold(*runner.GC_THRESHOLDS)  # runner.__main__ set it already; a caller of entrypoint may not
    code = main()
    # The kernel frees the memory with the process. Without this, interpreter shutdown walks
    # every object SQLAlchemy, Alembic and the revision modules made in one last full collection
    # (about 0.1 s after 300 revisions); frozen objects are skipped (gc.freeze docs). atexit
    # handlers and the flushing of files still run.
    gc.disable()
    gc.freeze()
    sys.exit(code)
