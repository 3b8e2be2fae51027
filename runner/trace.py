"""``plan --trace`` (PostgreSQL): run the pending steps in a transaction that is always rolled back, and watch.

After every statement the backend's own entries in ``pg_locks`` are read
(PostgreSQL docs, "54.12. pg_locks"): the table-level locks it now holds on
tables that existed before the trace, and each table's ``relfilenode``, which
changes when the table is rewritten ("73.1. Database File Layout"). A lock mode
that conflicts with ``SELECT`` (``ACCESS EXCLUSIVE``) blocks reads and writes;
one that conflicts with ``INSERT``/``UPDATE``/``DELETE`` (``SHARE``, ``SHARE ROW
EXCLUSIVE``, ``EXCLUSIVE``) blocks writes ("13.3.1. Table-Level Locks").

The queries go through the DB-API cursor of the migration's own connection, so
they see its transaction and take no part in it beyond ``AccessShareLock`` on
catalogs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

BLOCKS_READS = frozenset({"AccessExclusiveLock"})
BLOCKS_WRITES = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"})
_STATEMENT_SHOWN_CHARS = 200

_TABLES = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%'
"""
_LOCKS = """
SELECT relation, mode FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted AND relation = ANY(%s)
"""
_FILENODES = "SELECT oid, relfilenode FROM pg_class WHERE oid = ANY(%s)"


@dataclass
class TracedStatement:
    """One statement as it ran.

    Attributes:
        revision: the step it belongs to.
        statement: its text, shortened.
        duration_seconds: how long it ran.
        locks: ``(table, mode)`` newly held on existing tables after it.
        rewritten: existing tables it rewrote (their ``relfilenode`` changed).
    """

    revision: str
    statement: str
    duration_seconds: float
    locks: list[tuple[str, str]] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[tuple[str, str]]:
        """The locks it took that block reads or writes of an existing table."""
        return [(table, mode) for table, mode in self.locks if mode in BLOCKS_WRITES]


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

    def begin(self, cursor: Any) -> None:
        """Snapshot the tables that exist before the trace (their oid, name and relfilenode)."""
        cursor.execute(_TABLES)
        self._tables = {int(oid): (str(name), int(node)) for oid, name, node in cursor.fetchall()}

    def before(self) -> None:
        """A statement of the migration is about to run."""
        self._started = time.monotonic()

    def after(self, cursor: Any, statement: str) -> None:
        """A statement of the migration ran: read what it locked and rewrote, with ``cursor`` (not the migration's)."""
        if self.revision is None:
            return
        duration = time.monotonic() - self._started
        oids = list(self._tables)
        cursor.execute(_LOCKS, (oids,))
        held = {(int(oid), str(mode)) for oid, mode in cursor.fetchall()}
        cursor.execute(_FILENODES, (oids,))
        nodes = {int(oid): int(node) for oid, node in cursor.fetchall()}
        new = sorted(held - self._held)
        self._held |= held
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
            )
        )


def report(statements: list[TracedStatement]) -> dict[str, list[dict[str, Any]]]:
    """Per revision, its statements as the plan document shows them (``trace`` of each step)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for traced in statements:
        out.setdefault(traced.revision, []).append(
            {
                "statement": traced.statement,
                "duration_seconds": round(traced.duration_seconds, 6),
                "locks": [{"table": table, "mode": mode} for table, mode in traced.locks],
                "rewritten": traced.rewritten,
                "blocks_reads": sorted({t for t, mode in traced.locks if mode in BLOCKS_READS}),
                "blocks_writes": sorted({t for t, mode in traced.locks if mode in BLOCKS_WRITES}),
            }
        )
    return out
