"""What a database holds beyond the server's own catalog: the scratch-database guard of ``verify``.

``verify`` reverts every revision, so it must only ever run on a database that
holds nothing of value. "Nothing" means every schema the connection can see,
not only the one the version table lives in: an application's tables in schema
``app`` are just as much at stake as those in ``public``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner import database

# The server's own schemas (PostgreSQL docs, "5.10. Schemas"; MySQL docs, "System schema" and kin).
POSTGRES_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
MYSQL_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

# Relations (tables, partitioned tables, views, materialized views, sequences, foreign tables), user-made
# types (enums, domains, ranges, free-standing composites) and functions, in every schema but the server's
# own and the temporary ones; an object that belongs to an extension is the extension's, not the
# application's (pg_depend.deptype 'e'). A sequence that a ledger or version table owns goes with its table.
_POSTGRES_OBJECTS = sa.text(
    """
    WITH spaces AS (
        SELECT oid, nspname FROM pg_namespace
        WHERE nspname <> ALL (:system) AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
    ), of_extensions AS (
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
    """
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

    Ends the transaction its query opened, so the connection can be handed on.
    """
    family = database.family(connection.engine.url)
    names = list(ignored) or [""]
    if family == "postgresql":
        query = _POSTGRES_OBJECTS.bindparams(system=list(POSTGRES_SYSTEM_SCHEMAS), ignored=names, limit=limit)
    elif family == "mysql":
        query = _MYSQL_OBJECTS.bindparams(ignored=names, limit=limit)
    else:
        query = _SQLITE_OBJECTS.bindparams(ignored=names, limit=limit)
    try:
        return [f"{name} ({kind})" for name, kind in connection.execute(query)]
    finally:
        if connection.in_transaction():
            connection.rollback()
