"""A plan's steps read in order for their flags: by PostgreSQL's parser, or as text on other databases.

What a step creates is new, not existing, for the steps after it; a ``SET lock_timeout`` without
``LOCAL`` lasts past its step. The flags themselves and the schema they are read against are in
:mod:`runner.flags`; the parser's reading in :mod:`runner.pg_reading`.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.flags import Existing, Flag, text_flags


class Reader:
    """Reads the steps of one plan in order; what a step creates is new, not existing, for the steps after it.

    Args:
        existing: the schema before the upgrade (:func:`runner.flags.read_existing`).
    """

    def __init__(self, existing: Existing) -> None:
        self.existing = existing
        self.session_timeout = existing.lock_timeout  # a plain SET lock_timeout lasts past its step

    def step(self, sql: str, *, accepted: Iterable[str] = ()) -> tuple[list[Flag], list[Flag]]:
        """The flags of one step's rendered SQL, each kind once per statement, the same warning once per step.

        Args:
            sql: the step's SQL as rendered offline.
            accepted: kinds the step opts out of (a marker in its source, or ``MIGRATION_ACCEPT_FLAGS``).

        Returns:
            ``(flags, accepted)``: the flags to show, and those the step opted out of.
        """
        if self.existing.family == "postgresql":
            from runner import pg_reading  # noqa: PLC0415  (pglast is loaded only for PostgreSQL)

            found = pg_reading.read_step(self, sql)
        else:
            found = text_flags(sql, self.existing)
        shown: list[Flag] = []
        said: set[tuple[str, str, str]] = set()
        for flag in found:
            if (flag.kind, flag.table, flag.detail) not in said:
                shown.append(flag)
            said.add((flag.kind, flag.table, flag.detail))
        opted = set(accepted)
        return [f for f in shown if f.kind not in opted], [f for f in shown if f.kind in opted]
