"""``plan --trace`` (PostgreSQL): run the pending steps in a transaction that is always rolled back, and watch.

After every statement the backend's own entries in ``pg_locks`` are read
(PostgreSQL docs, "54.12. pg_locks"): the table-level locks it now holds on
tables that existed before the trace, and each table's ``relfilenode``, which
changes when the table is rewritten ("73.1. Database File Layout"). A lock mode
that conflicts with ``SELECT`` (``ACCESS EXCLUSIVE``) blocks reads and writes;
one that conflicts with ``INSERT``/``UPDATE``/``DELETE`` (``SHARE``, ``SHARE ROW
EXCLUSIVE``, ``EXCLUSIVE``) blocks writes ("13.3.1. Table-Level Locks").

The queries go through a DB-API cursor of the migration's own connection (for an
async driver, SQLAlchemy's synchronous adapter of it, which ``env.py``'s
``run_sync`` makes usable here), so they see its transaction and take no part in
it beyond ``AccessShareLock`` on catalogs.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.errors import chain

BLOCKS_READS = frozenset({"AccessExclusiveLock"})
BLOCKS_WRITES = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"})
_STATEMENT_SHOWN_CHARS = 200

_TABLES = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND left(n.nspname, 8) <> 'pg_toast'
"""
# No parameters: each driver's DB-API adapter has its own placeholder style (psycopg's %s, asyncpg's $1), so the
# oids, integers the trace read itself, are written into the text (_oids).
_LOCKS = """
SELECT relation, mode FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted AND relation = ANY({oids})
"""
_FILENODES = "SELECT oid, relfilenode FROM pg_class WHERE oid = ANY({oids})"


def _oids(oids: list[int]) -> str:
    return "'{" + ",".join(str(int(oid)) for oid in oids) + "}'::oid[]"


class NotTraceable(Exception):  # a stop of the trace, not an error of the run
    """A statement the trace does not run: it would end, split or leave the transaction that is rolled back.

    Raised before the statement reaches the server (:func:`why_not_traceable`), or after it,
    with ``committed``, when the server reports that the transaction has ended all the same.
    """

    def __init__(self, reason: str, *, committed: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.committed = reason, committed


def guard(statement: str) -> None:
    """Refuse ``statement`` before the server sees it when the trace must not run it (:func:`why_not_traceable`).

    Raises:
        NotTraceable: with the reason.
    """
    why = why_not_traceable(statement)
    if why is not None:
        raise NotTraceable(why)


def not_traced(
    tracer: Tracer, stop: NotTraceable, revision: str, later: Sequence[str], *, noun: str
) -> list[tuple[str, str]]:
    """The trace stopped in ``revision``: what it showed of it is dropped; it and each step after it are not traced.

    Args:
        tracer: the trace's tracer, whose statements of ``revision`` are removed.
        stop: why it stopped.
        revision: the step that was running.
        later: the steps of the plan after it, in order.
        noun: what the tool calls a step: ``revision`` (Alembic), ``migration`` (Django).

    Returns:
        ``(step, why)`` for ``revision`` and each of ``later``, as a driver's ``rehearse`` returns them.
    """
    tracer.statements[:] = [s for s in tracer.statements if s.revision != revision]
    return [
        (revision, f"not traced: {stop.reason}; it was not run"),
        *((step, f"comes after a {noun} that was not traced: not run") for step in later),
    ]


def stop_in(error: BaseException) -> NotTraceable | None:
    """The :class:`NotTraceable` that ``error`` is, or was raised from (a driver or env.py may wrap it)."""
    # Ten links are more than any driver or env.py wraps it in.
    return next((raised for raised in itertools.islice(chain(error), 10) if isinstance(raised, NotTraceable)), None)


# A DB-API statement as a pyformat driver receives it: "%%" is a literal "%", "%s" and "%(name)s" are parameters.
_PYFORMAT = re.compile(r"%%|%\(\w+\)s|%s")


def why_not_traceable(statement: str) -> str | None:
    """Why ``statement`` must not run inside the trace's transaction, or None, as PostgreSQL's own parser reads it.

    ``pglast`` is PostgreSQL's parser (libpg_query): a ``COMMIT`` inside a comment or a string
    literal is no ``COMMIT``, and one after a ``;`` is. Stopped: every transaction statement
    (``BEGIN``, ``COMMIT``/``END``, ``ROLLBACK``, ``SAVEPOINT``, ``RELEASE``, ``PREPARE
    TRANSACTION``), ``VACUUM``, and ``CREATE``/``DROP``/``REINDEX`` ``... CONCURRENTLY``, which
    cannot run in a transaction block. A statement the parser cannot read is not run either.
    """
    import pglast  # noqa: PLC0415  (plan --trace only)

    text = _PYFORMAT.sub(lambda match: "%" if match.group(0) == "%%" else "$1", statement)
    try:
        parsed = pglast.parse_sql(text)
    except pglast.parser.ParseError as error:
        return f"PostgreSQL's parser cannot read one of its statements ({error}), so it may commit"
    for raw in parsed:
        node: Any = raw.stmt
        kind = type(node).__name__
        if kind == "TransactionStmt":
            words = node.kind.name.removeprefix("TRANS_STMT_").replace("_", " ")
            return f"it runs {words}, which would end or split the transaction the trace rolls back"
        if kind == "VacuumStmt" and getattr(node, "is_vacuumcmd", False):
            return "it runs VACUUM, which cannot run inside a transaction"
        concurrently = getattr(node, "concurrent", False) or any(
            getattr(option, "defname", None) == "concurrently" for option in getattr(node, "params", None) or ()
        )
        if kind in {"IndexStmt", "DropStmt", "ReindexStmt"} and concurrently:
            return "it builds or drops an index CONCURRENTLY, which cannot run inside a transaction"
    return None


@dataclass
class TracedStatement:
    """One statement as it ran.

    Attributes:
        revision: the step it belongs to.
        statement: its text, shortened.
        duration_seconds: how long it ran.
        locks: ``(table, mode)`` newly held on existing tables after it.
        rewritten: existing tables it rewrote (their ``relfilenode`` changed).
        held: ``(table, mode, since)``: every lock held on existing tables while it ran, newly taken or
            not, with the revision that took it (all revisions run in one transaction, so an earlier
            revision's locks are held too).
    """

    revision: str
    statement: str
    duration_seconds: float
    locks: list[tuple[str, str]] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    held: list[tuple[str, str, str]] = field(default_factory=list)
    text: str = ""  # the whole statement, placeholders as PostgreSQL's $1: what plan reads flags from

    @property
    def blocking(self) -> list[tuple[str, str]]:
        """The locks its own revision holds that block reads or writes of an existing table while it runs."""
        return [(table, mode) for table, mode, since in self.held if since == self.revision and mode in BLOCKS_WRITES]


class Tracer:
    """Watches one connection's statements: call :meth:`begin` once, then :meth:`before`/:meth:`after` each.

    The drivers hand it cursors of the DB-API connection itself, which neither
    SQLAlchemy's events nor Django's ``execute_wrapper`` see, so its own queries
    are never traced.
    """

    def __init__(self) -> None:
        self.statements: list[TracedStatement] = []
        self.revision: str | None = None
        self._tables: dict[int, tuple[str, int]] = {}
        self._held: set[tuple[int, str]] = set()
        self._started = 0.0
        self._xid = 0  # the trace's transaction, from its first statement on
        self._since: dict[tuple[int, str], str] = {}  # (table oid, mode) -> the revision that took the lock

    def begin(self, cursor: Any) -> None:
        """Snapshot the tables that exist before the trace (their oid, name and relfilenode)."""
        cursor.execute(_TABLES)
        self._tables = {int(oid): (str(name), int(node)) for oid, name, node in cursor.fetchall()}

    def before(self) -> None:
        """A statement of the migration is about to run."""
        self._started = time.monotonic()

    def after(self, cursor: Any, statement: str) -> None:
        """A statement of the migration ran: read what it locked and rewrote, with ``cursor`` (not the migration's).

        Raises:
            NotTraceable: (``committed``) the server's transaction is no longer the one the trace
                began: something ended it that :func:`why_not_traceable` did not stop.
        """
        duration = time.monotonic() - self._started
        cursor.execute("SELECT txid_current()")  # the server's own word: still the one transaction?
        (xid,) = cursor.fetchone()
        self._xid = self._xid or int(xid)
        if int(xid) != self._xid:
            raise NotTraceable(f"the transaction ended after {' '.join(statement.split())[:80]!r}", committed=True)
        if self.revision is None:
            return
        oids = _oids(list(self._tables))
        cursor.execute(_LOCKS.format(oids=oids))
        held = {(int(oid), str(mode)) for oid, mode in cursor.fetchall()}
        cursor.execute(_FILENODES.format(oids=oids))
        nodes = {int(oid): int(node) for oid, node in cursor.fetchall()}
        new = sorted(held - self._held)
        self._held |= held
        for lock in new:
            self._since.setdefault(lock, self.revision)
        rewritten = []
        for oid, node in nodes.items():
            name, before = self._tables[oid]
            if node != before:
                rewritten.append(name)
                self._tables[oid] = (name, node)
        text = " ".join(statement.split())
        shown = text if len(text) <= _STATEMENT_SHOWN_CHARS else text[: _STATEMENT_SHOWN_CHARS - 1] + "…"
        self.statements.append(
            TracedStatement(
                revision=self.revision,
                statement=shown,
                duration_seconds=duration,
                locks=[(self._tables[oid][0], mode) for oid, mode in new],
                rewritten=rewritten,
                held=[(self._tables[oid][0], mode, self._since.get((oid, mode), "")) for oid, mode in sorted(held)],
                text=_PYFORMAT.sub(lambda match: "%" if match.group(0) == "%%" else "$1", statement),
            )
        )


def statements_by_revision(statements: list[TracedStatement]) -> dict[str, list[str]]:
    """Per revision, the whole text of each statement it ran: the SQL of a step that cannot be rendered offline."""
    out: dict[str, list[str]] = {}
    for traced in statements:
        out.setdefault(traced.revision, []).append(traced.text)
    return out


def report(statements: list[TracedStatement]) -> dict[str, list[dict[str, Any]]]:
    """Per revision, its statements as the plan document shows them (``trace`` of each step)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for traced in statements:
        out.setdefault(traced.revision, []).append(
            {
                "statement": traced.statement,
                "duration_seconds": round(traced.duration_seconds, 6),
                "locks": [{"table": table, "mode": mode} for table, mode in traced.locks],
                "held": [{"table": table, "mode": mode, "since": since} for table, mode, since in traced.held],
                "rewritten": traced.rewritten,
                "blocks_reads": sorted({t for t, mode in traced.blocking if mode in BLOCKS_READS}),
                "blocks_writes": sorted({t for t, mode in traced.blocking}),
            }
        )
    return out
