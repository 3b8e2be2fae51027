"""Statements other than ``ALTER TABLE`` read by PostgreSQL's parser: locks, rewrites and flags.

Sources: PostgreSQL docs, "13.3.1. Table-Level Locks", "CREATE INDEX" ("Building
Indexes Concurrently"), "DROP INDEX", "REINDEX", "CLUSTER", "VACUUM", "CREATE
TRIGGER", "COMMENT", "TRUNCATE" and "ALTER TABLE" (RENAME, SET SCHEMA).
"""

from __future__ import annotations

from typing import Any

from runner.pg_alter_table import (
    _EXCLUSIVE,
    _ROW_EXCLUSIVE,
    _SHARE,
    _SHARE_ROW,
    _UPDATE_EXCLUSIVE,
    BLOCKING,
    Reading,
    TableReader,
    _schema_and_name,
)


class StatementReader(TableReader):
    """Reads one step's statements in order (:meth:`read`), each against what the ones before it left."""

    def read(self, node: Any, shown: str) -> Reading:
        """What ``node`` (one parsed statement, shown as ``shown``) locks, rewrites and risks."""
        reading = Reading()
        kind = type(node).__name__
        method = getattr(self, f"_{kind}", None)
        if method is not None:
            method(node, reading, shown)
        blocking = sorted(table for table, mode in reading.locks.items() if mode in BLOCKING)
        if blocking and not self.timeout:
            self.flag(
                reading,
                "needs_lock_timeout",
                blocking,
                "takes a lock that blocks traffic on {tables} with no lock_timeout in force: it can wait behind a "
                "long transaction while every query on the table queues behind it; set MIGRATION_DDL_LOCK_TIMEOUT "
                "(or SET LOCAL lock_timeout) and let the runner retry",
                shown,
            )
        return reading

    def _RenameStmt(self, node: Any, reading: Reading, shown: str) -> None:
        what = node.renameType.name
        if what not in {"OBJECT_TABLE", "OBJECT_COLUMN", "OBJECT_TABCONSTRAINT"}:
            return
        table = self.table(node.relation)
        if table is None:
            return
        reading.lock(table, _EXCLUSIVE)
        if what == "OBJECT_TABLE" and self.released(table):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"renames {{tables}} to {node.newname}: the running release still uses the old name; "
                "add a view under the old name, or rename in two releases",
                shown,
            )
        elif what == "OBJECT_COLUMN" and self.released(table, node.subname):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"renames column {node.subname} of {{tables}} to {node.newname}: the running release still uses "
                "the old name; add the new column and copy, then drop the old one in a later release",
                shown,
            )

    def _AlterObjectSchemaStmt(self, node: Any, reading: Reading, shown: str) -> None:
        table = self.table(node.relation) if node.objectType.name == "OBJECT_TABLE" else None
        if table is not None:
            reading.lock(table, _EXCLUSIVE)
            if self.released(table):
                self.flag(
                    reading,
                    "backward_incompatible",
                    [table],
                    "moves {tables} to another schema: the running release still looks for it where it was",
                    shown,
                )

    def _IndexStmt(self, node: Any, reading: Reading, shown: str) -> None:
        table = self.table(node.relation)
        if table is None:
            return
        if node.concurrent:
            reading.lock(table, _UPDATE_EXCLUSIVE)
            return
        reading.lock(table, _SHARE)
        self.flag(
            reading,
            "blocks_writes",
            [table],
            "CREATE INDEX without CONCURRENTLY: writes to {tables} wait (SHARE lock) until the index is built; "
            "use CREATE INDEX CONCURRENTLY, outside a transaction",
            shown,
        )

    def _DropStmt(self, node: Any, reading: Reading, shown: str) -> None:
        what = node.removeType.name
        names = [[part.sval for part in obj] for obj in node.objects or ()]
        if what == "OBJECT_TABLE":
            tables = [t for parts in names if (t := self.named(*_schema_and_name(parts))) is not None]
            for table in tables:
                reading.lock(table, _EXCLUSIVE)
            self.flag(reading, "destroys", tables, "drops {tables} and every row in it", shown)
            used = [t for t in tables if self.released(t)]
            self.flag(
                reading, "backward_incompatible", used, "drops {tables}, which the running release still reads", shown
            )
            for table in tables:
                self.existing.tables.pop(table, None)
        elif what == "OBJECT_INDEX":
            tables = sorted({t for parts in names if (t := self._index_table(parts)) is not None})
            for table in tables:
                reading.lock(table, _UPDATE_EXCLUSIVE if node.concurrent else _EXCLUSIVE)
            if not node.concurrent:
                self.flag(
                    reading,
                    "blocks_writes",
                    tables,
                    "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on {tables}: reads and writes "
                    "wait for it, and it waits for every open transaction on the table; use DROP INDEX CONCURRENTLY",
                    shown,
                )
        elif what == "OBJECT_TRIGGER":
            for parts in names:
                trigger_table = self.named(*_schema_and_name(parts[:-1]))
                if trigger_table is not None:
                    reading.lock(trigger_table, _EXCLUSIVE)

    def _index_table(self, parts: list[str]) -> str | None:
        schema, name = _schema_and_name(parts)
        spaces = [schema] if schema else list(self.existing.search_path)
        table = next(
            (self.existing.indexes[f"{s}.{name}"] for s in spaces if f"{s}.{name}" in self.existing.indexes), None
        )
        return None if table is None or table not in self.existing.tables else table

    def _TruncateStmt(self, node: Any, reading: Reading, shown: str) -> None:
        tables = [t for r in node.relations or () if (t := self.table(r)) is not None]
        for table in tables:
            reading.lock(table, _EXCLUSIVE)
            reading.rewrites.add(table)  # a new, empty relfilenode
        self.flag(reading, "destroys", tables, "empties {tables}", shown)

    def _UpdateStmt(self, node: Any, reading: Reading, shown: str) -> None:
        self._rows(node, reading, shown, "overwrites")

    def _DeleteStmt(self, node: Any, reading: Reading, shown: str) -> None:
        self._rows(node, reading, shown, "deletes")

    def _rows(self, node: Any, reading: Reading, shown: str, verb: str) -> None:
        table = self.table(node.relation)
        if table is None:
            return
        reading.lock(table, _ROW_EXCLUSIVE)
        if node.whereClause is None:
            self.flag(reading, "destroys", [table], f"{verb} every row of {{tables}}: it has no WHERE", shown)

    def _InsertStmt(self, node: Any, reading: Reading, shown: str) -> None:
        table = self.table(node.relation)
        if table is not None:
            reading.lock(table, _ROW_EXCLUSIVE)

    def _ReindexStmt(self, node: Any, reading: Reading, shown: str) -> None:
        kind = node.kind.name
        if kind == "REINDEX_OBJECT_TABLE":
            table = self.table(node.relation)
        elif kind == "REINDEX_OBJECT_INDEX":
            table = self._index_table([p for p in (node.relation.schemaname, node.relation.relname) if p])
        else:
            return
        concurrently = any(getattr(option, "defname", None) == "concurrently" for option in node.params or ())
        if table is None or concurrently:
            return
        reading.lock(table, _SHARE)
        self.flag(
            reading,
            "blocks_writes",
            [table],
            "REINDEX without CONCURRENTLY: writes to {tables} wait until it is done; use REINDEX CONCURRENTLY",
            shown,
        )

    def _ClusterStmt(self, node: Any, reading: Reading, shown: str) -> None:
        table = self.table(node.relation)
        if table is not None:
            reading.lock(table, _EXCLUSIVE)
            reading.rewrites.add(table)
            self.flag(
                reading,
                "rewrite",
                [table],
                "CLUSTER writes {tables} anew under an ACCESS EXCLUSIVE lock (reads and writes wait throughout)",
                shown,
            )

    def _VacuumStmt(self, node: Any, reading: Reading, shown: str) -> None:
        full = any(getattr(option, "defname", None) == "full" for option in node.options or ())
        tables = [t for r in node.rels or () if (t := self.table(r.relation)) is not None]
        for table in tables:
            reading.lock(table, _EXCLUSIVE if full else _UPDATE_EXCLUSIVE)
            if full:
                reading.rewrites.add(table)
        if full:
            self.flag(
                reading,
                "rewrite",
                tables,
                "VACUUM FULL writes {tables} anew under an ACCESS EXCLUSIVE lock; plain VACUUM does not block",
                shown,
            )

    def _CreateTrigStmt(self, node: Any, reading: Reading, shown: str) -> None:
        table = self.table(node.relation)
        if table is not None:
            reading.lock(table, _SHARE_ROW)

    def _CreateStmt(self, node: Any, reading: Reading, shown: str) -> None:
        """CREATE TABLE: a foreign key to an existing table locks it (SHARE ROW EXCLUSIVE), briefly."""
        for element in node.tableElts or ():
            constraints = getattr(element, "constraints", None) or (element,)
            for constraint in constraints:
                if type(constraint).__name__ == "Constraint" and constraint.contype.name == "CONSTR_FOREIGN":
                    referred = self.table(constraint.pktable)
                    if referred is not None:
                        reading.lock(referred, _SHARE_ROW)

    def _CommentStmt(self, node: Any, reading: Reading, shown: str) -> None:
        if node.objtype.name in {"OBJECT_TABLE", "OBJECT_COLUMN"}:
            parts = [part.sval for part in node.object]
            table = self.named(*_schema_and_name(parts if node.objtype.name == "OBJECT_TABLE" else parts[:-1]))
            if table is not None:
                reading.lock(table, _UPDATE_EXCLUSIVE)

    # -- expressions and types --
