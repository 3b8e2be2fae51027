"""``python -m runner`` and the ``migration-runner`` program start here.

SIGTERM and SIGINT are caught before anything else is imported. The imports of
:mod:`runner.cli` take about 0.1 s, several times that on a busy node, and a pod
deleted in that time must still end with 143 or 130 and one line: not a
KeyboardInterrupt traceback, and not a death by the signal's default action, which
PID 1 in a container does not even get (the kernel ignores signals it has no
handler for). Nothing has touched a database yet, so there is nothing to undo.
"""

import gc
import signal
import sys
from types import FrameType

from runner import GC_THRESHOLDS


class _StoppedEarly(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _stop_early(signum: int, _: FrameType | None) -> None:
    raise _StoppedEarly(signum)


def main() -> None:
    """Run :func:`runner.cli.entrypoint`, with a signal during its imports ending the process cleanly.

    Raises:
        SystemExit: always: the run's exit code, or 130/143 for a signal (:func:`runner.errors.outcome_of`).
    """
    signal.signal(signal.SIGTERM, _stop_early)
    signal.signal(signal.SIGINT, _stop_early)
    # Before the imports, which allocate most of a no-op's objects: with CPython's default threshold
    # their young collections cost about 15 ms of a 0.4 s no-op (python -X importtime).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        from runner.cli import entrypoint  # noqa: PLC0415  (after the handlers: that is the point)

        entrypoint()  # which installs the run's own handlers first of all
    except _StoppedEarly as stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import json  # noqa: PLC0415

        from runner.errors import Interrupted, outcome_of  # noqa: PLC0415  (the one table of codes and events)

        result = outcome_of(Interrupted(stopped.signum))
        message = f"{result.message} while starting; nothing was done"
        line = json.dumps({"level": "warning", "event": result.event, "error": message, **result.details})
        sys.stderr.write(line + "\n")
        sys.exit(int(result.code))


if __name__ == "__main__":
    main()
