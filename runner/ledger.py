"""The ledger: one row per revision step, in a runner-owned table beside the version table.

Alembic's version table says where the database is; the ledger says how it got
there, and whether a step was left unfinished. It is what makes an interrupted
revision on MySQL explainable: MySQL commits DDL statement by statement
(MySQL docs, "Statements That Cause an Implicit Commit"), so a revision killed
half-way leaves its first tables behind while the version table still names
the revision before it.

How a row is written depends on whether the database has transactional DDL:

- PostgreSQL and SQLite: the ``applied`` row is inserted inside the revision's
  own transaction (Alembic's ``on_version_apply``; for Django, right after its
  ``django_migrations`` insert, on the same cursor), so it commits or rolls back
  with the revision and the version-table update: the two never disagree.
- MySQL, and a step that commits on its own anywhere (an Alembic
  ``autocommit_block``, a Django ``atomic = False``): a ``started`` row is
  committed on the lock connection before the revision runs; the revision's
  transaction turns it into ``applied`` with the version-table update. A row
  still ``started`` means the runner died inside the revision.

A row that is ``started``, or ``interrupted`` or ``failed`` outside a
transaction, and not resolved, makes the next ``upgrade`` exit 65 until
``migration-runner resolve`` records what the operator found.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner import checksum, database
from runner.errors import ConfigError

DEFAULT_TABLE = "migration_runner_history"
OUTCOMES = ("started", "applied", "reverted", "failed", "interrupted", "adopted", "accepted")
# "noop": a declared no-op revert (MIGRATION_NOOP_DOWNGRADES), set on its reverted row.
RESOLUTIONS = ("applied", "not-applied", "noop")
_ERROR_MAX_CHARS = 2000


# Columns every ledger has had since the first: a table without them is someone else's.
_IDENTITY_COLUMNS = frozenset({"id", "tool", "revision", "direction", "outcome"})


def history_table(name: str = DEFAULT_TABLE, schema: str | None = None) -> sa.Table:
    """The ledger's table definition.

    Columns: ``id``; ``tool`` (``alembic``); ``revision``; ``direction``
    (``up`` or ``down``); ``outcome`` (one of :data:`OUTCOMES`); ``transactional`` (the step
    ran inside one transaction, so a failure left nothing behind);
    ``started_at`` and ``finished_at`` (server time, UTC); ``duration_seconds``;
    ``run_id``; ``host`` (the pod or host name); ``namespace``; ``node``;
    ``runner_version``; ``error``; ``resolution`` (one of :data:`RESOLUTIONS`),
    ``resolved_at`` and ``resolved_by``; ``checksum`` and ``checksum_version``
    (:mod:`runner.checksum` of the revision's file, when the driver can read it);
    ``source_sha256`` (the SHA-256 of the file's bytes, so that drift detection
    parses only files whose bytes changed); ``version_table`` (the project's
    version table, ``schema.name`` or ``name``: two projects in one schema
    share the table but never each other's rows; ``NULL`` in rows an older
    runner wrote, until a run under the lock claims them).

    Outcomes ``adopted`` (a revision applied before the ledger existed, or by
    another tool, recorded with its file's checksum then) and ``accepted`` (a
    reviewed edit, recorded by ``migration-runner accept``) record a checksum
    without running anything.
    """
    from sqlalchemy.dialects import mysql  # noqa: PLC0415  (only when a ledger is used, not on every no-op run)

    timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("tool", sa.String(32), nullable=False),
        sa.Column("revision", sa.String(255), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("transactional", sa.Boolean(), nullable=False),
        sa.Column("started_at", timestamp, nullable=False),
        sa.Column("finished_at", timestamp),
        sa.Column("duration_seconds", sa.Float()),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("namespace", sa.String(255)),
        sa.Column("node", sa.String(255)),
        sa.Column("runner_version", sa.String(64)),
        sa.Column("checksum", sa.String(64)),
        sa.Column("checksum_version", sa.Integer()),
        sa.Column("source_sha256", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("resolution", sa.String(16)),
        sa.Column("resolved_at", timestamp),
        sa.Column("resolved_by", sa.String(255)),
        sa.Column("version_table", sa.String(255)),
        schema=schema,
    )


@dataclass(frozen=True)
class Unfinished:
    """A ledger row that blocks the next upgrade.

    Attributes:
        row_id: the row's ``id``.
        revision: the revision it records.
        outcome: ``started`` (the runner died in it), ``interrupted`` or ``failed``.
        started_at: when it started, server time (UTC).
        run_id: the run that started it.
        host: the pod or host of that run.
        error: the error recorded with it, if any.
        direction: ``up``, or ``down`` for an interrupted downgrade step.
    """

    row_id: int
    revision: str
    outcome: str
    started_at: dt.datetime
    run_id: str
    host: str | None
    error: str | None
    direction: str = "up"


@dataclass
class Ledger:
    """Writes and reads the ledger for one run.

    Args:
        table: from :func:`history_table`.
        family: ``postgresql``, ``sqlite`` (rows written in the revision's
            transaction) or ``mysql`` (a ``started`` row first).
        tool: the migration system, e.g. ``alembic``.
        scope: the project's version table (:func:`scope_of`); only its rows are read and written.
        run_id, host, namespace, node, version: where this run runs.
        direction: ``up`` (rows end ``applied``) or ``down`` (``reverted``).
    """

    table: sa.Table
    family: str
    tool: str
    run_id: str
    host: str
    namespace: str | None
    node: str | None
    version: str
    scope: str
    direction: str = "up"
    noop_reverts: frozenset[str] = frozenset()  # MIGRATION_NOOP_DOWNGRADES: their reverted rows say "noop"
    connection: Connection | None = None
    _clock_offset: dt.timedelta = dt.timedelta(0)  # the server's clock minus ours
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # revision -> checksum.fingerprint()
    _open_rows: dict[str, int] = field(default_factory=dict)
    _started: dict[str, dt.datetime] = field(default_factory=dict)

    def prepare(self, connection: Connection) -> None:
        """Create the table if it is missing and read the server's clock; call it under the lock.

        Args:
            connection: the ledger connection from now on (the lock connection,
                or SQLite's own), for every method but :meth:`applied`.
        """
        self.connection = connection
        with _transaction(connection):
            self._require_a_place(connection)
            try:
                self.table.create(connection, checkfirst=True)
            except sa.exc.DBAPIError as error:  # a view, sequence or index of that name (42P07; MySQL 1050)
                mysql_errno = (getattr(error.orig, "args", None) or [None])[0]
                if database.sqlstate(error) != "42P07" and mysql_errno != 1050:
                    raise
                raise ConfigError(
                    f"{self._shown()} cannot be created: another object of that name exists "
                    f"({database.error_message(error)}); "
                    "set MIGRATION_HISTORY_TABLE to a name of the ledger's own"
                ) from None
            self._add_missing_columns(connection)
            # Rows an older runner wrote name no version table: the first project to run claims them.
            t = self.table.c
            unclaimed = (t.tool == self.tool) & t.version_table.is_(None)
            connection.execute(self.table.update().where(unclaimed).values(version_table=self.scope))
            self._clock_offset = _server_now(connection) - _utcnow()

    def _add_missing_columns(self, connection: Connection) -> None:
        """A ledger made by an older runner gets the columns added since, in place (under the caller's lock)."""
        present = self._present_columns(connection) or set()
        table = connection.dialect.identifier_preparer.format_table(self.table)
        for column in self.table.columns:
            if column.name not in present:
                definition = sa.schema.CreateColumn(column).compile(dialect=connection.dialect)
                database.execute_statement(connection, f"ALTER TABLE {table} ADD COLUMN {definition}")

    def _present_columns(self, connection: Connection) -> set[str] | None:
        """The names of the ledger table's columns in the database; None when it has no ledger yet.

        Raises:
            ConfigError: a table or view of that name exists and is not a ledger (an application's table):
                the runner would write into it, or alter it.
        """
        inspector = sa.inspect(connection)
        if not inspector.has_table(self.table.name, schema=self.table.schema):
            return None
        present = {column["name"] for column in inspector.get_columns(self.table.name, self.table.schema)}
        if not present >= _IDENTITY_COLUMNS:
            raise ConfigError(
                f"{self._shown()} exists and is not a migration-runner ledger (its columns: "
                f"{', '.join(sorted(present)) or 'none'}); set MIGRATION_HISTORY_TABLE to a name of the ledger's own"
            )
        return present

    def _shown(self) -> str:
        """The ledger's table as a user names it: ``schema.name`` or ``name``, and the setting."""
        name = f"{self.table.schema}.{self.table.name}" if self.table.schema else self.table.name
        return f"the ledger table {name} (MIGRATION_HISTORY_TABLE)"

    def _require_a_place(self, connection: Connection) -> None:
        """The schema the ledger goes into exists (the version table's, or the connection's current one).

        Raises:
            ConfigError: ``MIGRATION_VERSION_TABLE_SCHEMA`` names no schema, or the connection's
                ``search_path`` leaves none to create in (PostgreSQL's ``current_schema()`` is NULL).
        """
        schema = self.table.schema
        if schema is not None:
            if schema not in sa.inspect(connection).get_schema_names():
                raise ConfigError(
                    f"MIGRATION_VERSION_TABLE_SCHEMA={schema!r}: the database has no such schema; create it "
                    "(a revision cannot: the version table and the ledger live there) or name another"
                )
        elif (
            connection.dialect.name == "postgresql"
            and connection.exec_driver_sql("SELECT current_schema()").scalar() is None
        ):
            path = connection.exec_driver_sql("SHOW search_path").scalar()
            raise ConfigError(
                f"the connection's search_path ({path}) names no existing schema to create the ledger in; "
                "fix options=-c search_path in the URL, create the schema, or set MIGRATION_VERSION_TABLE_SCHEMA"
            )

    def now(self) -> dt.datetime:
        """The server's time now (UTC), from the offset read by :meth:`prepare`."""
        return _utcnow() + self._clock_offset

    def _bound(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("Ledger.prepare() was not called")
        return self.connection

    def history(self, connection: Connection, revision: str | None = None) -> list[dict[str, Any]]:
        """The ledger's rows of this tool, newest first, read-only; none when there is no ledger yet.

        Args:
            connection: any connection to the database.
            revision: only this revision's rows.

        Returns:
            One dict per row: every column, timestamps as ISO-8601 text.
        """
        t = self.table
        present = self._present_columns(connection)
        if present is None:
            if connection.in_transaction():
                connection.rollback()
            return []
        query = sa.select(*(column for column in t.columns if column.name in present)).where(self._mine(present))
        if revision is not None:
            query = query.where(t.c.revision == revision)
        try:
            rows = connection.execute(query.order_by(t.c.id.desc())).mappings().all()
        finally:
            if connection.in_transaction():
                connection.rollback()
        return [
            {key: _iso(value) if isinstance(value, dt.datetime) else value for key, value in row.items()}
            for row in rows
        ]

    def recording_rows(self, connection: Connection | None = None) -> list[tuple[Any, ...]]:
        """This tool's rows as drift detection reads them (:data:`runner.drift.COLUMNS`), oldest first.

        Args:
            connection: where to read, read-only; by default the ledger connection.

        Returns:
            The rows; a column an older ledger lacks reads as ``None``; no rows when there is no ledger yet.
        """
        from runner import drift  # noqa: PLC0415

        connection = connection or self._bound()
        began = not connection.in_transaction()
        t = self.table
        try:
            present = self._present_columns(connection)
            if present is None:
                return []
            columns = [t.c[name] if name in present else sa.null().label(name) for name in drift.COLUMNS]
            query = sa.select(*columns).where(self._mine(present)).order_by(t.c.id)
            return [tuple(row) for row in connection.execute(query).all()]
        finally:
            if began and connection.in_transaction():
                connection.rollback()

    def record(self, entries: list[tuple[str, str, str]], outcome: str) -> None:
        """Record checksums without running anything: ``adopted`` or ``accepted`` rows, committed at once.

        Args:
            entries: ``(revision, checksum, source_sha256)`` each.
            outcome: ``adopted`` or ``accepted``.
        """
        if not entries:
            return
        now = self._stored(self.now())
        rows = []
        for revision, value, digest in entries:
            row = self._row(revision, outcome, transactional=True)
            row.update(
                direction="up",
                checksum=value,
                checksum_version=checksum.VERSION,
                source_sha256=digest,
                started_at=now,
                finished_at=now,
                duration_seconds=0.0,
            )
            rows.append(row)
        connection = self._bound()
        with _transaction(connection):
            connection.execute(self.table.insert(), rows)

    def record_undone(self, revisions: list[str], *, resolved_by: str) -> None:
        """Record revisions as reverted without running anything: ``resolve --mark not-applied`` after a rewind.

        Each gets a ``down`` row, outcome ``reverted``, resolution ``not-applied``;
        drift and the rewind check then no longer count it as applied.
        """
        now = self._stored(self.now())
        rows = []
        for revision in revisions:
            row = self._row(revision, "reverted", transactional=True)
            row.update(
                direction="down",
                started_at=now,
                finished_at=now,
                duration_seconds=0.0,
                checksum=None,
                checksum_version=None,
                source_sha256=None,
                resolution="not-applied",
                resolved_at=now,
                resolved_by=resolved_by,
            )
            rows.append(row)
        connection = self._bound()
        with _transaction(connection):
            connection.execute(self.table.insert(), rows)

    def unfinished(self, connection: Connection | None = None) -> list[Unfinished]:
        """The rows that block an upgrade (:func:`runner.drift.blocks`), oldest first.

        Args:
            connection: where to read, read-only (``check``, ``wait``, ``current``;
                no rows when there is no ledger yet); by default the ledger connection.
        """
        from runner import drift  # noqa: PLC0415

        t = self.table.c
        query = sa.select(
            t.id, t.revision, t.outcome, t.started_at, t.run_id, t.host, t.error, t.direction, t.transactional
        ).where(t.resolution.is_(None), t.outcome.in_(drift.UNFINISHED_OUTCOMES))
        if connection is None:
            with _transaction(self._bound()):
                rows = self._bound().execute(query.where(self._mine()).order_by(t.id)).all()
        else:
            try:
                present = self._present_columns(connection)
                mine = query.where(self._mine(present)).order_by(t.id)
                rows = [] if present is None else connection.execute(mine).all()
            finally:
                if connection.in_transaction():
                    connection.rollback()
        return [Unfinished(*row[:-1]) for row in rows if drift.blocks(row.outcome, row.transactional, None)]

    def _mine(self, present: set[str] | None = None) -> sa.ColumnElement[bool]:
        """This project's rows: its tool, and its version table (or none yet, in an unclaimed older row).

        Args:
            present: the table's columns, when it may be an older ledger not yet given ``version_table``.
        """
        t = self.table.c
        if present is not None and "version_table" not in present:
            return t.tool == self.tool
        return (t.tool == self.tool) & ((t.version_table == self.scope) | t.version_table.is_(None))

    def _row(self, revision: str, outcome: str, *, transactional: bool) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "version_table": self.scope,
            "revision": revision,
            "direction": self.direction,
            "outcome": outcome,
            "transactional": transactional,
            "started_at": self._stored(self._started.get(revision) or self.now()),
            "run_id": self.run_id,
            "host": self.host,
            "namespace": self.namespace,
            "node": self.node,
            "runner_version": self.version,
            "checksum": self.checksums[revision][0] if revision in self.checksums else None,
            "checksum_version": checksum.VERSION if revision in self.checksums else None,
            "source_sha256": self.checksums[revision][1] if revision in self.checksums else None,
        }

    @property
    def transactional_ddl(self) -> bool:
        """DDL rolls back with its transaction here (PostgreSQL, SQLite), so no ``started`` row is needed."""
        return self.family != "mysql"

    def _stored(self, moment: dt.datetime) -> dt.datetime:
        # Read back by _iso, which gives the zone back: every stored moment is UTC.
        # timestamptz keeps the zone; DATETIME (MySQL) and SQLite's text do not: store UTC without one there.
        return moment if self.family == "postgresql" else moment.replace(tzinfo=None)

    def starting(self, revision: str, *, commits_as_it_goes: bool = False) -> None:
        """A revision is about to run. Commit a ``started`` row first when it may be left half-applied.

        Args:
            revision: the step's id.
            commits_as_it_goes: the step commits on its own (an Alembic
                ``autocommit_block``, a Django ``atomic = False``), so even
                transactional DDL does not cover it.
        """
        self._started[revision] = self.now()
        if self.transactional_ddl and not commits_as_it_goes:
            return
        connection = self._bound()
        with _transaction(connection):
            row = self._row(revision, "started", transactional=False)
            result = connection.execute(self.table.insert().values(row))
        key = result.inserted_primary_key
        assert key is not None  # noqa: S101  (an INSERT of one row)
        self._open_rows[revision] = int(key[0])

    def applied(
        self, execute: Callable[[sa.Executable, Mapping[str, Any]], object], revision: str, *, transactional: bool
    ) -> None:
        """Record ``revision`` as applied, inside its own transaction (``execute`` runs a statement there)."""
        finished = self.now()
        duration = (finished - self._started.get(revision, finished)).total_seconds()
        outcome = "applied" if self.direction == "up" else "reverted"
        done = {"outcome": outcome, "finished_at": self._stored(finished), "duration_seconds": duration}
        if self.direction == "down" and revision in self.noop_reverts:
            done["resolution"] = "noop"
        if revision in self._open_rows:
            row_id = self._open_rows.pop(revision)
            execute(self.table.update().where(self.table.c.id == row_id).values(done), {})
        else:
            # The values as parameters: the statement compiles once per run (SQLAlchemy's compiled
            # cache); .values(row) would build and coerce a new statement for every revision.
            execute(self.table.insert(), {**self._row(revision, outcome, transactional=transactional), **done})

    def ended(self, revision: str, outcome: str, *, transactional: bool, error: str) -> None:
        """Record that ``revision`` ``failed`` or was ``interrupted``, after its transaction ended.

        Args:
            revision: the revision that was running.
            outcome: ``failed`` or ``interrupted``.
            transactional: it ran in one transaction, which was rolled back.
            error: the redacted message.
        """
        finished = self.now()
        duration = (finished - self._started.get(revision, finished)).total_seconds()
        done = {
            "outcome": outcome,
            "finished_at": self._stored(finished),
            "duration_seconds": duration,
            "transactional": transactional,
            "error": error[:_ERROR_MAX_CHARS],
        }
        connection = self._bound()
        with _transaction(connection):
            if revision in self._open_rows:
                row_id = self._open_rows.pop(revision)
                connection.execute(self.table.update().where(self.table.c.id == row_id).values(done))
            else:
                row = {**self._row(revision, outcome, transactional=transactional), **done}
                connection.execute(self.table.insert().values(row))

    def make_durable(self) -> None:
        """Wait until every commit the server acknowledged so far is on disk (PostgreSQL; elsewhere nothing).

        The revisions commit with ``synchronous_commit = off``. A synchronous
        commit flushes the WAL up to its own record, which comes after theirs,
        but only if the transaction wrote WAL (PostgreSQL docs, "28.4.
        Asynchronous Commit"; an XID alone is not enough): so the ledger's last
        row is rewritten as it is. Synchronous standbys are waited for too.
        """
        if self.family != "postgresql":
            return
        connection = self._bound()
        last = sa.select(sa.func.max(self.table.c.id)).scalar_subquery()
        with _transaction(connection):
            connection.exec_driver_sql("SET LOCAL synchronous_commit = on")
            connection.execute(self.table.update().where(self.table.c.id == last).values(id=self.table.c.id))

    def resolve(self, row_id: int, resolution: str) -> None:
        """Record the operator's finding on a blocking row (``applied`` or ``not-applied``)."""
        values = {"resolution": resolution, "resolved_at": self._stored(self.now()), "resolved_by": self.host}
        connection = self._bound()
        with _transaction(connection):
            connection.execute(self.table.update().where(self.table.c.id == row_id).values(values))


def scope_of(name: str, schema: str | None) -> str:
    """How a ledger row names its project's version table: ``schema.name``, or ``name`` without a schema."""
    return f"{schema}.{name}" if schema else name


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _server_now(connection: Connection) -> dt.datetime:
    """The server's clock, UTC (SQLite: this machine's)."""
    name = connection.dialect.name
    if name == "postgresql":
        value = connection.exec_driver_sql("SELECT now()").scalar()
        assert isinstance(value, dt.datetime)  # noqa: S101  (timestamptz)
        return value.astimezone(dt.UTC)
    if name in ("mysql", "mariadb"):
        value = connection.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar()
        assert isinstance(value, dt.datetime)  # noqa: S101
        return value.replace(tzinfo=dt.UTC)
    return _utcnow()


@contextlib.contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    """Commit what runs inside, unless the connection is already in a transaction (autocommit or the caller's)."""
    if connection.in_transaction():
        yield
        return
    connection.begin()
    try:
        yield
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _iso(moment: dt.datetime) -> str:
    """ISO-8601 with its offset: MySQL's DATETIME and SQLite's text keep no zone, and what they hold is UTC."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)).isoformat()
