"""A plan's steps read in order for their flags: by PostgreSQL's parser, or as text on other databases.

What a step creates is new, not existing, for the steps after it; a ``SET lock_timeout`` without
``LOCAL`` lasts past its step. The flags themselves and the schema they are read against are in
:mod:`runner.flags`; the parser's reading in :mod:`runner.pg_reading`.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.flags import Existing, Flag, text_flags

BREAKS = "backward_incompatible"


class Reader:
    """Reads the steps of one plan in order; what a step creates is new, not existing, for the steps after it.

    Args:
        existing: the schema before the upgrade (:func:`runner.flags.read_existing`).
    """

    def __init__(self, existing: Existing) -> None:
        self.existing = existing
        self.session_timeout = existing.lock_timeout  # a plain SET lock_timeout lasts past its step

    def step(
        self, sql: str, *, accepted: Iterable[str] = (), operations: Iterable[tuple[str, str | None, str]] = ()
    ) -> tuple[list[Flag], list[Flag]]:
        """The flags of one step's rendered SQL, each kind once per statement, the same warning once per step.

        Args:
            sql: the step's SQL as rendered offline.
            accepted: kinds the step opts out of (a marker in its source, or ``MIGRATION_ACCEPT_FLAGS``).
            operations: the step's breaking operations (:meth:`runner.drivers.History.breaking_operations`):
                each adds a ``backward_incompatible`` flag where the SQL gave none on its table.

        Returns:
            ``(flags, accepted)``: the flags to show, and those the step opted out of.
        """
        if self.existing.family == "postgresql":
            from runner import pg_reading  # noqa: PLC0415  (pglast is loaded only for PostgreSQL)

            found = pg_reading.read_step(self, sql)
        else:
            found = text_flags(sql, self.existing)
        found += self._from_operations(operations, found)
        shown: list[Flag] = []
        said: set[tuple[str, str, str]] = set()
        for flag in found:
            if (flag.kind, flag.table, flag.detail) not in said:
                shown.append(flag)
            said.add((flag.kind, flag.table, flag.detail))
        opted = set(accepted)
        return [f for f in shown if f.kind not in opted], [f for f in shown if f.kind in opted]

    def _from_operations(self, operations: Iterable[tuple[str, str | None, str]], found: list[Flag]) -> list[Flag]:
        """The tool's breaking operations on tables that exist, that the running release reads, and the SQL missed."""
        flagged = {flag.table.rsplit(".", 1)[-1] for flag in found if flag.kind == BREAKS}
        known = self.existing.release_columns
        out = []
        for table, column, what in operations:
            named = next((t for t in self.existing.tables if t.rsplit(".", 1)[-1] == table), None)
            if named is None or table in flagged:
                continue
            if known is not None and (table not in known or (column is not None and column not in known[table])):
                continue
            out.append(Flag(BREAKS, named, f"{what} (from the migration's operations)", what, parsed=False))
            flagged.add(table)
        return out
