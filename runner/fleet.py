"""``--all``: one command over every database of ``MIGRATION_DATABASES_FILE``, a child process each.

Each database runs in a ``migration-runner`` child process of its own, as it
would in its own pod of an Indexed Job (``MIGRATION_DATABASE_INDEX=i``), and
never in a thread: Alembic's ``context`` and Django's settings are process-wide,
revision modules may keep state, and the lock, the signal handling, the
deadline and the metrics are each run's own. The children are forked from a
fork server that has imported the runner and its libraries once
(:mod:`runner.forkserver`); where it cannot run, each child is a new
``python -m runner``. The ``all.started`` event says which (``children``). The parent

- runs at most ``MIGRATION_PARALLELISM`` children at once;
- relays their log lines (each already names its ``database_index`` and ``database_name``);
- reads each child's result document from its stdout;
- lets a failure in one database never stop the others;
- forwards SIGTERM and SIGINT to the children and waits for them, so each rolls
  back and releases its lock;
- exits with the most severe of their exit codes (:func:`runner.errors.most_severe`).

This is for CI stages and small fleets, on one machine. Past that, Kubernetes is
the engine: one Indexed Job (docs/kubernetes.md, "Many databases").
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TextIO

from runner import forkserver
from runner.errors import ExitCode, most_severe
from runner.logs import get_logger

# How long the parent waits for its children after forwarding a signal, on top of their own grace period.
_EXTRA_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Database:
    """One line of the databases file.

    Attributes:
        index: its index (0-based, blank and comment lines not counted), as ``JOB_COMPLETION_INDEX`` counts.
        name: the database's name, from its URL (never the URL itself).
    """

    index: int
    name: str


def run_all(
    argv: Sequence[str],
    databases: Sequence[Database],
    *,
    parallelism: int,
    log_format: str,
    log_stream: TextIO,
    grace_seconds: float,
    into: list[dict[str, Any]],
) -> ExitCode:
    """Run ``migration-runner ARGV`` once per database, at most ``parallelism`` at a time.

    Args:
        argv: the command line without ``--all``; ``--output json`` is added for the children.
        databases: every database of the file.
        parallelism: how many children run at once.
        log_format: ``json`` or ``console``: the children log so, and their lines are relayed as they are.
        log_stream: where the relayed lines go.
        grace_seconds: after a signal, how long the children get to roll back (``MIGRATION_GRACE_PERIOD``).
        into: gets one entry per database in index order, also when a signal ends the run:
            ``database_index``, ``database``, ``exit_code``, ``outcome``, ``applied`` and ``pending``
            (revision ids), ``duration_seconds`` and ``error`` (the child's, already redacted; or why
            it had none).

    Returns:
        The most severe exit code.

    Raises:
        Interrupted, RunTimeout: a signal or the deadline; the children were stopped first.
    """
    log = get_logger()
    server = _fork_server()
    children = _Children(argv, log_format, log_stream, server)
    log.info(
        "all.started", databases=len(databases), parallelism=parallelism, children="forked" if server else "started"
    )
    entries: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as cleanup, ThreadPoolExecutor(parallelism, thread_name_prefix="database") as pool:
        if server is not None:
            cleanup.callback(server.close)  # after the pool: every child has ended
        # Each worker thread logs with this run's fields (structlog's contextvars are per thread).
        futures: dict[Future[dict[str, Any]], Database] = {
            pool.submit(contextvars.copy_context().run, children.run, d): d for d in databases
        }
        try:
            pending = set(futures)
            while pending:  # the main thread waits in short steps, so that a signal reaches it at once
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    entries[futures[future].index] = future.result()
        except BaseException:  # a signal or the deadline: stop every child, let each roll back, then report
            children.stop(grace_seconds)
            for future, database in futures.items():
                entries.setdefault(database.index, future.result())
            into.extend(entries[d.index] for d in databases)
            raise
    into.extend(entries[d.index] for d in databases)
    code = most_severe(entry["exit_code"] for entry in into)
    log.info(
        "all.finished",
        exit_code=int(code),
        succeeded=sum(1 for e in into if e["exit_code"] == 0),
        failed=[e["database_index"] for e in into if e["exit_code"] != 0],
    )
    return code


def _fork_server() -> forkserver.Server | None:
    """The fork server, or None where it cannot run (each child is then a new process)."""
    if not forkserver.available():
        return None
    try:
        return forkserver.Server()
    except OSError as error:
        get_logger().warning("all.fork_server_unavailable", error=str(error))
        return None


class _Children:
    """The child processes of one ``--all`` run."""

    def __init__(
        self, argv: Sequence[str], log_format: str, log_stream: TextIO, server: forkserver.Server | None
    ) -> None:
        self.argv = [*argv, "--output", "json"]
        self.log_format = log_format
        self.log_stream = log_stream
        self.server = server
        self.relay_lock = threading.Lock()
        self.running: dict[int, subprocess.Popen[str] | forkserver.Forked] = {}
        self.stopping = threading.Event()

    def _relay(self, stream: TextIO) -> None:
        for line in stream:
            with self.relay_lock:  # whole lines, never two children's interleaved
                self.log_stream.write(line)
                self.log_stream.flush()

    def run(self, database: Database) -> dict[str, Any]:
        """Run one database's child to its end; its entry (see :func:`run_all`)."""
        if self.stopping.is_set():
            return _entry(database, int(ExitCode.SIGTERM), None, "not started: the run was stopped")
        env = dict(os.environ)
        env.pop("JOB_COMPLETION_INDEX", None)
        env.update(
            MIGRATION_DATABASE_INDEX=str(database.index),
            MIGRATION_LOG_FORMAT=self.log_format,
            MIGRATION_TERMINATION_LOG=os.devnull,  # the parent writes the one termination message
        )
        started = time.monotonic()
        child: subprocess.Popen[str] | forkserver.Forked
        if self.server is not None:
            child = self.server.spawn(self.argv, env)
        else:
            child = subprocess.Popen(  # noqa: S603  (our own program, an argv list)
                [sys.executable, "-m", "runner", *self.argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        self.running[database.index] = child
        assert child.stderr is not None and child.stdout is not None  # noqa: S101  (both are pipes)
        relaying = threading.Thread(target=self._relay, args=(child.stderr,), daemon=True)
        relaying.start()
        output = child.stdout.read()
        code = child.wait()
        relaying.join()
        child.stdout.close()
        child.stderr.close()
        self.running.pop(database.index, None)
        try:
            document = json.loads(output)
        except ValueError:
            document = None
        why = getattr(child, "failure", None) or "the run printed no result document"
        entry = _entry(database, code, document, None if document else why)
        entry["duration_seconds"] = round(time.monotonic() - started, 6)
        get_logger().info(
            "database.finished",
            database_index=database.index,
            database_name=database.name,
            exit_code=code,
            outcome=entry["outcome"],
            applied=len(entry["applied"]),
        )
        return entry

    def stop(self, grace: float) -> None:
        """SIGTERM to every running child; wait for their grace period (then SIGKILL); start no new one."""
        self.stopping.set()
        children = list(self.running.values())
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + _EXTRA_GRACE_SECONDS
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()


# A URL in a child's error message (redacted, yet still a URL): the entry names the database instead.
_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s,;'\"]+", re.IGNORECASE)


def _entry(database: Database, code: int, document: dict[str, Any] | None, why: str | None) -> dict[str, Any]:
    document = document or {}
    error = document.get("error")
    if error is None and why is not None:
        error = {"class": "NoResult", "sqlstate": None, "revision": None, "message": why}
    if error is not None:
        error = {**error, "message": _URL.sub(f"database {database.name}", str(error.get("message", "")))}
    return {
        "database_index": database.index,
        "database": database.name,
        "exit_code": code,
        "outcome": document.get("outcome") or _outcome_name(code),
        "applied": [step["revision"] for step in document.get("applied") or []],
        "pending": [step["revision"] for step in document.get("pending") or []],
        "duration_seconds": document.get("duration_seconds"),
        "error": error,
    }


def _outcome_name(code: int) -> str:
    if code == 0:
        return "success"
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return "internal_error"
