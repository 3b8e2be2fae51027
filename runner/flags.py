"""What a pending step's SQL does to what exists before it: the plan's flags, by risk.

Read by PostgreSQL's own parser (``pglast``, :mod:`runner.pg_reading`) against the
catalog as it stands before the upgrade (:func:`read_existing`): the columns' types,
nullability and defaults, the indexes, the functions' volatility, the binary-coercible
casts. Elsewhere (MySQL, SQLite) the statements are read as text, and each flag says so.

The kinds, most serious first (docs/ci.md, "Plan and review"):

- ``destroys``: ``DROP TABLE``/``COLUMN``, ``TRUNCATE``, ``UPDATE``/``DELETE`` without ``WHERE``.
- ``rewrite``: the table and its indexes are written anew under ``ACCESS EXCLUSIVE``.
- ``scans``: every row is read under a lock that blocks writes (or reads and writes).
- ``blocks_writes``: an index is built or dropped without ``CONCURRENTLY``.
- ``backward_incompatible``: pods of the release still running break once it has run.
- ``needs_lock_timeout``: a brief lock that blocks traffic, with no ``lock_timeout`` in force,
  so it can queue behind a long transaction and every query behind it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Most serious first: a step's risk is its first kind in this order.
KINDS = ("destroys", "rewrite", "scans", "blocks_writes", "backward_incompatible", "needs_lock_timeout")
_STATEMENT_SHOWN_CHARS = 200


@dataclass(frozen=True)
class Flag:
    """One risk of one statement.

    Attributes:
        kind: one of :data:`KINDS`.
        table: the existing table(s) it concerns, schema-qualified on PostgreSQL, ``", "``-joined.
        detail: one sentence for a reviewer: what happens, and what to do instead.
        statement: the statement, shortened to 200 characters.
        parsed: read by PostgreSQL's parser; False: read from the text (another database, or a
            statement the parser could not read), which the detail then says.
    """

    kind: str
    table: str
    detail: str
    statement: str
    parsed: bool = True


@dataclass
class Column:
    """A column as the catalog has it before the upgrade.

    Attributes:
        type: its type's name in ``pg_type`` (``varchar``, ``int4``, ``numeric``).
        typmods: the numbers in its declared type (``varchar(100)``: ``(100,)``; ``numeric(12,2)``: ``(12, 2)``).
        not_null: it is ``NOT NULL``.
        has_default: it has a server default (or is an identity column).
    """

    type: str
    typmods: tuple[int, ...] = ()
    not_null: bool = False
    has_default: bool = False


@dataclass
class Existing:
    """What exists before the upgrade, as the reading needs it.

    Attributes:
        family: ``postgresql``, ``mysql`` or ``sqlite``.
        tables: table -> its columns by name. PostgreSQL: ``schema.table``; elsewhere the bare,
            lower-cased name and no columns.
        ignored: the tool's own tables (version table, ledger), never flagged.
        indexes: ``schema.index`` -> ``schema.table`` (PostgreSQL).
        proven_not_null: ``(table, column)`` with a valid ``CHECK (column IS NOT NULL)``, which
            lets ``SET NOT NULL`` skip its scan (PostgreSQL 12+, "ALTER TABLE", SET NOT NULL).
        volatility: function name -> ``i``, ``s`` or ``v`` (``pg_proc.provolatile``; the most
            volatile of its overloads).
        binary_casts: ``(source, target)`` type names whose cast is binary-coercible (``pg_cast``).
        search_path: the schemas an unqualified name resolves in, in order.
        lock_timeout: a ``lock_timeout`` applies to each step before it runs any statement
            (the runner's ``MIGRATION_DDL_LOCK_TIMEOUT``, when not 0).
        foreign_keys: ``(table, constraint)`` -> the table it references: dropping one locks that table too.
        release_columns: the tables and columns the running release's code reads, where the tool
            knows them (Django: the migration state at the database's current migrations);
            None where it does not (Alembic): then every existing one counts.
    """

    family: str
    tables: dict[str, dict[str, Column]]
    ignored: frozenset[str] = frozenset()
    indexes: dict[str, str] = field(default_factory=dict)
    proven_not_null: set[tuple[str, str]] = field(default_factory=set)
    volatility: dict[str, str] = field(default_factory=dict)
    binary_casts: set[tuple[str, str]] = field(default_factory=set)
    search_path: tuple[str, ...] = ("public",)
    lock_timeout: bool = True
    release_columns: dict[str, set[str]] | None = None
    foreign_keys: dict[tuple[str, str], str] = field(default_factory=dict)


@functools.cache
def _pg_queries() -> dict[str, Any]:
    """The catalog queries of :func:`read_existing`, built on first use: SQLAlchemy stays unloaded on a no-op run."""
    import sqlalchemy as sa  # noqa: PLC0415

    from runner import catalog  # noqa: PLC0415

    _PG_COLUMNS = sa.text(
        f"""
    WITH {catalog.SPACES}
    SELECT n.nspname || '.' || c.relname, a.attname, t.typname, format_type(a.atttypid, a.atttypmod),
           a.attnotnull, a.atthasdef OR a.attidentity <> ''
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname IN (SELECT nspname FROM spaces)
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_type t ON t.oid = a.atttypid
    WHERE c.relkind IN ('r', 'p')
    """  # noqa: S608  (constant SQL)
    ).bindparams(system=list(catalog.POSTGRES_SYSTEM_SCHEMAS))
    _PG_INDEXES = sa.text(
        f"""
    WITH {catalog.SPACES}
    SELECT n.nspname || '.' || i.relname, tn.nspname || '.' || t.relname
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
    JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE n.nspname IN (SELECT nspname FROM spaces)
    """  # noqa: S608  (constant SQL)
    ).bindparams(system=list(catalog.POSTGRES_SYSTEM_SCHEMAS))
    _PG_NOT_NULL_CHECKS = sa.text(
        f"""
    WITH {catalog.SPACES}
    SELECT n.nspname || '.' || c.relname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE k.contype = 'c' AND k.convalidated AND n.nspname IN (SELECT nspname FROM spaces)
    """  # noqa: S608  (constant SQL)
    ).bindparams(system=list(catalog.POSTGRES_SYSTEM_SCHEMAS))
    _PG_FOREIGN_KEYS = sa.text(
        f"""
    WITH {catalog.SPACES}
    SELECT n.nspname || '.' || c.relname, k.conname, rn.nspname || '.' || r.relname
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
    WHERE k.contype = 'f' AND n.nspname IN (SELECT nspname FROM spaces)
    """  # noqa: S608  (constant SQL)
    ).bindparams(system=list(catalog.POSTGRES_SYSTEM_SCHEMAS))
    # 'i' < 's' < 'v' as text: max() is the most volatile overload.
    _PG_VOLATILITY = "SELECT proname, max(provolatile::text) FROM pg_proc GROUP BY proname"
    _PG_BINARY_CASTS = """
    SELECT s.typname, t.typname FROM pg_cast k
    JOIN pg_type s ON s.oid = k.castsource JOIN pg_type t ON t.oid = k.casttarget
    WHERE k.castmethod = 'b'
    """
    return {
        "columns": _PG_COLUMNS,
        "indexes": _PG_INDEXES,
        "not_null_checks": _PG_NOT_NULL_CHECKS,
        "foreign_keys": _PG_FOREIGN_KEYS,
        "volatility": _PG_VOLATILITY,
        "binary_casts": _PG_BINARY_CASTS,
    }


_NOT_NULL_CHECK = re.compile(r'^CHECK \(\((?P<column>"(?:[^"]|"")+"|\w+) IS NOT NULL\)\)$')


def read_existing(
    connection: Connection,
    family: str,
    *,
    schema: str | None,
    ignored: Iterable[str],
    lock_timeout: bool,
    release_columns: dict[str, set[str]] | None = None,
) -> Existing:
    """The schema before the upgrade, read on ``connection`` (a read-only transaction it ends).

    Args:
        connection: a connection to the database, outside a transaction.
        family: its :func:`runner.database.family`.
        schema: the version table's schema (MySQL, SQLite: the tables listed are that schema's).
        ignored: the tool's own tables, bare names.
        lock_timeout: the runner sets a ``lock_timeout`` on each step.
        release_columns: see :class:`Existing`.
    """
    from runner import database  # noqa: PLC0415  (database imports nothing of ours that needs this)

    skip = frozenset(name.lower() for name in ignored)
    if family != "postgresql":
        names: dict[str, dict[str, Column]] = {name.lower(): {} for name in database.table_names(connection, schema)}
        return Existing(family, names, skip, lock_timeout=lock_timeout, release_columns=release_columns)
    queries = _pg_queries()
    with database.reading(connection):
        tables: dict[str, dict[str, Column]] = {}
        for table, column, typname, shown, not_null, has_default in connection.execute(queries["columns"]):
            columns = tables.setdefault(table, {})
            if column is not None:
                columns[column] = Column(typname, _typmods(shown), bool(not_null), bool(has_default))
        indexes: dict[str, str] = {index: table for index, table in connection.execute(queries["indexes"])}
        proven: set[tuple[str, str]] = set()
        for table, definition in connection.execute(queries["not_null_checks"]):
            if match := _NOT_NULL_CHECK.match(definition):
                proven.add((table, _unquote(match.group("column"))))
        volatility: dict[str, str] = {name: kind for name, kind in connection.exec_driver_sql(queries["volatility"])}
        casts = {(source, target) for source, target in connection.exec_driver_sql(queries["binary_casts"])}
        (path,) = connection.exec_driver_sql("SELECT current_schemas(false)").one()
        foreign_keys = {
            (table, name): referred for table, name, referred in connection.execute(queries["foreign_keys"])
        }
    return Existing(
        family,
        tables,
        skip,
        indexes,
        proven,
        volatility,
        casts,
        tuple(path) or ("public",),
        lock_timeout,
        release_columns,
        foreign_keys,
    )


def _typmods(shown: str) -> tuple[int, ...]:
    """The numbers in a type as ``format_type`` shows it: ``character varying(100)`` -> ``(100,)``."""
    inside = re.search(r"\(([\d,\s]+)\)", shown)
    return tuple(int(number) for number in inside.group(1).split(",")) if inside else ()


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def shortened(statement: str) -> str:
    """``statement`` on one line, at most 200 characters."""
    text = " ".join(statement.split())
    return text if len(text) <= _STATEMENT_SHOWN_CHARS else text[: _STATEMENT_SHOWN_CHARS - 1] + "…"


_MARKER = re.compile(r"^[ \t]*#[ \t]*migration-runner:[ \t]*accept[ \t]+(?P<kinds>[^\n]*)$", re.MULTILINE)


def accepted_kinds(revision: str, source: Path | None, setting: Iterable[str]) -> set[str]:
    """The flag kinds ``revision`` opts out of, for a deliberate contract step.

    From the ``REVISION:KIND`` entries of ``MIGRATION_ACCEPT_FLAGS``, and from
    ``# migration-runner: accept KIND[, KIND]`` lines in its source file.

    Raises:
        ConfigError: a marker names a kind that is not one of :data:`KINDS`.
    """
    kinds = {kind for entry in setting for named, _, kind in [entry.rpartition(":")] if named == revision}
    text = source.read_text(errors="replace") if source is not None and source.is_file() else ""
    for match in _MARKER.finditer(text):
        for kind in (k.strip() for k in match.group("kinds").split(",")):
            if kind not in KINDS:
                raise ConfigError(
                    f"{source}: '# migration-runner: accept {kind}' names no flag kind; use one of {', '.join(KINDS)}"
                )
            kinds.add(kind)
    return kinds


def risk(kinds: Iterable[str]) -> str | None:
    """The most serious of ``kinds`` (:data:`KINDS` order), or None for none."""
    present = set(kinds)
    return next((kind for kind in KINDS if kind in present), None)


# ---- text: MySQL and SQLite, where PostgreSQL's parser does not apply ----

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_NAME = r'(?:"[^"]+"|`[^`]+`|[\w$]+)'
_QUALIFIED = rf"(?P<table>{_NAME}(?:\s*\.\s*{_NAME})*)"
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}\s*(?P<rest>.*)$", re.I | re.S)
_CREATE_INDEX = re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+.*?\bON\s+{_QUALIFIED}", re.I | re.S)
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.I)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}", re.I)
_UNBOUNDED = re.compile(rf"^(?:UPDATE\s+{_QUALIFIED}|DELETE\s+FROM\s+(?P<dtable>{_NAME}(?:\s*\.\s*{_NAME})*))", re.I)
_DROP_COLUMN = re.compile(
    r"\bDROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b|DEFAULT\b|INDEX\b|KEY\b|PRIMARY\b|FOREIGN\b)\S+", re.I
)
_RENAME = re.compile(r"\b(?:RENAME\s+(?:COLUMN|TO|AS)\b|CHANGE\s+(?:COLUMN\s+)?\S+)", re.I)
_REMADE = re.compile(rf"^ALTER\s+TABLE\s+[\"`]?new__\w+[\"`]?\s+RENAME\s+TO\s+({_NAME})", re.I)
_TEXT_NOTE = " (read from the text: PostgreSQL's parser does not apply to this database)"


def statements(sql: str) -> list[str]:
    """The statements of rendered SQL, comments removed, in order (split at a ``;`` that ends a line)."""
    text = _COMMENT.sub("", sql)
    return [part.strip() for part in _STATEMENT_END.split(text) if part.strip()]


def bare(name: str) -> str:
    """The table part of a possibly qualified, possibly quoted name; unquoted names fold to lower case."""
    last = re.split(r"\s*\.\s*(?=(?:[^\"`]|\"[^\"]*\"|`[^`]*`)*$)", name)[-1]
    if last[:1] in '"`':
        return last[1:-1]
    return last.lower()


def text_flags(sql: str, existing: Existing) -> list[Flag]:
    """MySQL and SQLite: what the text of each statement says about existing tables."""
    found: list[Flag] = []
    parts = statements(sql)
    # Django on SQLite remakes a table to alter it (CREATE new__t, copy, DROP t, rename new__t to t): no loss.
    remade = {bare(m.group(1)) for part in parts if (m := _REMADE.match(part))}
    for statement in parts:
        found.extend(
            flag
            for flag in text_flag(statement, existing.family)
            if flag.table in existing.tables and flag.table not in existing.ignored and flag.table not in remade
        )
    return found


def text_flag(statement: str, family: str) -> list[Flag]:
    """One statement's flags as its text says (bare table names, ``parsed`` False), whichever tables exist."""
    shown = shortened(statement)

    def flag(kind: str, table: str, detail: str) -> Flag:
        return Flag(kind, table, detail + _TEXT_NOTE, shown, parsed=False)

    if match := _ALTER_TABLE.match(statement):
        table, rest = bare(match.group("table")), match.group("rest")
        out = []
        if _DROP_COLUMN.search(rest):
            out.append(flag("destroys", table, f"drops a column of {table}: its data is gone"))
            out.append(
                flag("backward_incompatible", table, f"drops a column of {table} that the running release reads")
            )
        if _RENAME.search(rest):
            out.append(
                flag(
                    "backward_incompatible",
                    table,
                    f"renames {table} or a column of it: the running release still uses the old name",
                )
            )
        if family == "mysql":
            out.append(
                flag(
                    "blocks_writes",
                    table,
                    f"ALTER TABLE on {table}: MySQL may copy the table and block writes; "
                    "check its online-DDL rules (ALGORITHM=INSTANT or INPLACE, LOCK=NONE)",
                )
            )
        return out
    if (match := _CREATE_INDEX.match(statement)) and family == "mysql":
        table = bare(match.group("table"))
        return [
            flag(
                "blocks_writes",
                table,
                f"builds an index on {table}; on a large table, check the server's online-DDL rules",
            )
        ]
    if match := _DROP_TABLE.match(statement):
        table = bare(match.group("table"))
        return [
            flag("destroys", table, f"drops {table} and its rows"),
            flag("backward_incompatible", table, f"drops {table}, which the running release reads"),
        ]
    if match := _TRUNCATE.match(statement):
        table = bare(match.group("table"))
        return [flag("destroys", table, f"empties {table}")]
    if (match := _UNBOUNDED.match(statement)) and not re.search(r"\bWHERE\b", statement, re.I):
        table = bare(match.group("table") or match.group("dtable"))
        return [flag("destroys", table, f"changes or deletes every row of {table}: no WHERE")]
    return []


def flags_document(flags: Iterable[Flag]) -> list[dict[str, Any]]:
    """The flags as the plan document has them."""
    return [
        {"kind": f.kind, "table": f.table, "detail": f.detail, "statement": f.statement, "parsed": f.parsed}
        for f in flags
    ]
