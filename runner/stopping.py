"""Stopping a run whose revisions run in another thread than the main one.

Python delivers signals to the main thread only. An ``env.py`` that runs Alembic in a
worker thread (``anyio.to_thread.run_sync``, ``asyncio.to_thread``) leaves the main
thread waiting inside an event loop or a ``join()``; raising there breaks the loop's
bookkeeping (seen: exit 0, an unpacking error, a segfault) while the revision goes on.

So a signal or the deadline (:func:`stop`) is raised at once only when the migration
runs on the main thread. Otherwise it is recorded, the statement the migrating thread
is running is cancelled where the driver can (psycopg's ``cancel()``), and the migrating
thread raises it at its next safe point (:func:`checkpoint`): before its next statement,
in the version-apply callback, between revisions. The revision's transaction is then
rolled back by Alembic as for any exception, and the run ends with the stop's own code.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from runner.errors import Stopped


class _State:
    """What the signal handler and the threads that run env.py share (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_env_py = False
        self.migrating_thread: int | None = None  # the thread running revisions, while it does
        self.sql_threads: set[int] = set()  # threads that ran a statement while env.py ran
        self.cause: Stopped | None = None  # the signal or deadline that ends the run
        self.raised_in: set[int] = set()  # threads it was raised in already
        self.running: dict[int, Any] = {}  # thread id -> the DB-API connection running a statement in it


_state = _State()


@contextlib.contextmanager
def env_py_running() -> Iterator[None]:
    """While a project's env.py runs: stops may be deferred to the thread that runs the revisions."""
    _state.in_env_py = True
    try:
        yield
    finally:
        _state.in_env_py = False
        _state.migrating_thread = None
        _state.sql_threads.clear()
        _state.running.clear()


def migrating() -> None:
    """Mark the calling thread as the one running revisions (until env.py returns)."""
    _state.migrating_thread = threading.get_ident()


def stop(error: Stopped) -> None:
    """Stop the run with ``error``: raise it now, or defer it to the migrating thread's next safe point.

    Called from a signal handler, so in the main thread. Deferred when env.py runs its revisions,
    or at least its statements, in another thread.

    Raises:
        Stopped: ``error``, when the main thread is the one to stop.
    """
    _state.cause = error
    me = threading.get_ident()
    thread = _state.migrating_thread
    others = [t for t in _state.sql_threads if t != me]
    elsewhere = thread not in (None, me) or (thread is None and bool(others))
    if not _state.in_env_py or not elsewhere:
        _state.raised_in.add(me)
        raise error
    with _state.lock:
        connections = [c for t, c in _state.running.items() if t != me]
    for connection in connections:
        if callable(getattr(connection, "cancel", None)):
            with contextlib.suppress(Exception):  # best effort: the next safe point stops it anyway
                connection.cancel()  # psycopg: a cancel request on a new socket, safe from another thread


def checkpoint() -> None:
    """A safe point of a thread that runs env.py's work: raise the stop there, once per thread.

    Only the migrating thread raises once it is known; before that, whichever thread runs
    env.py's next statement (one that started while the main thread was stopped, too).

    Raises:
        Stopped: the signal or deadline recorded by :func:`stop`.
    """
    error = _state.cause
    if error is None or not _state.in_env_py:
        return
    me = threading.get_ident()
    if me in _state.raised_in or _state.migrating_thread not in (None, me):
        return
    _state.raised_in.add(me)
    raise error


def cause() -> Stopped | None:
    """The signal or deadline that ended the run, wherever it was raised or deferred."""
    return _state.cause


def statement_started(dbapi_connection: Any) -> None:
    """Before each statement (a safe point): raise a stop due here, else note what may need cancelling."""
    if not _state.in_env_py:
        return
    me = threading.get_ident()
    _state.sql_threads.add(me)
    checkpoint()
    _state.running[me] = dbapi_connection


def statement_ended() -> None:
    """After each statement."""
    _state.running.pop(threading.get_ident(), None)
