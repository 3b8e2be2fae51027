"""Drift: an applied revision whose file is not what the ledger recorded when it ran.

The ledger (:mod:`runner.ledger`) records each applied revision's checksum
(:mod:`runner.checksum`) and the SHA-256 of the file's bytes. Comparing them
with the files on disk tells three cases apart:

- the same bytes: unchanged, and nothing is parsed (this is the no-op path's cost);
- other bytes, the same checksum: reformatted, not drift;
- another checksum: drift. ``MIGRATION_DRIFT`` decides what happens then.

A checksum is compared with one made by the algorithm version its row records,
so a newer algorithm never reads as drift; a row from a version this runner
does not know is not compared. Nothing here imports SQLAlchemy: the no-op path
reads the rows on a DB-API cursor (:func:`select_statement`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

# The ledger columns a comparison reads, in this order.
COLUMNS = (
    "revision",
    "direction",
    "outcome",
    "transactional",
    "resolution",
    "checksum",
    "checksum_version",
    "source_sha256",
    "started_at",
    "run_id",
)
# A revision file that may load SQL files (runner.checksum): its bytes alone do not say it is unchanged.
_SQL_NAME = re.compile(rb"\.sql", re.IGNORECASE)
# Outcomes of an up row that mean "this file, with this checksum, is what the database has".
RECORDING = frozenset({"applied", "adopted", "accepted"})


class Recorded(NamedTuple):
    """What the ledger last recorded for an applied revision (a tuple: the no-op path makes one per revision).

    Attributes:
        checksum: the checksum then, or ``None`` (a row from before checksums).
        version: its algorithm version (:data:`runner.checksum.VERSION` of the runner that wrote it).
        source_sha256: SHA-256 of the file's bytes then, or ``None``.
        recorded_at: when (server time, ISO-8601 text).
        run_id: the run that wrote it.
        outcome: ``applied``, ``adopted`` or ``accepted``.
    """

    checksum: str | None
    version: int | None
    source_sha256: str | None
    recorded_at: str | None
    run_id: str | None
    outcome: str


def recorded(rows: Iterable[Sequence[Any]]) -> dict[str, Recorded]:
    """Each revision's latest recording row, from the ledger's rows of one tool (:data:`COLUMNS`, oldest first).

    A revision reverted since (a ``down`` row that ``reverted``) has none.
    """
    found: dict[str, Recorded] = {}
    for revision, direction, outcome, _, resolution, value, version, digest, started_at, run_id in rows:
        if direction == "up" and (outcome in RECORDING or resolution == "applied"):
            at = started_at if started_at is None or isinstance(started_at, str) else started_at.isoformat()
            found[revision] = Recorded(value, version, digest, at, run_id, outcome)
        elif direction == "down" and (outcome == "reverted" or resolution == "applied"):
            found.pop(revision, None)
    return found


UNFINISHED_OUTCOMES = ("started", "interrupted", "failed")


def blocks(outcome: str, transactional: bool, resolution: str | None) -> bool:
    """Whether a ledger row blocks the next run, until ``resolve`` records what the operator found.

    A ``started`` row (the runner died inside the step), or an ``interrupted`` or
    ``failed`` one whose step did not run in one transaction (MySQL DDL), so part
    of it may be applied. The one rule, for the no-op path and for
    :meth:`runner.ledger.Ledger.unfinished`.
    """
    if resolution is not None:
        return False
    return outcome == "started" or (outcome in UNFINISHED_OUTCOMES and not transactional)


def any_unfinished(rows: Iterable[Sequence[Any]]) -> bool:
    """Whether any of the ledger's rows (:data:`COLUMNS`) blocks the next run (:func:`blocks`)."""
    return any(blocks(outcome, transactional, resolution) for _, _, outcome, transactional, resolution, *_ in rows)


class Drift(NamedTuple):
    """An applied revision whose file's checksum is not the recorded one.

    Attributes:
        revision: its id (Alembic) or ``app.name`` (Django).
        path: the file now.
        recorded: the recorded checksum.
        current: the file's checksum now, by the recorded row's algorithm version.
        version: that version.
        recorded_at, run_id, outcome: of the recording row.
    """

    revision: str
    path: Path
    recorded: str
    current: str
    version: int
    recorded_at: str | None
    run_id: str | None
    outcome: str

    def document(self) -> dict[str, Any]:
        """The result document's ``drift`` entry."""
        return {
            "revision": self.revision,
            "file": str(self.path),
            "recorded_checksum": self.recorded,
            "current_checksum": self.current,
            "checksum_version": self.version,
            "recorded_at": self.recorded_at,
            "recorded_by_run": self.run_id,
        }


class Comparison(NamedTuple):
    """The applied revisions compared with their files.

    Attributes:
        drifted: revisions whose checksum changed, in the order given.
        unrecorded: applied revisions the ledger has no checksum for (applied
            before the ledger existed, or by another tool): to be adopted.
    """

    drifted: list[Drift]
    unrecorded: list[str]


def compare(
    known: Mapping[str, Recorded],
    sources: Mapping[str, Path | str],
    *,
    contents: Mapping[str, bytes] | None = None,
    checksums: bool = True,
) -> Comparison:
    """Compare each applied revision's file with its recorded checksum.

    Args:
        known: from :func:`recorded`.
        sources: each applied revision's file, a path or its text (revisions without one are left out by the caller).
        contents: the files' bytes, where the caller has read them already.
        checksums: ``False`` (``MIGRATION_DRIFT=off``): only find the unrecorded ones.

    Returns:
        The comparison. A file that cannot be read or parsed now is not compared:
        loading the project reports it.
    """
    result = Comparison([], [])
    for revision, source in sources.items():
        row = known.get(revision)
        if row is None or row.checksum is None:
            result.unrecorded.append(revision)
            continue
        if not checksums:
            continue
        try:
            data = contents.get(revision) if contents else None
            if data is None:
                data = Path(source).read_bytes()
            if row.source_sha256 == hashlib.sha256(data).hexdigest() and not _SQL_NAME.search(data):
                continue  # the very bytes it ran with: not parsed, and runner.checksum is not even imported
            from runner import checksum  # noqa: PLC0415

            if row.version not in checksum.VERSIONS:  # a newer runner's algorithm: not comparable
                continue
            path = Path(source)
            current = checksum.of_file(path, version=row.version or 1, data=data)
        except (OSError, SyntaxError, ValueError):
            continue
        if current != row.checksum:
            version = row.version or 1
            result.drifted.append(
                Drift(revision, path, row.checksum, current, version, row.recorded_at, row.run_id, row.outcome)
            )
    return result


def select_statement(quote: Callable[[str], str], table: str, schema: str | None, tool: str, scope: str) -> str | None:
    """The ledger query of the no-op path, for a DB-API cursor: :data:`COLUMNS` of ``tool``'s rows, oldest first.

    ``started_at`` and ``run_id`` read as NULL: the no-op path only asks whether
    anything drifted (then the full path reports it), and timestamps are the
    costliest column to fetch.

    Args:
        quote: quotes an identifier for the database at hand (:func:`quote_for`, Django's ``quote_name``).
        table: the ledger table's name.
        schema: its schema, if any.
        tool: the driver's own name (``alembic``, ``django``), never user input.
        scope: the project's version table (:func:`runner.ledger.scope_of`): only its rows, and
            unclaimed ones of an older runner.

    Returns:
        The statement; ``None`` when ``scope`` (a setting) is not made of letters, digits,
        ``_``, ``$``, ``-`` and ``.`` only: it is written as a literal, and quoting rules differ
        between servers, so the full path (bound parameters) answers instead.
    """
    if not _PLAIN_SCOPE.fullmatch(scope):
        return None
    where = ".".join(quote(part) for part in (schema, table) if part)
    columns = ", ".join("NULL" if name in ("started_at", "run_id") else name for name in COLUMNS)
    literal = f"'{scope}'"
    return (
        f"SELECT {columns} FROM {where} WHERE tool = '{tool}' "  # noqa: S608
        f"AND (version_table = {literal} OR version_table IS NULL) ORDER BY id"
    )


_PLAIN_SCOPE = re.compile(r"[A-Za-z0-9_$.-]+")


def quote_for(family: str) -> Callable[[str], str]:
    """An identifier quoter: backticks for MySQL, double quotes elsewhere (the SQL standard's)."""
    if family == "mysql":
        return lambda name: "`" + name.replace("`", "``") + "`"
    return lambda name: '"' + name.replace('"', '""') + '"'
