"""PostgreSQL statements read by PostgreSQL's own parser (``pglast``): the locks, rewrites and risks of each.

For each statement, :func:`read_statement` predicts the strongest table-level
lock it takes on each table that exists before the upgrade, whether it rewrites
one (a new ``relfilenode``), and its flags (:mod:`runner.flags`). ``plan
--trace`` measures the same two things from ``pg_locks`` and ``pg_class``; the
flag corpus (``tests/test_flag_corpus.py``) holds the two to each other.

Sources: PostgreSQL docs, "13.3.1. Table-Level Locks", the "ALTER TABLE" page
(each subform's lock level; "Notes": which changes rewrite the table, and that
a non-volatile default or a binary-coercible type change does not), "CREATE
INDEX" ("Building Indexes Concurrently"), "DROP INDEX", "REINDEX", "CLUSTER",
"CREATE TRIGGER", "COMMENT" and "TRUNCATE".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pglast

from runner.flags import Existing, Flag, shortened, statements, text_flag
from runner.pg_alter_table import BLOCKING, MODES, Reading
from runner.pg_statements import StatementReader


class StepState(Protocol):
    """What the reading of a plan keeps from step to step (:class:`runner.reading.Reader`)."""

    existing: Existing
    session_timeout: bool  # a lock_timeout is in force for the statements to come


__all__ = ["BLOCKING", "MODES", "Reading", "read_step", "readings", "split"]


def split(sql: str) -> Iterator[tuple[str, Any]]:
    """``(text, node)`` per statement of ``sql``; ``node`` is None for one the parser cannot read."""
    try:
        parsed = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        for text in statements(sql):
            try:
                nodes = pglast.parse_sql(text)
            except pglast.parser.ParseError:
                yield text, None
                continue
            for raw in nodes:
                yield text, raw.stmt
        return
    for raw in parsed:  # pglast gives stmt_location and stmt_len in characters (libpg_query's bytes, converted)
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        yield sql[start:end].strip(), raw.stmt


def readings(reader: StepState, sql: str) -> list[tuple[str, Reading | None]]:
    """Each statement of one step's SQL with its :class:`Reading`; None for one the parser cannot read.

    A ``SET lock_timeout`` is followed: ``SET LOCAL`` for the rest of the step, a plain ``SET``
    for the rest of the plan.
    """
    timeout = reader.session_timeout
    context = StatementReader(reader.existing)
    out: list[tuple[str, Reading | None]] = []
    for text, node in split(sql):
        if node is None:
            out.append((text, None))
            continue
        if type(node).__name__ == "VariableSetStmt" and node.name == "lock_timeout":
            timeout = _timeout_value(node) != 0
            if not node.is_local:
                reader.session_timeout = timeout
            continue
        context.timeout = timeout
        out.append((text, context.read(node, shortened(text))))
    return out


def read_step(reader: StepState, sql: str) -> list[Flag]:
    """The flags of one step's SQL, in statement order; a statement the parser cannot read is read as text."""
    found: list[Flag] = []
    for text, reading in readings(reader, sql):
        if reading is None:
            existing = reader.existing
            found.extend(
                Flag(
                    f.kind,
                    f.table,
                    f.detail.replace("does not apply to this database", "could not read it"),
                    f.statement,
                    parsed=False,
                )
                for f in text_flag(text, "postgresql")
                if (table := _by_bare_name(existing, f.table)) and table not in existing.ignored
            )
        else:
            found.extend(reading.flags)
    return found


def _by_bare_name(existing: Existing, name: str) -> str | None:
    return next((table for table in existing.tables if table.rsplit(".", 1)[-1] == name), None)


def _timeout_value(node: Any) -> int:
    """A ``SET lock_timeout`` value in milliseconds as far as "is it 0" goes: ``0``, ``'0'``, ``'0s'`` are 0."""
    if node.kind.name != "VAR_SET_VALUE" or not node.args:
        return 0  # SET ... TO DEFAULT, RESET: the server's default, which is 0 unless configured
    value = node.args[0].val
    raw = getattr(value, "ival", None)
    if raw is None:
        raw = getattr(value, "sval", "") or getattr(value, "fval", "")
    digits = "".join(ch for ch in str(raw) if ch.isdigit() or ch == ".")
    return 0 if not digits or float(digits) == 0 else 1
