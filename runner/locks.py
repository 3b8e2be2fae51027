"""The migration lock: one runner at a time per database and version table.

MariaDB / MySQL: ``GET_LOCK(name, timeout)`` on a dedicated connection; the
server frees it when that connection ends (MySQL docs, "Locking Functions").

PostgreSQL: a *session-level* advisory lock (``pg_advisory_lock``) held on
a dedicated autocommit connection. It is never inside a transaction, so a
revision may use ``CREATE INDEX CONCURRENTLY`` in an ``autocommit_block``, and
the server frees it when the session ends, so a killed pod cannot leave it
behind (PostgreSQL docs, "13.3.5. Advisory Locks").

SQLite: an OS file lock (``filelock``, ``fcntl.flock`` on Linux) beside the
database file, freed by the kernel when the process dies.

PostgreSQL followers never wait inside a statement: a blocking
``pg_advisory_lock`` holds a snapshot for as long as it waits, and
``CREATE INDEX CONCURRENTLY`` (``REINDEX``/``DETACH PARTITION CONCURRENTLY``)
in the holder's revision waits for every older snapshot, so it would fail on
its ``lock_timeout`` (PostgreSQL docs, "CREATE INDEX", "Building Indexes
Concurrently"). A follower instead ``LISTEN``s on a channel of the key, tries
``pg_try_advisory_lock`` and sleeps idle on its socket until the holder's
``pg_notify`` on release, or :data:`_PG_RETRY_SECONDS` at most (a holder that
died sends nothing; the server freed its lock). MySQL's ``GET_LOCK`` wait
opens no transaction and holds no read view, so it waits on the server in
slices of at most 5 s. Between slices the waiter logs who holds the lock. The
file lock is polled (``filelock``'s own polling, 50 ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
from sqlalchemy import bindparam, text
from sqlalchemy.engine import URL, Connection

from runner import database, polling, sessions
from runner.errors import ConfigError, LockLost, LockTimeout
from runner.logs import get_logger

# How long the lock connection waits for a cancelled MySQL statement to end before it lets go.
_CANCEL_WAIT_SECONDS = 10.0
_INT64 = 1 << 63
# The longest a PostgreSQL follower sleeps between two tries when no NOTIFY wakes it.
_PG_RETRY_SECONDS = 0.25

# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low
# 32 bits) and objsubid = 1 (PostgreSQL docs, "54.12. pg_locks").
_PG_HOLDER = text(
    """
    SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr,
           a.backend_start AS since, a.state
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = :high AND l.objid::bigint = :low
    """
)
_PG_MINE = text(
    """
    SELECT pg_backend_pid() = :pid AND EXISTS (
        SELECT FROM pg_locks
        WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted AND objsubid = 1
          AND classid::bigint = :high AND objid::bigint = :low)
    """
)
_MYSQL_HOLDER = text(
    "SELECT ID AS pid, USER AS user, HOST AS client_addr, COMMAND AS command, TIME AS state_seconds "
    "FROM information_schema.PROCESSLIST WHERE ID = :id"
)
_MYSQL_PROGRAM = text(
    "SELECT ATTR_VALUE FROM performance_schema.session_connect_attrs "
    "WHERE PROCESSLIST_ID = :id AND ATTR_NAME = 'program_name'"
)


@dataclass
class HeldLock:
    """A lock this run holds.

    Attributes:
        key: the advisory lock key (0 for a file lock).
        wait_seconds: how long acquiring it took, in seconds.
        verify: raises :class:`LockLost` if this session no longer holds the
            lock, or :class:`ConnectionLost` if the lock connection died.
        connection: the lock's own autocommit connection (``None`` for a file
            lock); the ledger writes through it.
        cancel_running: cancels whatever this process's other connections
            still run on the server, and waits (bounded) until it is gone.
    """

    key: int
    wait_seconds: float
    verify: Callable[[], None] = lambda: None
    connection: Connection | None = None
    cancel_running: Callable[[], None] = lambda: None


def derive_key(*, database_name: str, schema: str | None, version_table: str) -> int:
    """Derive a stable signed 64-bit advisory lock key.

    Args:
        database_name: the database the runner migrates.
        schema: the version table's schema, or ``None``.
        version_table: the version table's name.

    Returns:
        An integer in [-2**63, 2**63), the first 8 bytes of a SHA-256.

    """
    material = "\0".join(("migration-runner", database_name, schema or "", version_table))
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big", signed=True)


def parse_key(value: str) -> int:
    """Turn ``MIGRATION_LOCK_KEY`` into a key: a 64-bit integer as is, other text hashed.

    Args:
        value: the setting's text.

    Returns:
        A signed 64-bit integer.

    """
    try:
        number = int(value)
    except ValueError:
        return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big", signed=True)
    if not -_INT64 <= number < _INT64:
        raise ConfigError(f"MIGRATION_LOCK_KEY={value} does not fit a signed 64-bit integer")
    return number


def _wait(
    acquire: Callable[[float], bool],
    describe_holder: Callable[[], dict[str, Any]],
    *,
    timeout: float,
    what: dict[str, Any],
) -> float:
    """Take a lock with ``acquire(seconds)``, which blocks up to that long; name the holder between slices.

    The first call does not block (0 s), so a contended lock is reported at
    once; then each call blocks for at most :data:`polling.REPORT_INTERVAL_SECONDS`.

    Returns:
        Seconds waited.

    Raises:
        LockTimeout: ``timeout`` seconds passed; the message names the holder.
    """
    started = time.monotonic()
    deadline = started + timeout
    wait_for = 0.0
    while not acquire(wait_for):
        now = time.monotonic()
        if now >= deadline:
            holder = describe_holder()
            raise LockTimeout(
                f"lock still held after {timeout:g} s by {holder or 'a session that just released it'}; "
                "another runner is migrating this database: let it finish, or raise MIGRATION_LOCK_TIMEOUT"
            )
        get_logger().info("lock.waiting", waited_seconds=round(now - started, 3), holder=describe_holder(), **what)
        wait_for = min(polling.REPORT_INTERVAL_SECONDS, deadline - now)
    return time.monotonic() - started


def _lost(key: int) -> LockLost:
    return LockLost(
        f"this session no longer holds advisory lock {key}: a transaction-pooling PgBouncer or a failover "
        "is between the runner and the database; point MIGRATION_DATABASE_URL at the database directly, "
        "not at the pooler (docs/failures.md, 'Poolers')"
    )


class _PostgresAdvisoryLock:
    """``pg_try_advisory_lock(bigint)`` on a session of its own, with keepalives."""

    keepalives = True

    def __init__(self, key: int) -> None:
        self.key = key
        unsigned = key % (1 << 64)
        self.where = {"high": unsigned >> 32, "low": unsigned & 0xFFFFFFFF}
        self.fields: dict[str, Any] = {"lock_key": key}
        self.pid: int | None = None
        # An identifier of lower-case hex digits: no quoting needed.
        self.channel = f"migration_runner_{unsigned:016x}"
        self.listening = False

    def acquire(self, connection: Connection, seconds: float) -> bool:
        """Take the lock within ``seconds`` (0: one try), idle between tries: no statement, no snapshot.

        Between tries the session sleeps on its socket for a ``NOTIFY`` on
        :attr:`channel` (sent by the holder's :meth:`release`), at most
        :data:`_PG_RETRY_SECONDS`.
        """
        deadline = time.monotonic() + seconds
        while True:
            row = connection.execute(text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()"), {"k": self.key}).one()
            self.pid = row[1]
            if row[0]:
                if self.listening:
                    connection.execute(text(f"UNLISTEN {self.channel}"))
                    self.listening = False
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not self.listening:
                connection.execute(text(f"LISTEN {self.channel}"))
                self.listening = True
                continue  # the holder may have released between the try and the LISTEN
            driver: Any = connection.connection.driver_connection  # psycopg 3: the runner's only sync driver
            for _ in driver.notifies(timeout=min(left, _PG_RETRY_SECONDS), stop_after=1):
                pass

    def describe_holder(self, connection: Connection) -> dict[str, Any]:
        row = connection.execute(_PG_HOLDER, self.where).mappings().first()
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} if row else {}

    def holds(self, connection: Connection) -> bool:
        # Same server session as when the lock was taken, and it still holds
        # the lock: a transaction pooler may hand each statement to another.
        return bool(connection.execute(_PG_MINE, {**self.where, "pid": self.pid}).scalar())

    def release(self, connection: Connection) -> None:
        # The NOTIFY wakes the followers at once; it is sent when this autocommit statement commits.
        connection.execute(text("SELECT pg_advisory_unlock(:k), pg_notify(:c, '')"), {"k": self.key, "c": self.channel})

    def cancel_running(self, connection: Connection) -> None:
        """Nothing to do: psycopg cancels a statement on the server when the run is interrupted."""


class _MySQLNamedLock:
    """``GET_LOCK(name, 0)``; names are server-wide, at most 64 characters (MySQL docs, "Locking Functions")."""

    keepalives = False

    def __init__(self, key: int) -> None:
        self.key = key
        self.name = f"migration-runner.{key % (1 << 64):016x}"
        self.fields: dict[str, Any] = {"lock_key": key, "lock_name": self.name}

    def acquire(self, connection: Connection, seconds: float) -> bool:
        """``GET_LOCK`` waiting on the server up to ``seconds`` (whole seconds, rounded up; 0: do not wait)."""
        wait = math.ceil(seconds) if seconds > 0 else 0
        return connection.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": self.name, "t": wait}).scalar() == 1

    def describe_holder(self, connection: Connection) -> dict[str, Any]:
        holder = connection.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": self.name}).scalar()
        if holder is None:
            return {}
        row = connection.execute(_MYSQL_HOLDER, {"id": holder}).mappings().first()
        found: dict[str, Any] = dict(row) if row else {"pid": holder}
        with contextlib.suppress(Exception):  # performance_schema may be off
            found["application_name"] = connection.execute(_MYSQL_PROGRAM, {"id": holder}).scalar()
        return found

    def holds(self, connection: Connection) -> bool:
        return bool(connection.execute(text("SELECT IS_USED_LOCK(:n) = CONNECTION_ID()"), {"n": self.name}).scalar())

    def release(self, connection: Connection) -> None:
        connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})

    def cancel_running(self, connection: Connection) -> None:
        """``KILL QUERY`` every statement this process's other connections still run, then wait until gone.

        A client that stops reading (a signal, a deadline) does not stop the
        server: MySQL goes on with the statement, DDL included, and the next
        runner would take the lock while it runs (MySQL docs, "KILL Statement").
        """
        ours = sessions.mysql_connection_ids - {connection.execute(text("SELECT CONNECTION_ID()")).scalar()}
        if not ours:
            return
        busy = text("SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN :ids AND COMMAND <> 'Sleep'").bindparams(
            bindparam("ids", expanding=True)
        )
        running = [row[0] for row in connection.execute(busy, {"ids": sorted(ours)})]
        for thread_id in running:
            with contextlib.suppress(Exception):  # it may have ended meanwhile
                connection.execute(text(f"KILL QUERY {int(thread_id)}"))
        if not running:
            return
        get_logger().warning("statement.cancelled", connection_ids=running)

        def gone() -> bool:
            return not connection.execute(busy, {"ids": running}).first()

        waited = polling.poll(gone, timeout=_CANCEL_WAIT_SECONDS, report=lambda _: None, first_delay=0.05)
        if waited is None:
            get_logger().error("statement.still_running", connection_ids=running, waited_seconds=_CANCEL_WAIT_SECONDS)


@contextlib.contextmanager
def _server_lock(
    url: URL,
    lock: _PostgresAdvisoryLock | _MySQLNamedLock,
    *,
    timeout: float,
    application_name: str,
    connect_for: float,
    on_connect_retry: Callable[[], None],
) -> Iterator[HeldLock]:
    """Take ``lock`` on a dedicated autocommit connection, hold it, and always release it."""
    engine = database.make_engine(
        url,
        application_name=application_name,
        autocommit=True,
        keepalives=lock.keepalives,
        attempt_timeout=database.attempt_seconds(connect_for),
    )
    with database.connect(engine, retry_for=connect_for, on_retry=on_connect_retry) as connection:

        def verify() -> None:
            with database.losing_connection_raises():
                held = lock.holds(connection)
            if not held:
                raise _lost(lock.key)

        with database.losing_connection_raises():
            waited = _wait(
                lambda seconds: lock.acquire(connection, seconds),
                lambda: lock.describe_holder(connection),
                timeout=timeout,
                what=lock.fields,
            )
        verify()  # behind a transaction pooler this already fails
        get_logger().info("lock.acquired", wait_seconds=round(waited, 3), **lock.fields)

        def cancel_running() -> None:
            with contextlib.suppress(Exception):  # best effort: the connection may be gone too
                lock.cancel_running(connection)

        try:
            yield HeldLock(
                key=lock.key, wait_seconds=waited, verify=verify, connection=connection, cancel_running=cancel_running
            )
        finally:
            cancel_running()  # never hand the lock on while one of our statements still runs
            # If the connection is already gone the server has freed the lock.
            with contextlib.suppress(Exception):
                lock.release(connection)
            get_logger().info("lock.released", **lock.fields)


@contextlib.contextmanager
def _file_lock(path: Path, *, timeout: float) -> Iterator[HeldLock]:
    lock = filelock.FileLock(path)

    def acquire(seconds: float) -> bool:
        try:
            lock.acquire(timeout=seconds)
        except filelock.Timeout:
            return False
        return True

    waited = _wait(acquire, lambda: {"lock_file": str(path)}, timeout=timeout, what={"lock_file": str(path)})
    get_logger().info("lock.acquired", lock_file=str(path), wait_seconds=round(waited, 3))
    try:
        yield HeldLock(key=0, wait_seconds=waited)
    finally:
        lock.release()
        get_logger().info("lock.released", lock_file=str(path))


def held_by_anyone(connection: Connection, url: URL, *, key: int) -> bool:
    """Whether some session holds the migration lock right now, without taking it (a file lock: tried and let go).

    Args:
        connection: any connection to the database (read-only use).
        url: the database URL.
        key: the advisory lock key.
    """
    backend = database.family(url)
    if backend == "postgresql":
        return bool(_PostgresAdvisoryLock(key).describe_holder(connection))
    if backend == "mysql":
        name = _MySQLNamedLock(key).name
        return connection.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar() is not None
    path = database.database_name(url)
    if path in ("", ":memory:"):
        return False
    lock = filelock.FileLock(Path(f"{path}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


@contextlib.contextmanager
def migration_lock(
    url: URL,
    *,
    key: int,
    timeout: float,
    application_name: str,
    connect_for: float = 0.0,
    on_connect_retry: Callable[[], None] = lambda: None,
) -> Iterator[HeldLock]:
    """Hold the migration lock for the database at ``url``.

    Args:
        url: a normalised URL (PostgreSQL or SQLite).
        key: the advisory lock key (PostgreSQL only).
        timeout: seconds to wait before giving up.
        application_name: names this runner in ``pg_stat_activity``.
        connect_for: seconds to keep retrying the lock connection.
        on_connect_retry: called before each retry of the lock connection.

    Yields:
        The held lock; it is released on exit, also on error.

    Raises:
        LockTimeout: the lock was not acquired within ``timeout`` seconds.
        DatabaseUnavailable: the lock connection could not be opened.
        ConnectionLost: the lock connection died while waiting.
        LockLost: the lock is not held by this session right after taking it.
        ConfigError: the dialect has no lock implementation.

    """
    backend = database.family(url)
    if backend in ("postgresql", "mysql"):
        lock = _PostgresAdvisoryLock(key) if backend == "postgresql" else _MySQLNamedLock(key)
        with _server_lock(
            url,
            lock,
            timeout=timeout,
            application_name=application_name,
            connect_for=connect_for,
            on_connect_retry=on_connect_retry,
        ) as held:
            yield held
    elif backend == "sqlite":
        path = database.database_name(url)
        if path in ("", ":memory:"):
            yield HeldLock(key=0, wait_seconds=0.0)  # a private database needs no lock
            return
        with _file_lock(Path(f"{path}.lock"), timeout=timeout) as held:
            yield held
    else:  # parse_url already refuses these; keep the contract explicit
        raise ConfigError(f"no migration lock for dialect {backend!r}")
