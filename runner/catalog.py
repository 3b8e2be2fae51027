"""What a database holds beyond the server's own catalog: the scratch-database guard of ``verify``.

``verify`` reverts every revision, so it must only ever run on a database that
holds nothing of value. "Nothing" means every schema the connection can see,
not only the one the version table lives in: an application's tables in schema
``app`` are just as much at stake as those in ``public``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner import database

# The server's own schemas (PostgreSQL docs, "5.10. Schemas"; MySQL docs, "System schema" and kin).
POSTGRES_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
MYSQL_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

# The schemas that hold the application's objects, as a common table expression: every one but the server's own
# (:system) and the sessions' temporary ones.
SPACES = """
    spaces AS (
        SELECT oid, nspname FROM pg_namespace
        WHERE nspname <> ALL (:system) AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
    )"""

# Relations (tables, partitioned tables, views, materialized views, sequences, foreign tables), user-made
# types (enums, domains, ranges, free-standing composites) and functions, in every schema but the server's
# own and the temporary ones; an object that belongs to an extension is the extension's, not the
# application's (pg_depend.deptype 'e'). A sequence that a ledger or version table owns goes with its table.
_POSTGRES_OBJECTS = sa.text(
    f"""
    WITH {SPACES}, of_extensions AS (
        SELECT objid FROM pg_depend WHERE deptype = 'e'
    ), ours AS (
        SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p') AND c.relname = ANY (:ignored)
    )
    SELECT s.nspname || '.' || c.relname AS name,
           CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                          WHEN 'f' THEN 'foreign table' ELSE 'table' END AS kind
    FROM pg_class c JOIN spaces s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND c.oid NOT IN (SELECT objid FROM of_extensions)
      AND c.oid NOT IN (SELECT oid FROM ours)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')
                      AND d.refobjid IN (SELECT oid FROM ours))
    UNION ALL
    SELECT s.nspname || '.' || t.typname,
           CASE t.typtype WHEN 'e' THEN 'enum type' WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range type'
                          ELSE 'type' END
    FROM pg_type t JOIN spaces s ON s.oid = t.typnamespace
    WHERE t.oid NOT IN (SELECT objid FROM of_extensions)
      AND (t.typtype IN ('e', 'd', 'r')
           OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind = 'c')))
    UNION ALL
    SELECT s.nspname || '.' || p.proname, CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END
    FROM pg_proc p JOIN spaces s ON s.oid = p.pronamespace
    WHERE p.oid NOT IN (SELECT objid FROM of_extensions)
    ORDER BY 1
    LIMIT :limit
    """  # noqa: S608  (only the module's own constant SQL is formatted in)
)

# MySQL's schema is its database: the run's own (DATABASE()) is what a revision changes. The server's
# other databases belong to other applications and to other runs; the guard does not read them.
_MYSQL_OBJECTS = sa.text(
    """
    SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) AS name,
           CASE TABLE_TYPE WHEN 'VIEW' THEN 'view' WHEN 'SEQUENCE' THEN 'sequence' ELSE 'table' END AS kind
    FROM information_schema.TABLES
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT IN :ignored
    UNION ALL
    SELECT CONCAT(ROUTINE_SCHEMA, '.', ROUTINE_NAME), LOWER(ROUTINE_TYPE)
    FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
    UNION ALL
    SELECT CONCAT(EVENT_SCHEMA, '.', EVENT_NAME), 'event'
    FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()
    ORDER BY 1
    LIMIT :limit
    """
).bindparams(sa.bindparam("ignored", expanding=True))

_SQLITE_OBJECTS = sa.text(
    """
    SELECT 'main.' || name AS name, type AS kind FROM sqlite_master
    WHERE type IN ('table', 'view', 'trigger') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
      AND name NOT IN :ignored
    ORDER BY 1
    LIMIT :limit
    """
).bindparams(sa.bindparam("ignored", expanding=True))


def application_objects(connection: Connection, ignored: Sequence[str], *, limit: int = 11) -> list[str]:
    """What the database holds beyond the server's own objects and the tools' tables, as ``schema.name (kind)``.

    Args:
        connection: a session on the database.
        ignored: the names of the tools' own tables (the version table, the ledger), which
            ``verify`` may find from an earlier run; sequences they own are theirs too.
        limit: at most this many, sorted by name.

    Returns:
        ``["app.orders (table)", "public.mood (enum type)", ...]``; empty on a scratch database.
        PostgreSQL: every schema the connection can see but ``pg_catalog``, ``information_schema``,
        ``pg_toast`` and the temporary ones. MySQL: the connection's database. SQLite: ``main``.

    Leaves the connection's transaction as it found it (:func:`runner.database.reading`).
    """
    family = database.family(connection.engine.url)
    names = list(ignored) or [""]
    if family == "postgresql":
        query = _POSTGRES_OBJECTS.bindparams(system=list(POSTGRES_SYSTEM_SCHEMAS), ignored=names, limit=limit)
    elif family == "mysql":
        query = _MYSQL_OBJECTS.bindparams(ignored=names, limit=limit)
    else:
        query = _SQLITE_OBJECTS.bindparams(ignored=names, limit=limit)
    with database.reading(connection):
        return [f"{name} ({kind})" for name, kind in connection.execute(query)]


# The objects beside the tables that a downgrade must take away too, each with its definition, in every schema
# but the server's own, as PostgreSQL's own functions print them (pg_get_viewdef, pg_get_triggerdef, ...).
_POSTGRES_DEFINITIONS = {
    # A sequence a column owns (serial, identity) goes with its table, whose column shows it: left out here,
    # so that the tools' own tables' sequences never count.
    "sequence": """
        SELECT n.nspname || '.' || c.relname, format_type(q.seqtypid, NULL) || ' by ' || q.seqincrement
               || (CASE WHEN q.seqcycle THEN ' cycle' ELSE '' END)
        FROM pg_sequence q JOIN pg_class c ON c.oid = q.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL (:system)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))""",
    "enum type": """
        SELECT n.nspname || '.' || t.typname, string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE n.nspname <> ALL (:system) GROUP BY 1""",
    "domain": """
        SELECT n.nspname || '.' || t.typname, format_type(t.typbasetype, t.typtypmod)
               || (CASE WHEN t.typnotnull THEN ' not null' ELSE '' END)
               || coalesce(' ' || (SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
                                   FROM pg_constraint c WHERE c.contypid = t.oid), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype = 'd' AND n.nspname <> ALL (:system)""",
    "view": """
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'v' AND n.nspname <> ALL (:system)""",
    "materialized view": """
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND n.nspname <> ALL (:system)""",
    "function": """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               md5(p.prosrc)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname <> ALL (:system)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""",
    "trigger": """
        SELECT t.tgname || ' on ' || n.nspname || '.' || c.relname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND n.nspname <> ALL (:system)""",
    "extension": "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'",
}
_MYSQL_DEFINITIONS = {
    "view": "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()",
    "routine": """
        SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME), MD5(ROUTINE_DEFINITION)
        FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()""",
    "trigger": """
        SELECT CONCAT(TRIGGER_NAME, ' on ', EVENT_OBJECT_TABLE), ACTION_STATEMENT
        FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()""",
    "event": "SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()",
    "sequence": """
        SELECT TABLE_NAME, '' FROM information_schema.TABLES
        WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'SEQUENCE'""",
}
_SQLITE_DEFINITIONS = {
    "view": "SELECT name, sql FROM sqlite_master WHERE type = 'view'",
    "trigger": "SELECT name || ' on ' || tbl_name, sql FROM sqlite_master WHERE type = 'trigger'",
}


def definitions(connection: Connection) -> dict[str, tuple[tuple[str, str], ...]]:
    """The database's objects beside its tables, by kind: ``{"enum type": (("public.mood", "ok, sad"), ...)}``.

    PostgreSQL: sequences, enum types and their labels, domains, views, materialized views, functions
    and procedures (by signature, their body's MD5), triggers and extensions, in every schema but the
    server's own. MySQL: the run's database's views, routines, triggers, events and sequences.
    SQLite: views and triggers. Leaves the connection's transaction as it found it.
    """
    family = database.family(connection.engine.url)
    queries = {"postgresql": _POSTGRES_DEFINITIONS, "mysql": _MYSQL_DEFINITIONS}.get(family, _SQLITE_DEFINITIONS)
    found: dict[str, tuple[tuple[str, str], ...]] = {}
    with database.reading(connection):
        for kind, sql in queries.items():
            query = sa.text(sql)
            if ":system" in sql:
                query = query.bindparams(system=list(POSTGRES_SYSTEM_SCHEMAS))
            found[kind] = tuple(sorted((str(name), str(value or "")) for name, value in connection.execute(query)))
    return found


@dataclass(frozen=True)
class Baseline:
    """What a scratch database held before ``verify`` began, which a rebuild keeps: its schemas and extensions.

    Attributes:
        schemas: PostgreSQL's schemas beside the server's own (``public``, and any the CI made, such
            as the version table's); empty on MySQL and SQLite.
        extensions: PostgreSQL's installed extensions (the template's, or the CI's).
    """

    schemas: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()


def baseline(connection: Connection) -> Baseline:
    """The schemas and extensions the database has now (:class:`Baseline`)."""
    if database.family(connection.engine.url) != "postgresql":
        return Baseline()
    with database.reading(connection):
        schemas = connection.execute(_POSTGRES_SPACES.bindparams(system=list(POSTGRES_SYSTEM_SCHEMAS))).scalars()
        kept_schemas = tuple(sorted(schemas))
        extensions = tuple(sorted(connection.execute(sa.text("SELECT extname FROM pg_extension")).scalars()))
    return Baseline(kept_schemas, extensions)


_POSTGRES_SPACES = sa.text(f"WITH {SPACES} SELECT nspname FROM spaces")  # noqa: S608  (constant SQL)

# The statements that empty a PostgreSQL database down to its baseline, each object quoted by the server
# (format's %I): the schemas made since, then the extensions, then in the kept schemas every relation, type
# and routine that no extension owns. CASCADE, and IF EXISTS because one drop may take others with it.
_POSTGRES_DROPS = sa.text(
    f"""
    WITH {SPACES}, kept AS (
        SELECT oid, nspname FROM spaces WHERE nspname = ANY (:schemas)
    ), of_extensions AS (
        SELECT objid FROM pg_depend WHERE deptype = 'e'
    )
    SELECT 1 AS rank, format('DROP SCHEMA IF EXISTS %I CASCADE', nspname) FROM spaces WHERE nspname <> ALL (:schemas)
    UNION ALL
    SELECT 2, format('DROP EXTENSION IF EXISTS %I CASCADE', extname) FROM pg_extension
    WHERE extname <> ALL (:extensions)
    UNION ALL
    SELECT 3, format('DROP %s IF EXISTS %I.%I CASCADE',
                     CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                                    WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, k.nspname, c.relname)
    FROM pg_class c JOIN kept k ON k.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM of_extensions)
      -- a serial's or identity's sequence goes with its table, and cannot be dropped before it
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
    UNION ALL
    SELECT 4, format('DROP %s IF EXISTS %I.%I CASCADE', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                     k.nspname, t.typname)
    FROM pg_type t JOIN kept k ON k.oid = t.typnamespace
    WHERE t.oid NOT IN (SELECT objid FROM of_extensions)
      AND (t.typtype IN ('e', 'd', 'r')
           OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind = 'c')))
    UNION ALL
    SELECT 5, format('DROP ROUTINE IF EXISTS %I.%I(%s) CASCADE', k.nspname, p.proname,
                     pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN kept k ON k.oid = p.pronamespace
    WHERE p.oid NOT IN (SELECT objid FROM of_extensions)
    ORDER BY 1
    """  # noqa: S608  (only the module's own constant SQL is formatted in)
)

# MySQL: the run's database's views first, then its tables and sequences, routines and events; a name is
# quoted with backticks, a backtick in it doubled. Foreign keys are not checked while they go.
_MYSQL_DROPS = sa.text(
    """
    SELECT CONCAT('DROP ', CASE TABLE_TYPE WHEN 'VIEW' THEN 'VIEW' WHEN 'SEQUENCE' THEN 'SEQUENCE' ELSE 'TABLE' END,
                  ' IF EXISTS `', REPLACE(TABLE_NAME, '`', '``'), '`'), TABLE_TYPE <> 'VIEW' AS rank
    FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()
    UNION ALL
    SELECT CONCAT('DROP ', ROUTINE_TYPE, ' IF EXISTS `', REPLACE(ROUTINE_NAME, '`', '``'), '`'), 2
    FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
    UNION ALL
    SELECT CONCAT('DROP EVENT IF EXISTS `', REPLACE(EVENT_NAME, '`', '``'), '`'), 2
    FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()
    ORDER BY 2
    """
)

# SQLite: views, then tables, the newest first (what refers to a table is usually made after it).
_SQLITE_DROPS = sa.text(
    """
    SELECT 'DROP ' || upper(type) || ' IF EXISTS "' || replace(name, '"', '""') || '"'
    FROM sqlite_master WHERE type IN ('view', 'table') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
    ORDER BY type = 'table', rowid DESC
    """
)


def drop_everything(connection: Connection, kept: Baseline) -> int:
    """Empty a scratch database down to what it held before ``verify`` began: ``verify``'s rebuild.

    Every table, view, sequence, type, routine, trigger and event goes, the tools' own
    tables with them; on PostgreSQL the schemas and extensions made since go too, while
    those in ``kept`` stay (emptied). Call it only on a database :func:`application_objects`
    found empty at the start.

    Args:
        connection: a session on the database, outside any transaction of the caller's.
        kept: what it held at the start (:func:`baseline`).

    Returns:
        How many drop statements ran.

    Raises:
        sqlalchemy.exc.DBAPIError: the server refused a drop (a lock it waited on, a privilege).
    """
    family = database.family(connection.engine.url)
    if connection.in_transaction():
        connection.rollback()
    if family == "postgresql":
        query = _POSTGRES_DROPS.bindparams(
            system=list(POSTGRES_SYSTEM_SCHEMAS), schemas=list(kept.schemas), extensions=list(kept.extensions)
        )
        statements = [row[1] for row in connection.execute(query)]
    elif family == "mysql":
        statements = [row[0] for row in connection.execute(_MYSQL_DROPS)]
        statements = ["SET FOREIGN_KEY_CHECKS = 0", *statements, "SET FOREIGN_KEY_CHECKS = 1"]
    else:
        # Deferred: a table's rows may refer to another's, and all of them go before the commit checks.
        statements = ["PRAGMA defer_foreign_keys = ON", *connection.execute(_SQLITE_DROPS).scalars()]
    try:
        for statement in statements:
            database.execute_statement(connection, statement)
        connection.commit()
    finally:
        if connection.in_transaction():
            connection.rollback()
    return len(statements)


# What verify compares a PostgreSQL database by between two steps, in one round trip: a line per table, column
# (type, nullability, default, identity, generated), constraint, index and trigger (as the server prints their
# definitions) and per object beside the tables (_POSTGRES_DEFINITIONS), sorted by their text and hashed. No OID
# and no column position is in it, so a database rebuilt from the same revisions hashes the same.
_POSTGRES_TABLE_LINES = """
    SELECT 'table ' || s.nspname || '.' || c.relname || ' ' || c.relkind::text
    FROM pg_class c JOIN spaces s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f') AND c.oid NOT IN (SELECT oid FROM ours)
    UNION ALL
    SELECT 'column ' || s.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || (CASE WHEN a.attnotnull THEN ' not null' ELSE '' END)
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attidentity::text
           || a.attgenerated::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN spaces s ON s.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND c.oid NOT IN (SELECT oid FROM ours)
    UNION ALL
    SELECT 'constraint ' || s.nspname || '.' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN spaces s ON s.oid = c.relnamespace
    WHERE c.oid NOT IN (SELECT oid FROM ours)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(x.indexrelid)
    FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN spaces s ON s.oid = c.relnamespace
    WHERE c.oid NOT IN (SELECT oid FROM ours)
"""


def fingerprint(connection: Connection, ignored: Sequence[str]) -> str:
    """A hash of everything :func:`definitions` and the tables' definitions hold, on PostgreSQL; one query.

    ``verify`` takes one before each revision is applied and one after it is reverted: equal
    hashes mean the downgrade left no trace, and only a difference costs the full comparison.

    Args:
        connection: a session on a PostgreSQL database.
        ignored: the tools' own tables (the version table, the ledger), left out with what they own.

    Returns:
        An MD5 hex digest. Leaves the connection's transaction as it found it.
    """
    beside = " UNION ALL ".join(  # only the module's own constant SQL is formatted in
        f"SELECT '{kind} ' || q.name || ' ' || coalesce(q.value, '') FROM ({sql}) AS q(name, value)"  # noqa: S608
        for kind, sql in _POSTGRES_DEFINITIONS.items()
    )
    query = sa.text(
        f"""
        WITH {SPACES}, ours AS (
            SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p') AND c.relname = ANY (:ignored)
        )
        SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), ''))
        FROM ({_POSTGRES_TABLE_LINES} UNION ALL {beside}) AS lines(line)
        """  # noqa: S608  (only the module's own constant SQL is formatted in)
    ).bindparams(system=list(POSTGRES_SYSTEM_SCHEMAS), ignored=list(ignored) or [""])
    with database.reading(connection):
        return str(connection.execute(query).scalar_one())
