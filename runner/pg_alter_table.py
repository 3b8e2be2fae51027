"""``ALTER TABLE`` read by PostgreSQL's parser: each subform's lock, whether it rewrites, and its flags.

Sources: PostgreSQL docs, the "ALTER TABLE" page (each subform's lock level; its
"Notes": a non-volatile default, a binary-coercible type change or a wider
``varchar``/``numeric`` does not rewrite the table, and ``SET NOT NULL`` skips its
scan under a valid ``CHECK (col IS NOT NULL)``), and "13.3.1. Table-Level Locks".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from runner.flags import Column, Existing, Flag

# pg_locks' mode names, weakest first ("13.3.1. Table-Level Locks").
MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
_RANK = {mode: rank for rank, mode in enumerate(MODES)}
# Conflicts with ROW EXCLUSIVE, which INSERT, UPDATE and DELETE take: writes wait.
BLOCKING = frozenset(MODES[_RANK["ShareLock"] :])
_EXCLUSIVE, _SHARE_ROW, _SHARE, _UPDATE_EXCLUSIVE, _ROW_EXCLUSIVE = (
    "AccessExclusiveLock",
    "ShareRowExclusiveLock",
    "ShareLock",
    "ShareUpdateExclusiveLock",
    "RowExclusiveLock",
)
# ALTER TABLE subforms that take less than ACCESS EXCLUSIVE ("ALTER TABLE", "Description").
_SUBFORM_LOCK = {
    "AT_ValidateConstraint": _UPDATE_EXCLUSIVE,
    "AT_SetStatistics": _UPDATE_EXCLUSIVE,
    "AT_ClusterOn": _UPDATE_EXCLUSIVE,
    "AT_DropCluster": _UPDATE_EXCLUSIVE,
    "AT_SetOptions": _UPDATE_EXCLUSIVE,
    "AT_ResetOptions": _UPDATE_EXCLUSIVE,
    "AT_SetRelOptions": _UPDATE_EXCLUSIVE,
    "AT_ResetRelOptions": _UPDATE_EXCLUSIVE,
    "AT_AttachPartition": _UPDATE_EXCLUSIVE,
    **{
        name: _SHARE_ROW
        for name in (
            "AT_EnableTrig",
            "AT_EnableAlwaysTrig",
            "AT_EnableReplicaTrig",
            "AT_DisableTrig",
            "AT_EnableTrigAll",
            "AT_DisableTrigAll",
            "AT_EnableTrigUser",
            "AT_DisableTrigUser",
        )
    },
}
_SERIALS = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
# Same type, new modifiers: kinds whose values fit unchanged when the limit grows (or goes).
_GROWS_IN_PLACE = frozenset({"varchar", "varbit", "timestamp", "timestamptz", "time", "timetz", "interval"})
# Type changes that keep every value the running release writes or reads (a wider integer, a wider float).
_WIDENING = frozenset({("int2", "int4"), ("int2", "int8"), ("int4", "int8"), ("float4", "float8")})
# Integer to numeric keeps every value when the integer digits (precision - scale) hold the type's largest.
_INTEGER_DIGITS = {"int2": 5, "int4": 10, "int8": 19}


@dataclass
class Reading:
    """What one statement does to the tables that exist before the upgrade.

    Attributes:
        locks: table -> the strongest mode it takes on it (a ``pg_locks`` mode name).
        rewrites: the tables it writes anew (a new ``relfilenode``).
        flags: its flags, each kind once.
    """

    locks: dict[str, str] = field(default_factory=dict)
    rewrites: set[str] = field(default_factory=set)
    flags: list[Flag] = field(default_factory=list)

    def lock(self, table: str, mode: str) -> None:
        """Record ``mode`` on ``table`` unless a stronger one is recorded."""
        if _RANK[mode] > _RANK.get(self.locks.get(table, ""), -1):
            self.locks[table] = mode


class TableReader:
    """The reading of one step's statements on the tables that exist: names, flags, and ALTER TABLE.

    What the statements before it in the plan changed (a column added, a table dropped) is in ``existing``.
    """

    def __init__(self, existing: Existing) -> None:
        self.existing = existing
        self.timeout = existing.lock_timeout
        self.pending_checks: dict[str, tuple[str, str]] = {}  # NOT VALID "col IS NOT NULL" check -> (table, col)

    # -- names --
    def table(self, range_var: Any) -> str | None:
        """The existing table a ``RangeVar`` names, schema-qualified; None for a new or unknown one, or the tool's."""
        if range_var is None:
            return None
        return self.named(range_var.schemaname, range_var.relname)

    def named(self, schema: str | None, name: str) -> str | None:
        """The existing table ``schema.name`` (or ``name`` on the search path); None as :meth:`table`."""
        tables = self.existing.tables
        candidates = [f"{schema}.{name}"] if schema else [f"{space}.{name}" for space in self.existing.search_path]
        found = next((c for c in candidates if c in tables), None)
        return None if found is None or name.lower() in self.existing.ignored else found

    def released(self, table: str, column: str | None = None) -> bool:
        """Whether the running release reads ``table`` (or its ``column``): always, where the tool cannot tell."""
        known = self.existing.release_columns
        if known is None:
            return True
        bare = table.rsplit(".", 1)[-1]
        if bare not in known:
            return False
        return column is None or column in known[bare]

    # -- statements --
    def flag(self, reading: Reading, kind: str, tables: list[str], detail: str, shown: str) -> None:
        """Add a ``kind`` flag about ``tables`` unless the statement has one of that kind, or no table concerns it."""
        if tables and all(f.kind != kind for f in reading.flags):
            names = ", ".join(tables)
            reading.flags.append(Flag(kind, names, detail.format(tables=names), shown))

    def _AlterTableStmt(self, node: Any, reading: Reading, shown: str) -> None:
        if node.objtype.name != "OBJECT_TABLE":
            return
        table = self.table(node.relation)
        for command in node.cmds or ():
            subtype = command.subtype.name
            foreign_key = subtype == "AT_AddConstraint" and command.def_.contype.name == "CONSTR_FOREIGN"
            if table is not None and not foreign_key:  # a foreign key's locks are _references'
                reading.lock(table, _SUBFORM_LOCK.get(subtype, _EXCLUSIVE))
            handler = getattr(self, f"_{subtype}", None)
            if handler is not None:
                handler(table, command, reading, shown)

    def _AT_AddColumn(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        definition = command.def_
        constraints = {c.contype.name: c for c in definition.constraints or ()}
        for constraint in constraints.values():
            if constraint.contype.name == "CONSTR_FOREIGN":
                self._references(table, constraint, reading, shown)
        if table is None:
            return
        name = definition.colname
        type_name = definition.typeName.names[-1].sval
        default = constraints.get("CONSTR_DEFAULT")
        volatile = default is not None and self.volatile(default.raw_expr)
        if type_name in _SERIALS or "CONSTR_IDENTITY" in constraints or volatile or _stored(constraints):
            why = (
                f"a {type_name} column"
                if type_name in _SERIALS
                else "an identity column"
                if "CONSTR_IDENTITY" in constraints
                else "a generated column"
                if _stored(constraints)
                else "a volatile default"
            )
            reading.rewrites.add(table)
            self.flag(
                reading,
                "rewrite",
                [table],
                f"adds {why} ({name}): every row of {{tables}} is written anew under an ACCESS EXCLUSIVE lock "
                "(reads and writes wait throughout); add the column without it, then fill it in batches",
                shown,
            )
        if {"CONSTR_PRIMARY", "CONSTR_UNIQUE"} & constraints.keys():
            self.flag(
                reading,
                "blocks_writes",
                [table],
                "adds a column with a PRIMARY KEY or UNIQUE constraint: the index is built under an ACCESS EXCLUSIVE "
                "lock on {tables} (reads and writes wait); build it with CREATE UNIQUE INDEX CONCURRENTLY, then "
                "ADD CONSTRAINT ... USING INDEX",
                shown,
            )
        if "CONSTR_CHECK" in constraints:
            self.flag(
                reading,
                "scans",
                [table],
                "adds a column with a CHECK constraint, checked on every row of {tables} under the lock",
                shown,
            )
        not_null = "CONSTR_NOTNULL" in constraints or "CONSTR_PRIMARY" in constraints
        if not_null and default is None and not _generated(constraints, type_name) and self.released(table):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"adds {name} NOT NULL without a server default: the running release's INSERTs into {{tables}} do not "
                "set it and fail; give it a server default, or make it NOT NULL in a later release",
                shown,
            )
        self.existing.tables[table][name] = Column(
            type_name, _type_mods(definition.typeName), not_null, default is not None
        )

    def _AT_DropColumn(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is None:
            return
        self.flag(reading, "destroys", [table], f"drops column {command.name} of {{tables}}: its data is gone", shown)
        if self.released(table, command.name):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"drops column {command.name} of {{tables}}, which the running release still reads and writes: stop "
                "using it in one release, drop it in the next",
                shown,
            )
        self.existing.tables[table].pop(command.name, None)

    def _AT_AlterColumnType(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is None:
            return
        column = self.existing.tables[table].get(command.name)
        new_type = command.def_.typeName.names[-1].sval
        new_mods = _type_mods(command.def_.typeName)
        rewrites = self.rewrites_for_type(column, command.name, new_type, new_mods, command.def_.raw_default)
        old = "?" if column is None else _shown_type(column.type, column.typmods)
        if rewrites:
            reading.rewrites.add(table)
            self.flag(
                reading,
                "rewrite",
                [table],
                f"changes the type of {command.name} ({old} to {_shown_type(new_type, new_mods)}), which is not "
                "binary-coercible: {tables} and its indexes are written anew under an ACCESS EXCLUSIVE lock; add a new "
                "column, fill it in batches, then switch",
                shown,
            )
        widening = column is not None and (not rewrites or _widening(column, new_type, new_mods))
        if not widening and self.released(table, command.name):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"changes the type of {command.name} ({old} to {_shown_type(new_type, new_mods)}): the running "
                "release may write values the new type refuses; widen only, or add a new column",
                shown,
            )
        if column is not None:
            self.existing.tables[table][command.name] = Column(new_type, new_mods, column.not_null, column.has_default)

    def _AT_SetNotNull(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is None:
            return
        name = command.name
        if (table, name) not in self.existing.proven_not_null:
            self.flag(
                reading,
                "scans",
                [table],
                f"SET NOT NULL on {name} reads every row of {{tables}} under an ACCESS EXCLUSIVE lock; first add "
                f"CHECK ({name} IS NOT NULL) NOT VALID and VALIDATE it, then SET NOT NULL skips the scan",
                shown,
            )
        column = self.existing.tables[table].get(name)
        if column is not None and not column.has_default and self.released(table):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"makes {name} NOT NULL with no server default: the running release may insert rows without it",
                shown,
            )
        if column is not None:
            column.not_null = True

    def _AT_ColumnDefault(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is None or command.def_ is not None:
            return  # SET DEFAULT: the default applies to new rows only, no scan
        column = self.existing.tables[table].get(command.name)
        # The running release omits a column it does not know, and may omit one it knows: either relies on it.
        if column is not None and column.not_null and self.released(table):
            self.flag(
                reading,
                "backward_incompatible",
                [table],
                f"drops the default of {command.name}, which is NOT NULL: the running release's INSERTs that rely on "
                "it fail",
                shown,
            )
        if column is not None:
            column.has_default = False

    def _AT_AddConstraint(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        constraint = command.def_
        kind = constraint.contype.name
        if kind == "CONSTR_FOREIGN":
            self._references(table, constraint, reading, shown)
            return
        if table is None:
            return
        if kind == "CONSTR_CHECK":
            column = _is_not_null_check(constraint.raw_expr)
            if constraint.skip_validation:
                if column and constraint.conname:
                    self.pending_checks[constraint.conname] = (table, column)
                return
            if column:
                self.existing.proven_not_null.add((table, column))
            self.flag(
                reading,
                "scans",
                [table],
                "adds a CHECK constraint that reads every row of {tables} under an ACCESS EXCLUSIVE lock; add it NOT "
                "VALID, then VALIDATE CONSTRAINT in a later statement (which lets reads and writes go on)",
                shown,
            )
        elif kind in {"CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"} and not constraint.indexname:
            self.flag(
                reading,
                "blocks_writes",
                [table],
                "adds a constraint whose index is built under an ACCESS EXCLUSIVE lock on {tables} (reads and writes "
                "wait); build the index with CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
                shown,
            )
        elif kind == "CONSTR_NOTNULL":
            for name in constraint.keys or ():
                self._AT_SetNotNull(table, _Named(name.sval), reading, shown)

    def _AT_DropConstraint(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        """Dropping a foreign key takes ACCESS EXCLUSIVE on the table it references too (its triggers go)."""
        referred = self.existing.foreign_keys.get((table or "", command.name))
        if referred is not None and referred in self.existing.tables:
            reading.lock(referred, _EXCLUSIVE)

    def _AT_ValidateConstraint(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if command.name in self.pending_checks:
            self.existing.proven_not_null.add(self.pending_checks.pop(command.name))

    def _AT_SetLogged(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is not None:
            reading.rewrites.add(table)
            self.flag(
                reading,
                "rewrite",
                [table],
                "SET LOGGED/UNLOGGED writes {tables} anew under an ACCESS EXCLUSIVE lock",
                shown,
            )

    _AT_SetUnLogged = _AT_SetLogged

    def _AT_SetTableSpace(self, table: str | None, command: Any, reading: Reading, shown: str) -> None:
        if table is not None:
            reading.rewrites.add(table)
            self.flag(
                reading, "rewrite", [table], "SET TABLESPACE copies {tables} under an ACCESS EXCLUSIVE lock", shown
            )

    def _references(self, table: str | None, constraint: Any, reading: Reading, shown: str) -> None:
        """A foreign key: SHARE ROW EXCLUSIVE on both tables; without NOT VALID, every row of the table is checked."""
        referred = self.table(constraint.pktable)
        touched = [t for t in (table, referred) if t is not None]
        for name in touched:
            reading.lock(name, _SHARE_ROW)
        if table is not None and not constraint.skip_validation:  # a new column too: every row is checked
            self.flag(
                reading,
                "scans",
                touched,
                "adds a FOREIGN KEY checked against every row of {tables} while writes to both wait (SHARE ROW "
                "EXCLUSIVE); add it NOT VALID, then VALIDATE CONSTRAINT in a later statement",
                shown,
            )

    def volatile(self, expression: Any) -> bool:
        """Whether a default expression calls a volatile function (or one the catalog does not know yet)."""
        for name in _function_names(expression(depth=None, skip_none=True) if expression is not None else None):
            if self.existing.volatility.get(name, "v") == "v":
                return True
        return False

    def rewrites_for_type(
        self, column: Column | None, name: str, new_type: str, new_mods: tuple[int, ...], using: Any
    ) -> bool:
        """Whether ``ALTER COLUMN name TYPE new_type(new_mods) [USING using]`` writes the table anew.

        Not when the old type is binary-coercible to the new one with no new limit, or the same type
        with a wider limit ("ALTER TABLE", Notes); an unknown column or a USING that computes counts.
        """
        if column is None:
            return True
        if using is not None and not _plain_using(using, name):
            return True
        if new_type == column.type:
            if new_mods == column.typmods or (new_type in _GROWS_IN_PLACE and _wider(column.typmods, new_mods)):
                return False
            return not (new_type == "numeric" and _wider_numeric(column.typmods, new_mods))
        return (column.type, new_type) not in self.existing.binary_casts or bool(new_mods)


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def _schema_and_name(parts: list[str]) -> tuple[str | None, str]:
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def _stored(constraints: dict[str, Any]) -> bool:
    return "CONSTR_GENERATED" in constraints


def _generated(constraints: dict[str, Any], type_name: str) -> bool:
    return bool({"CONSTR_GENERATED", "CONSTR_IDENTITY"} & constraints.keys()) or type_name in _SERIALS


def _type_mods(type_name: Any) -> tuple[int, ...]:
    mods = []
    for mod in type_name.typmods or ():
        value = getattr(getattr(mod, "val", None), "ival", None)
        if value is not None:
            mods.append(int(value))
    return tuple(mods)


def _shown_type(name: str, mods: tuple[int, ...]) -> str:
    return f"{name}({','.join(map(str, mods))})" if mods else name


def _widening(column: Column, new_type: str, new_mods: tuple[int, ...]) -> bool:
    """A type change that keeps every value the running release writes: ``int4`` to ``int8`` or ``numeric(12,2)``."""
    if (column.type, new_type) in _WIDENING and not new_mods:
        return True
    digits = _INTEGER_DIGITS.get(column.type)
    if new_type != "numeric" or digits is None:
        return False
    return not new_mods or new_mods[0] - (*new_mods, 0)[1] >= digits


def _wider(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    """A length or precision limit that grows or goes: ``varchar(50)`` to ``varchar(100)`` or ``varchar``."""
    return not new or (bool(old) and new[0] >= old[0])


def _wider_numeric(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    if not new:
        return True
    if not old:
        return False
    return (*old, 0)[1] == (*new, 0)[1] and new[0] >= old[0]  # same scale, more digits


def _plain_using(using: Any, column: str) -> bool:
    """A USING that only names the column, or casts it: the values do not change beyond the type's own cast."""
    tree = using(depth=None, skip_none=True)
    while tree.get("@") == "TypeCast":
        tree = tree["arg"]
    return tree.get("@") == "ColumnRef" and [f.get("sval") for f in tree["fields"]] == [column]


def _is_not_null_check(expression: Any) -> str | None:
    """The column of a ``CHECK (column IS NOT NULL)``, else None."""
    tree = expression(depth=None, skip_none=True) if expression is not None else {}
    if tree.get("@") == "NullTest" and tree.get("nulltesttype", {}).get("name") == "IS_NOT_NULL":
        fields = tree.get("arg", {}).get("fields", ())
        if len(fields) == 1:
            return str(fields[0].get("sval"))
    return None


def _function_names(tree: Any) -> Iterator[str]:
    """Every function a parse tree (as pglast's dict form) calls, by bare name."""
    if isinstance(tree, dict):
        if tree.get("@") == "FuncCall":
            yield tree["funcname"][-1]["sval"]
        for value in tree.values():
            yield from _function_names(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _function_names(value)
