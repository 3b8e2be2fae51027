"""The fork server of ``--all``: one process that has imported the runner forks a child per database.

A child per database is right: Alembic's ``context`` and Django's settings are
process-wide, and each run's lock, signals, deadline and metrics are its own. But
``python -m runner`` per database pays the interpreter's start and the imports
(the runner, SQLAlchemy, Alembic, the database drivers: most of a short run) once
per database. This server pays them once: :mod:`runner.fleet` starts it, it
imports, and then forks a child for each request. A forked child runs
``runner.__main__`` as ``python -m runner`` does, with its own environment,
arguments, stdout and stderr, and exits through the interpreter's normal exit.

Isolation is the operating system's: a crash, ``sys.exit``, ``os._exit`` or a
signal in one child ends that child alone. The server runs no project code, holds
no database connection and no thread, so forking it is safe.

The protocol, over a ``SOCK_SEQPACKET`` socket pair (one message per packet, JSON):

- parent to server: ``{"id": N, "argv": [...], "env": {...}}`` with two file
  descriptors (the child's stdout and stderr) as ``SCM_RIGHTS``; or
  ``{"id": N, "signal": SIGNUM}``: send it to that child if it still runs
  (``pidfd_send_signal``, so never to a reused pid);
- server to parent: ``{"ready": true}`` once imported; ``{"id": N, "pid": P}`` once
  forked; ``{"id": N, "exit": CODE}`` once reaped (negative: the signal that ended it,
  as ``subprocess`` reports it).

The parent closing its end ends the server; running children go on, as children of
init, as ``subprocess`` children of a killed parent would.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

# Imported before the first fork: everything a run imports that does not depend on the project.
# A module that is not installed (the Django extra, a driver) is skipped.
PRELOAD = (
    "runner.cli",
    "runner.commands.migrate",
    "runner.commands.run",
    "runner.commands.inspect",
    "runner.commands.ledger_checks",
    "runner.drivers.alembic",
    "runner.drivers.django",
    "runner.noop",
    "runner.report",
    "runner.publish",
    "runner.ledger",
    "runner.database",
    "runner.locks",
    "psycopg",
    "pymysql",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.mysql",
    "sqlalchemy.dialects.sqlite",
    "alembic.command",
    "alembic.script",
    "alembic.runtime.environment",
    "alembic.runtime.migration",
    "alembic.operations",
    "prometheus_client",
    "tenacity",
    "filelock",
)
# One request: its JSON (the environment is most of it) and two descriptors.
_MAX_MESSAGE_BYTES = 1 << 20


def send(channel: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """One JSON message, with ``fds`` if any."""
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(channel, [data], fds)
    else:
        channel.send(data)


def serve(channel: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Fork a child per request until the parent closes its end.

    Returns:
        In a forked child only: its request and its two descriptors (stdout, stderr).
        In the server: None, once the parent is gone.
    """
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    running: dict[int, tuple[int, int]] = {}  # pidfd -> (request id, pid)
    send(channel, {"ready": True})
    while True:
        for key, _ in selector.select():
            if key.fileobj is not channel:
                request_id, pid = running.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                send(channel, {"id": request_id, "exit": os.waitstatus_to_exitcode(status)})
                continue
            data, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE_BYTES, 2)
            if not data:
                return None
            request = json.loads(data)
            if "signal" in request:
                for pidfd, (request_id, _) in running.items():
                    if request_id == request["id"]:
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(pidfd, request["signal"])
                continue
            pid = os.fork()
            if pid == 0:
                selector.close()
                channel.close()
                for pidfd in running:
                    os.close(pidfd)
                return request, fds
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)
            running[pidfd] = (request["id"], pid)
            selector.register(pidfd, selectors.EVENT_READ)
            send(channel, {"id": request["id"], "pid": pid})


def become(request: dict[str, Any], fds: list[int]) -> None:
    """In a forked child: take the request's stdout, stderr, environment and arguments, as an exec would."""
    out, err = fds
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    os.environ.clear()
    os.environ.update(request["env"])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    sys.argv = ["migration-runner", *request["argv"]]
    if "random" in sys.modules:  # retries' jitter (tenacity) must not be the same in every child
        sys.modules["random"].seed()


def available() -> bool:
    """Whether the server can run here: ``fork``, ``pidfd_open`` and ``pidfd_send_signal`` (Linux 5.3+)."""
    return hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class Server:
    """The parent's side: starts the server, sends it requests, and hands out a :class:`Forked` per child.

    Raises:
        OSError: the server could not be started, or ended before it was ready.
    """

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(  # noqa: S603  (our own module, an argv list)
                [sys.executable, "-m", "runner.forkserver", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        self.channel = mine
        self.sending = threading.Lock()
        self.children: dict[int, Forked] = {}
        self.requests = 0
        if not self.channel.recv(_MAX_MESSAGE_BYTES):  # {"ready": true}, after the imports
            self.close()
            raise OSError("the fork server ended before it was ready")
        threading.Thread(target=self._receive, name="fork-server", daemon=True).start()

    def spawn(self, argv: Sequence[str], env: dict[str, str]) -> Forked:
        """Fork a child that runs ``migration-runner ARGV`` with ``env``; its stdout and stderr are pipes to us."""
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            with self.sending:
                self.requests += 1
                child = Forked(self, self.requests, out_read, err_read)
                self.children[child.id] = child
                send(self.channel, {"id": child.id, "argv": list(argv), "env": env}, [out_write, err_write])
        finally:
            os.close(out_write)
            os.close(err_write)
        return child

    def signal(self, child: Forked, signum: int) -> None:
        """Ask the server to send ``signum`` to ``child``, if it still runs."""
        with self.sending, contextlib.suppress(OSError):  # a server that has ended has no children to signal
            send(self.channel, {"id": child.id, "signal": int(signum)})

    def _receive(self) -> None:
        while data := self.channel.recv(_MAX_MESSAGE_BYTES):
            message = json.loads(data)
            if "exit" in message:
                self.children.pop(message["id"]).ended(message["exit"])
        # The server ended (killed, or a bug): no child of it can be reported any more.
        for child in list(self.children.values()):
            child.ended(70, "the fork server ended")

    def close(self) -> None:
        """End the server (it exits when our end closes) and reap it."""
        # shutdown, not only close: our reader thread's recv holds the socket open otherwise.
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        self.channel.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Forked:
    """One forked child, as much of ``subprocess.Popen`` as :mod:`runner.fleet` uses.

    Attributes:
        stdout, stderr: the child's output, as text.
        returncode: its exit code once it ended (negative: the signal), else None.
        failure: why there is no code of the child's own, if the server ended first.
    """

    def __init__(self, server: Server, request_id: int, out: int, err: int) -> None:
        self.server = server
        self.id = request_id
        self.stdout: TextIO = os.fdopen(out, "r", encoding="utf-8", errors="replace")
        self.stderr: TextIO = os.fdopen(err, "r", encoding="utf-8", errors="replace")
        self.returncode: int | None = None
        self.failure: str | None = None
        self._ended = threading.Event()

    def ended(self, code: int, failure: str | None = None) -> None:
        """The server reaped the child (or ended itself: ``failure`` says so)."""
        self.returncode, self.failure = code, failure
        self._ended.set()

    def poll(self) -> int | None:
        """The exit code, or None while the child runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the child ended.

        Raises:
            subprocess.TimeoutExpired: not within ``timeout`` seconds.
        """
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired("migration-runner", timeout or 0)
        assert self.returncode is not None  # noqa: S101  (set before the event)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child through the server."""
        self.server.signal(self, signum)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


def main() -> None:
    """``python -m runner.forkserver FD``: serve on the inherited socket ``FD``; in a child, run the request."""
    channel = socket.socket(fileno=int(sys.argv[1]))
    # The parent forwards signals to the children; a terminal's SIGINT to the whole group is its too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Children then share the imported objects' pages: a collection in one would copy them all.
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    served = serve(channel)
    if served is None:
        return
    become(*served)
    # What `python -m runner` runs, as the children without a server run it (runner.fleet).
    runpy.run_module("runner", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
