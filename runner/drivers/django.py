"""The Django driver: a project loaded as ``manage.py`` loads it, migrated by Django's own ``migrate``.

Loading: the working directory goes on ``sys.path``, ``DJANGO_SETTINGS_MODULE``
names the settings, then ``django.setup()``. The project's ``LOGGING`` is not
applied (``LOGGING_CONFIG = None``): the runner owns logging, as it ignores an
env.py's ``fileConfig()``.

The database is the ``DATABASES`` entry of ``MIGRATION_DJANGO_DATABASE``
(default ``default``); ``MIGRATION_DATABASE_URL`` replaces its connection fields
for the run. The runner's own sessions (lock, ledger, read-only check) use the
same database through SQLAlchemy.

Applying runs a subclass of Django's ``migrate`` command (``call_command``), so
``pre_migrate``/``post_migrate``, ``run_syncdb`` apps, the consistency check and
the conflict check all happen as with ``manage.py migrate``. Its
``migration_progress_callback`` gives one ``revision.applied`` per migration,
named ``app_label.migration_name``; its stdout becomes ``django.output`` log
events. The ledger row is written on Django's cursor right after Django's own
``django_migrations`` insert (``connection.execute_wrapper``, Django docs,
"Database instrumentation"), so on PostgreSQL and SQLite it commits with the
migration.

Django's migration graph (``MigrationLoader``, ``MigrationGraph``,
``MigrationExecutor``) is not a documented API, but it is what ``migrate``,
``showmigrations`` and ``squashmigrations`` are built on; ``tests/test_django.py``
pins what the runner uses of it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner import logs, sessions, urls
from runner.drivers import (
    Applied,
    CallbackFailed,
    Driver,
    MigrateOptions,
    Rendered,
    Step,
    VersionTable,
    own,
    project_code,
    where,
)
from runner.errors import (
    BrokenProject,
    BrokenRevisionFiles,
    ConfigError,
    ConnectionLost,
    DatabaseUnavailable,
    MigrationFailed,
    RunnerError,
    Stopped,
)

# Django and SQLAlchemy are imported where they are used: choosing the tool (`detect`) needs neither.
if TYPE_CHECKING:
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import URL, Connection

    from runner.drivers import Execute
    from runner.settings import Settings
    from runner.trace import Tracer

Key = tuple[str, str]

# ENGINE values of DATABASES and the runner's own URL for them (Django docs, "Settings > ENGINE").
_ENGINES = {
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.postgresql_psycopg2": "postgresql",
    "django.contrib.gis.db.backends.postgis": "postgresql",
    "django.db.backends.mysql": "mysql",
    "django.contrib.gis.db.backends.mysql": "mysql",
    "django.db.backends.sqlite3": "sqlite",
    "django.contrib.gis.db.backends.spatialite": "sqlite",
}
_ENGINE_OF_FAMILY = {
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "sqlite": "django.db.backends.sqlite3",
}
# OPTIONS that Django's PostgreSQL backend consumes itself; the rest are libpq parameters.
_DJANGO_PG_OPTIONS = frozenset({"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"})
# OPTIONS of mysqlclient that are also PyMySQL URL parameters.
_MYSQL_URL_OPTIONS = ("charset", "unix_socket", "read_timeout", "write_timeout", "connect_timeout")
_RECORDS_APPLIED = re.compile(r"^\s*INSERT\s+INTO\s+[`\"]?django_migrations\b", re.IGNORECASE)
# MigrationRecorder.record_unapplied: a DELETE of the migration's row.
_RECORDS_UNAPPLIED = re.compile(r"^\s*DELETE\s+FROM\s+[`\"]?django_migrations\b", re.IGNORECASE)
_ALEMBIC_ONLY = ("alembic_config", "script_location", "version_table", "version_table_schema")


def detect(cwd: Path, environ: Mapping[str, str], settings: Settings) -> str | None:
    """What says a Django project is here: ``DJANGO_SETTINGS_MODULE``, as for ``manage.py``."""
    module = environ.get("DJANGO_SETTINGS_MODULE", "").strip()
    return f"DJANGO_SETTINGS_MODULE={module}" if module else None


# A Django project's URL is its DATABASES entry, read once the project is loaded (Driver.database_url).
HAS_OWN_URL = True


def fallback_urls(settings: Settings, cwd: Path) -> Iterator[tuple[str, str]]:
    """None: Django's ``DATABASES`` is the project's URL (:meth:`Project.database_url`)."""
    return iter(())


def shown_settings(settings: Settings, cwd: Path) -> dict[str, tuple[Any, str]]:
    """For ``config``: nothing beyond the settings themselves."""
    return {}


def quick_applied(project: Driver, settings: Settings) -> tuple[str, ...] | None:
    """The no-op check of :mod:`runner.noop`: what is applied, if that is every app's leaf node.

    The project is loaded as always (``django.setup()`` is most of a Django run);
    what this saves is SQLAlchemy and the runner's own session: Django's
    ``MigrationLoader`` reads ``django_migrations`` on Django's session.

    Args:
        project: the loaded project, a :class:`Project`.
        settings: the run's settings (``MIGRATION_DJANGO_SYSTEM_CHECKS``).

    Returns:
        The applied migrations; ``None`` when anything is pending or unknown, or the
        read failed: the full path decides, with the loaded project.

    Raises:
        ConfigError: the system checks fail, or the history is inconsistent, as on the full path.
    """
    loaded = cast(Project, project)
    if settings.django_system_checks:
        loaded.run_system_checks()
    try:
        current = loaded.read_applied(cast("Connection", None), loaded.version_table)
    except ConfigError:
        raise
    except Exception:  # unreachable, refused, or any doubt: the full path retries and classifies
        return None
    if loaded.unknown(current) or loaded.pending(current, "heads"):
        return None
    return current


def _key(revision: str) -> Key:
    app, _, name = revision.partition(".")
    return app, name


def _id(key: Key) -> str:
    return f"{key[0]}.{key[1]}"


def url_of_entry(entry: Mapping[str, Any], where: str) -> str:
    """The SQLAlchemy URL of a ``DATABASES`` entry, for the runner's own sessions to the same database.

    Args:
        entry: the entry (ENGINE, NAME, USER, PASSWORD, HOST, PORT, OPTIONS).
        where: how to name it in errors, e.g. ``DATABASES['default'] in mysite.settings``.

    Returns:
        The URL text, password included (the caller redacts it).

    Raises:
        ConfigError: an engine the runner cannot lock, or an entry without a database name.
    """
    engine = str(entry.get("ENGINE") or "")
    family = _ENGINES.get(engine)
    if family is None:
        raise ConfigError(
            f"{where} uses ENGINE {engine!r}; the runner migrates PostgreSQL, MySQL/MariaDB and SQLite "
            f"({', '.join(sorted(_ENGINE_OF_FAMILY.values()))})"
        )
    name = str(entry.get("NAME") or "")
    options = dict(entry.get("OPTIONS") or {})
    if family == "sqlite":
        if not name or name == ":memory:" or name.startswith("file:"):
            raise ConfigError(f"{where}: NAME {name!r} is not a database file the runner can lock")
        return urls.DatabaseUrl("sqlite", database=name).render(hide_password=False)
    query: dict[str, str] = {}
    if family == "postgresql":
        name = name or str(options.get("dbname") or "")
        query = {
            key: str(value)
            for key, value in options.items()
            if key not in _DJANGO_PG_OPTIONS and isinstance(value, str | int) and key != "dbname"
        }
    else:
        query = {key: str(options[key]) for key in _MYSQL_URL_OPTIONS if key in options}
    if not name:
        raise ConfigError(f"{where} has no NAME; set it, or set MIGRATION_DATABASE_URL")
    host = str(entry.get("HOST") or "")
    if host.startswith("/"):  # a Unix socket directory (PostgreSQL) or socket file (MySQL)
        query["host" if family == "postgresql" else "unix_socket"] = host
        host = ""
    port = str(entry.get("PORT") or "")
    url = urls.DatabaseUrl(
        "postgresql+psycopg" if family == "postgresql" else "mysql+pymysql",
        username=str(entry.get("USER") or "") or None,
        password=str(entry.get("PASSWORD") or "") or None,
        host=host or None,
        port=int(port) if port.isdigit() else None,
        database=name,
        query={key: (value,) for key, value in query.items()},
    )
    return url.render(hide_password=False)


def entry_of_url(url: urls.DatabaseUrl) -> dict[str, Any]:
    """The connection fields of a ``DATABASES`` entry for ``url`` (ENGINE, NAME, USER, PASSWORD, HOST, PORT, OPTIONS).

    The URL's query parameters become OPTIONS: libpq parameters for PostgreSQL
    (``sslmode``, ``options``), ``charset`` and the like for MySQL.
    """
    family = url.family
    query = {key: values[-1] for key, values in url.query.items()}
    if family == "sqlite":
        return {"ENGINE": _ENGINE_OF_FAMILY["sqlite"], "NAME": url.database or "", "OPTIONS": {}}
    host = url.host or ""
    if family == "postgresql" and not host and "host" in query:
        host = query.pop("host")
    if family == "mysql" and "unix_socket" in query:
        host = query.pop("unix_socket")
    options: dict[str, Any] = dict(query)
    if family == "mysql":
        options = {key: value for key, value in query.items() if key in _MYSQL_URL_OPTIONS}
    return {
        "ENGINE": _ENGINE_OF_FAMILY[family],
        "NAME": url.database_name,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": host,
        "PORT": str(url.port or ""),
        "OPTIONS": options,
    }


def _where(error: BaseException) -> str:
    # Django imports settings, apps and migrations through importlib: its frames are not the project's.
    return where(error, also_skip=("importlib",))


def _described(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _LogLines(io.TextIOBase):
    """A text stream whose lines become ``django.output`` log events (Django's ``migrate`` chatter)."""

    def __init__(self, level: str) -> None:
        self._level = level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip():
                getattr(logs.get_logger(), self._level)("django.output", line=line.strip())
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            getattr(logs.get_logger(), self._level)("django.output", line=self._partial.strip())
        self._partial = ""


class Project:
    """A Django project: its settings module, its apps' migrations, one ``DATABASES`` alias.

    The :class:`runner.drivers.Driver` for Django. Revision ids are
    ``app_label.migration_name``; targets are ``heads`` (every app's leaf node),
    ``app_label`` (that app's leaf node) or ``app_label:migration_name`` (a
    prefix is enough, as for ``migrate app 0003``).

    Args:
        settings: ``MIGRATION_DJANGO_DATABASE``, ``MIGRATION_DATABASE_URL`` (replaces the
            entry's connection fields), ``MIGRATION_DDL_LOCK_TIMEOUT`` and ``_STATEMENT_TIMEOUT``.
        cwd: the working directory, put on ``sys.path`` as ``manage.py`` does.

    Raises:
        ConfigError: no ``DJANGO_SETTINGS_MODULE``, settings or apps that do not import,
            an unknown alias, conflicting leaf nodes in an app.
        BrokenRevisionFiles: a migration file does not import, or depends on a missing migration.
    """

    tool = "django"

    def __init__(self, *, settings: Settings, cwd: Path, url: urls.DatabaseUrl | None = None) -> None:
        self.alias = settings.django_database
        self._url = url  # MIGRATION_DATABASE_URL replaces the DATABASES entry's database
        self.version_table = VersionTable("django_migrations")
        self._settings = settings
        misplaced = [name for name in _ALEMBIC_ONLY if name in settings.model_fields_set]
        if misplaced:
            raise ConfigError(
                f"{', '.join('MIGRATION_' + name.upper() for name in misplaced)}: Alembic settings, but this run "
                "migrates a Django project; unset them, or set MIGRATION_TOOL=alembic"
            )
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "").strip()
        if not module:
            raise ConfigError(
                "DJANGO_SETTINGS_MODULE is not set; set it to the project's settings module "
                "(e.g. mysite.settings), as manage.py does"
            )
        self.settings_module = module
        if str(cwd) not in sys.path:
            sys.path.insert(0, str(cwd))
        try:
            import django  # noqa: PLC0415
            from django.conf import settings as django_settings  # noqa: PLC0415
        except ImportError:
            raise ConfigError(
                "MIGRATION_TOOL=django, but Django is not installed here: install the runner into the "
                "application's image with `pip install 'migration-runner[django]'`"
            ) from None
        with project_code():
            databases = self._import_settings(django_settings, cwd)
            self._use_database(databases)
            django_settings.LOGGING_CONFIG = None  # the runner owns logging
            try:
                django.setup()
            except Exception as error:
                raise ConfigError(f"django.setup() with {module}: {_described(error)}{_where(error)}") from None
            self._watch_connections()
            self._loader = self._build_loader(None)
        self._check_conflicts()

    def _import_settings(self, django_settings: Any, cwd: Path) -> dict[str, Any]:
        try:
            databases = django_settings.DATABASES
        except ImportError as error:
            raise ConfigError(
                f"DJANGO_SETTINGS_MODULE={self.settings_module}: cannot import it from {cwd} "
                f"({_described(error)}); is the project in the working directory, or on PYTHONPATH?"
            ) from None
        except Exception as error:
            raise ConfigError(
                f"DJANGO_SETTINGS_MODULE={self.settings_module}: importing it raised {_described(error)}{_where(error)}"
            ) from None
        if not isinstance(databases, dict):
            raise ConfigError(f"DATABASES in {self.settings_module} is not a dict")
        return databases

    def _use_database(self, databases: dict[str, Any]) -> None:
        """Point the alias at MIGRATION_DATABASE_URL when it is set; remember the URL of the entry otherwise."""
        where = f"DATABASES[{self.alias!r}] in {self.settings_module}"
        if self.alias not in databases:
            raise ConfigError(
                f"MIGRATION_DJANGO_DATABASE={self.alias!r}: {self.settings_module} has no such DATABASES alias "
                f"(it has {', '.join(map(repr, databases)) or 'none'})"
            )
        entry = databases[self.alias]
        self._own_url: tuple[str, str] | None = None
        if self._url is not None:
            entry.update(entry_of_url(self._url))
        else:
            self._own_url = (url_of_entry(entry, where), where)
        if _ENGINES.get(entry.get("ENGINE", "")) == "postgresql":
            # Keepalives and tcp_user_timeout, as for the runner's own sessions: a frozen server ends the run.
            options = entry.setdefault("OPTIONS", {})
            for name, value in urls.PG_NETWORK_BOUNDS.items():
                options.setdefault(name, value)

    def _watch_connections(self) -> None:
        """Give each of Django's sessions to the alias the runner's timeouts, and track MySQL connection ids."""
        from django.db.backends.signals import connection_created  # noqa: PLC0415

        lock_ms = sessions.milliseconds(self._settings.ddl_lock_timeout)
        statement_ms = sessions.milliseconds(self._settings.statement_timeout)

        def created(sender: Any, connection: Any, **_: Any) -> None:
            if connection.alias != self.alias:
                return
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute(f"SET lock_timeout = {lock_ms}")  # our own integers (milliseconds)
                    cursor.execute(f"SET statement_timeout = {statement_ms}")
                elif connection.vendor == "mysql":
                    if lock_ms:
                        cursor.execute(f"SET SESSION lock_wait_timeout = {sessions.whole_seconds(lock_ms / 1000)}")
                    sessions.mysql_connection_ids.add(int(connection.connection.thread_id()))

        connection_created.connect(created, weak=False, dispatch_uid="migration-runner")

    def _build_loader(self, connection: Any) -> Any:
        """Django's ``MigrationLoader``: the graph from disk, and with a connection what it has applied.

        Raises:
            BrokenRevisionFiles: a migration does not import or depends on a missing one.
        """
        from django.db.migrations.exceptions import BadMigrationError, NodeNotFoundError  # noqa: PLC0415
        from django.db.migrations.loader import MigrationLoader  # noqa: PLC0415

        try:
            with project_code():
                return MigrationLoader(connection, ignore_no_migrations=True)
        except NodeNotFoundError as error:
            raise BrokenRevisionFiles(f"migration graph: {error}") from None
        except (BadMigrationError, ImportError, SyntaxError) as error:
            raise BrokenRevisionFiles(f"migration file: {_described(error)}{_where(error)}") from None
        except Exception as error:
            if _is_database_error(error):
                raise
            raise BrokenRevisionFiles(f"migration file: {_described(error)}{_where(error)}") from None

    def _check_conflicts(self) -> None:
        conflicts = self._loader.detect_conflicts()
        if conflicts:
            names = "; ".join(f"{', '.join(sorted(names))} in {app}" for app, names in sorted(conflicts.items()))
            raise ConfigError(
                f"conflicting migrations: several leaf nodes in one app ({names}); "
                "run `python manage.py makemigrations --merge` and commit the merge migration"
            )

    def run_system_checks(self) -> None:
        """Django's system checks, as ``manage.py migrate`` runs them (``django.core.checks.run_checks``).

        Raises:
            BrokenProject: a check reported an error; the message names each.
        """
        from django.core import checks  # noqa: PLC0415

        with project_code():
            found = checks.run_checks(databases=[self.alias])
        errors = [message for message in found if message.is_serious() and not message.is_silenced()]
        if errors:
            raise BrokenProject(f"Django's system checks failed: {'; '.join(f'{e.id}: {e.msg}' for e in errors)}")

    def returned_early(self, revisions: Sequence[str], state: str) -> str:
        """``migrate`` returned with ``revisions`` still ``state``: it ran on another alias or another database."""
        verb = "is" if len(revisions) == 1 else "are"
        return (
            f"migrate returned, but {', '.join(revisions)} {verb} still {state}; does a database router "
            f"(allow_migrate) send them elsewhere, or MIGRATION_DJANGO_DATABASE={self.alias!r} name another alias?"
        )

    def database_url(self) -> tuple[str, str] | None:
        """The URL of the alias' ``DATABASES`` entry and where it is, unless MIGRATION_DATABASE_URL replaced it."""
        return self._own_url

    def summary(self, current: Sequence[str]) -> tuple[str, ...]:
        """The last applied migration of each app: applied nodes without an applied child in their app."""
        applied = {_key(revision) for revision in current}
        graph = self._loader.graph
        last = []
        for key in applied:
            node = graph.node_map.get(key)
            children = node.children if node is not None else set()
            if not any(child[0] == key[0] and child in applied for child in children):
                last.append(_id(key))
        return tuple(sorted(last))

    def heads(self) -> tuple[str, ...]:
        """Every app's leaf node, sorted."""
        return tuple(sorted(_id(key) for key in self._loader.graph.leaf_nodes()))

    @staticmethod
    def is_relative(target: str) -> bool:
        """Django has no relative targets."""
        return False

    def _targets(self, target: str) -> list[tuple[str, str | None]]:
        """``migrate``'s targets for a MIGRATION_TARGET: ``(app, name)``, ``(app, None)`` for ``app:zero``."""
        from django.db.migrations.exceptions import AmbiguityError  # noqa: PLC0415

        loader = self._loader
        if target == "heads":
            return list(loader.graph.leaf_nodes())
        app, _, name = target.partition(":")
        if app not in loader.migrated_apps:
            raise ConfigError(
                f"MIGRATION_TARGET={target!r}: no installed app {app!r} with migrations; use heads, an app label "
                f"({', '.join(sorted(loader.migrated_apps))}) or app_label:migration_name"
            )
        if not name:
            return [key for key in loader.graph.leaf_nodes() if key[0] == app]
        if name == "zero":
            return [(app, None)]
        try:
            migration = loader.get_migration_by_prefix(app, name)
        except AmbiguityError:
            raise ConfigError(f"MIGRATION_TARGET={target!r}: more than one migration of {app} starts so") from None
        except KeyError:
            raise ConfigError(f"MIGRATION_TARGET={target!r}: {app} has no migration matching {name!r}") from None
        key = (app, migration.name)
        if key not in loader.graph.nodes and key in loader.replacements:
            key = loader.replacements[key].replaces[-1]  # a partly applied squash: its last original, as migrate does
        return [key]

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """The migrations a target names, as ``app_label.migration_name`` (``()`` for ``app:zero``)."""
        return tuple(sorted(_id(cast(Key, key)) for key in self._targets(target) if key[1] is not None))

    def quick_ledger_rows(self, table: str) -> list[Any]:
        """The ledger's rows of this tool (:func:`runner.drift.select_statement`), on Django's own session.

        For the no-op check, which does not import SQLAlchemy.

        Raises:
            Exception: whatever the database raises (no ledger yet included).
        """
        from django.db import connections  # noqa: PLC0415

        from runner import drift  # noqa: PLC0415

        session = connections[self.alias]
        with session.cursor() as cursor:
            statement = drift.select_statement(session.ops.quote_name, table, None, self.tool, "django_migrations")
            if statement is None:
                raise ValueError("the ledger's scope needs quoting")  # the full path reads it
            cursor.execute(statement)
            return list(cursor.fetchall())

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """Every migration ``django_migrations`` records (a squash counts once all it replaces are), sorted.

        Read on Django's own session to the alias (``MigrationLoader`` with a
        connection), which then serves the plan; Django runs it in autocommit.
        Also Django's ``check_consistent_history``.

        Raises:
            ConfigError: ``InconsistentMigrationHistory``.
            ConnectionLost: the session to the database was lost.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.exceptions import InconsistentMigrationHistory  # noqa: PLC0415

        session = connections[self.alias]
        with self._database_errors(reading=True):
            loader = self._build_loader(session)
            try:
                loader.check_consistent_history(session)
            except InconsistentMigrationHistory as error:
                raise ConfigError(
                    f"inconsistent migration history: {error}; the database has a migration applied before one "
                    "it depends on (fix django_migrations, or fake the missing dependency)"
                ) from None
        self._loader = loader
        return _applied_ids(loader)

    def unknown(self, current: Sequence[str]) -> list[str]:
        """Applied migrations of installed apps that are neither on disk nor replaced by a squash on disk.

        Rows of apps no longer installed are not counted: Django ignores them too.
        """
        loader = self._loader
        replaced = {key for migration in loader.disk_migrations.values() for key in migration.replaces}
        return sorted(
            revision
            for revision in current
            if (key := _key(revision))[0] in loader.migrated_apps
            and key not in loader.disk_migrations
            and key not in replaced
        )

    def is_applied(self, current: Sequence[str], revision: str) -> bool:
        """``revision`` is among the applied migrations."""
        return revision in set(current)

    def past_target(self, current: Sequence[str], target: str) -> bool:
        """Reaching ``target`` would unapply migrations (``migrate app 0002`` after 0003 ran)."""
        applied = {_key(revision) for revision in current}
        for app, name in self._targets(target):
            if name is None:
                if any(key[0] == app for key in applied):
                    return True
            elif (app, name) in applied:
                node = self._loader.graph.node_map[(app, name)]
                if any(child[0] == app and child in applied for child in node.children):
                    return True
        return False

    def pending(self, current: Sequence[str], target: str) -> list[Step]:
        """The migrations ``migrate`` would apply, in order.

        The forward half of Django's ``MigrationExecutor.migration_plan``, over the graph of the last read.
        """
        applied = {_key(revision) for revision in current}
        graph = self._loader.graph
        plan: list[Key] = []
        for app, name in self._targets(target):
            if name is None or (app, name) in applied:
                continue
            for key in graph.forwards_plan((app, name)):
                if key not in applied and key not in plan:
                    plan.append(key)
        return [Step(_id(key), _message(graph.nodes[key])) for key in plan]

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it (``MigrationExecutor.record_migration``, as ``--fake``)."""
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

        migration = self._loader.graph.nodes.get(_key(revision))
        if migration is None:
            raise ConfigError(f"{revision} is not a migration of this project")
        with self._database_errors():
            MigrationExecutor(connections[self.alias]).record_migration(migration)

    def source(self, revision: str) -> Path | None:
        """The migration's module file, for its checksum (:mod:`runner.checksum`); None if it has none."""
        migration = self._loader.graph.nodes.get(_key(revision))
        path = getattr(sys.modules.get(type(migration).__module__), "__file__", None) if migration else None
        return Path(path) if path and path.endswith(".py") else None

    def commits_as_it_goes(self, revision: str) -> bool:
        """``atomic = False``: Django runs the migration outside a transaction."""
        migration = self._loader.graph.nodes.get(_key(revision))
        return migration is not None and not migration.atomic

    merge_command = "manage.py makemigrations --merge"

    def diverged(self) -> list[str]:
        """The leaf nodes of every app that has more than one (what ``makemigrations --merge`` joins)."""
        leaves = self._loader.graph.leaf_nodes()
        apps = [app for app, _ in leaves]
        return sorted(_id(key) for key in leaves if apps.count(key[0]) > 1)

    def step_target(self, revision: str, direction: str) -> str:
        """Up: ``app:name``. Down: ``app:parent`` (its first parent in its app) or ``app:zero``.

        Migrating an app back to a parent unapplies that parent's children
        (``MigrationExecutor.migration_plan``): for a merge migration only the
        merge, but for one side of a branch the other side too, which the
        caller sees in :meth:`reverting`.
        """
        app, name = _key(revision)
        if direction == "up":
            return f"{app}:{name}"
        migration = self._loader.graph.nodes.get((app, name))
        parents = _parents_in_app(migration) if migration is not None else ()
        return f"{app}:{_key(parents[0])[1]}" if parents else f"{app}:zero"

    def models_match(self, connection: Connection, url: URL, ignored: Sequence[str] = ()) -> tuple[str, list[str]]:
        """Whether the models need a migration no file has: ``makemigrations --check --dry-run`` (Django's API).

        Returns:
            ``("passed", [])``, or ``("failed", operations)`` as ``makemigrations`` lists them,
            each prefixed with its app, e.g. ``shop: Add field price to product``.
        """
        from django.core.management import call_command  # noqa: PLC0415

        out = io.StringIO()
        try:
            with project_code():
                call_command("makemigrations", check=True, dry_run=True, interactive=False, stdout=out, stderr=out)
        except SystemExit as exit_:
            if not exit_.code:
                return "passed", []
            operations, app = [], ""
            for line in out.getvalue().splitlines():
                stripped = line.strip()
                if stripped.startswith("Migrations for"):
                    app = stripped.split("'")[1] if "'" in stripped else stripped
                elif stripped.startswith(("-", "+", "~")):
                    operations.append(f"{app}: {stripped.lstrip('-+~ ')}")
            return "failed", operations or [line for line in out.getvalue().splitlines() if line.strip()]
        return "passed", []

    def applied_revisions(self, current: Sequence[str]) -> list[str]:
        """The applied migrations: ``current`` itself (``django_migrations`` lists every one)."""
        return sorted(current)

    def unstamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as not applied without running it (``MigrationRecorder.record_unapplied``)."""
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.recorder import MigrationRecorder  # noqa: PLC0415

        app, name = _key(revision)
        with self._database_errors():
            MigrationRecorder(connections[self.alias]).record_unapplied(app, name)

    def upgrade(self, options: MigrateOptions) -> None:
        """Run Django's ``migrate`` to ``target`` on the alias.

        Args:
            options: its ``target`` is ``heads``, ``app_label`` or ``app_label:migration_name``;
                the connection, URL and version table are unused (Django migrates on its own
                session, from its ``DATABASES`` entry, into ``django_migrations``); ``on_applied``
                is called after each migration is applied and recorded, ``before_each`` before it
                runs, ``in_transaction`` right after Django records it (in its transaction, where
                it has one).

        Raises:
            MigrationFailed: a migration raised; the message names it.
            ConfigError: what ``migrate`` refuses (its ``CommandError``), or a failing system check.
            ConnectionLost: the connection was lost while migrating.
            Stopped: the runner's own signal or deadline, with the running migration attached.
        """
        target = options.target
        app, _, name = ("" if target == "heads" else target).partition(":")
        self._call_migrate([part for part in (app, name) if part], _RECORDS_APPLIED, options)

    def reverting(self, current: Sequence[str], target: str) -> list[Step]:
        """The migrations ``migrate app_label migration_name`` (or ``zero``) unapplies, in order.

        Django's own plan (``MigrationExecutor.migration_plan``, which reads
        ``django_migrations`` again); ``current`` is not needed.

        Raises:
            ConfigError: not ``app_label:migration_name`` or ``app_label:zero``, or not below the database.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

        if ":" not in target:
            raise ConfigError(
                f"MIGRATION_TARGET={target!r} is not below the database: downgrade takes "
                "app_label:migration_name or app_label:zero"
            )
        targets = self._targets(target)
        with self._database_errors():
            plan = MigrationExecutor(connections[self.alias]).migration_plan(targets)
        if any(not backwards for _, backwards in plan):
            raise ConfigError(f"MIGRATION_TARGET={target!r} is not below the database: use upgrade to go forward")
        return [Step(_id((m.app_label, m.name)), _message(m), _parents_in_app(m)) for m, _ in plan]

    def irreversible(self, steps: Sequence[Step]) -> list[tuple[str, str]]:
        """The migrations with an operation Django cannot reverse (``Operation.reversible``).

        That is a ``RunPython`` without ``reverse_code`` or a ``RunSQL`` without ``reverse_sql``.
        """
        found = []
        for step in steps:
            migration = self._loader.graph.nodes.get(_key(step.revision))
            for operation in getattr(migration, "operations", ()):
                if not operation.reversible:
                    found.append((step.revision, f"{operation.describe()}: no reverse"))
        return found

    def render(self, current: Sequence[str], target: str, url: URL) -> list[Rendered]:
        """Each pending migration's SQL as ``sqlmigrate`` shows it (``MigrationLoader.collect_sql``), run-free.

        A migration with ``RunPython`` keeps the SQL of its other operations,
        and says that its Python is not in it.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.operations.special import RunPython  # noqa: PLC0415

        session = connections[self.alias]
        rendered = []
        for step in self.pending(current, target):
            migration = self._loader.graph.nodes[_key(step.revision)]
            transactional = bool(migration.atomic and session.features.can_rollback_ddl)
            python = [op.describe() for op in migration.operations if isinstance(op, RunPython)]
            try:
                with self._database_errors(), project_code():
                    statements = self._loader.collect_sql([(migration, False)])
            except Exception as error:  # project code: what cannot be rendered is reported, not raised
                first_line = (str(error).splitlines() or [""])[0]
                why = f"cannot be rendered: {type(error).__name__}: {first_line}"
                rendered.append(Rendered(step.revision, None, why, transactional))
                continue
            note = f"runs Python, not shown as SQL: {'; '.join(python)}" if python else None
            rendered.append(Rendered(step.revision, "\n".join(statements) + "\n", note, transactional))
        return rendered

    def rehearse(self, *, url: URL, target: str, version_table: VersionTable, tracer: Tracer) -> list[tuple[str, str]]:
        """Run ``migrate`` inside ``transaction.atomic()`` and roll it back, showing ``tracer`` each statement.

        Each migration's own atomic block becomes a savepoint inside the outer
        one (Django docs, "Database transactions"). A migration with ``atomic =
        False`` would run outside any transaction: it and those after it are not run.

        Returns:
            ``(migration, why)`` of the migrations that were not run.

        Raises:
            MigrationFailed: a migration raised (nothing stays: it is all rolled back).
        """
        from django.core.management import call_command  # noqa: PLC0415
        from django.db import connections, transaction  # noqa: PLC0415

        session = connections[self.alias]
        plan = [_key(step.revision) for step in self.pending(_applied_ids(self._loader), target)]
        progress = _Rehearsal(session, tracer, plan)
        app, _, name = ("" if target == "heads" else target).partition(":")
        out, err = _LogLines("info"), _LogLines("warning")
        try:
            with self._database_errors(), project_code(), transaction.atomic(using=self.alias):
                cursor = session.connection.cursor()
                try:
                    tracer.begin(cursor)
                finally:
                    cursor.close()
                with session.execute_wrapper(progress.observed):
                    call_command(
                        _migrate_command(progress),
                        *[part for part in (app, name) if part],
                        database=self.alias,
                        interactive=False,
                        verbosity=1,
                        skip_checks=True,
                        no_color=True,
                        stdout=out,
                        stderr=err,
                    )
                raise _RolledBack
        except _RolledBack:
            pass
        except (ConfigError, Stopped, ConnectionLost):
            raise
        except BaseException as error:
            failure = self._failure(error, progress)
            message = f"plan --trace: {failure.message} (rolled back: nothing was changed)"
            raise MigrationFailed(
                message, revision=tracer.revision, sqlstate=getattr(failure, "sqlstate", None)
            ) from error
        finally:
            out.flush()
            err.flush()
        return progress.skipped

    def downgrade(self, options: MigrateOptions) -> None:
        """Run Django's ``migrate app_label migration_name`` (or ``zero``) backwards; as :meth:`upgrade`."""
        app, _, name = options.target.partition(":")
        self._call_migrate([app, name], _RECORDS_UNAPPLIED, options)

    def _call_migrate(self, arguments: list[str], records: re.Pattern[str], options: MigrateOptions) -> None:
        """``call_command(migrate, *arguments)`` with the runner's hooks around each migration; see :meth:`upgrade`."""
        from django.core.management import call_command  # noqa: PLC0415
        from django.core.management.base import CommandError  # noqa: PLC0415
        from django.db import connections  # noqa: PLC0415

        session = connections[self.alias]
        progress = _Progress(session, options.before_each, options.on_applied, options.in_transaction, records)
        out, err = _LogLines("info"), _LogLines("warning")
        try:
            with session.execute_wrapper(progress.record), project_code(), _recorded_with_their_changes():
                call_command(
                    _migrate_command(progress),
                    *arguments,
                    database=self.alias,
                    interactive=False,
                    verbosity=1,
                    skip_checks=False,  # manage.py migrate runs the system checks
                    no_color=True,
                    stdout=out,
                    stderr=err,
                )
        except CallbackFailed as callback:
            raise callback.error from None
        except Stopped as stopped:
            if progress.running is not None:
                stopped.revision = progress.running_id
                stopped.transactional = progress.transactional
            _close(session)
            raise
        except CommandError as error:
            if not progress.started_any:  # migrate refused: conflicts, an unknown app, a failing system check
                raise ConfigError(f"migrate: {str(error).replace(chr(10), ' ')}") from None
            raise self._failure(error, progress) from error
        except BaseException as error:
            _close(session)
            raise self._failure(error, progress) from error
        finally:
            out.flush()
            err.flush()

    def _failure(self, error: BaseException, progress: _Progress) -> RunnerError:
        """What an exception out of ``migrate`` means: a lost connection, a broken project, or a failed migration."""
        from runner import database  # noqa: PLC0415

        translated = _as_dbapi_error(error)
        failure = database.classify(translated) if translated is not None else database.Failure(None, False)
        if translated is not None and _lost(translated):
            failure = database.Failure(failure.code or "08006", True)
        running = progress.running_id
        if failure.connection:
            return ConnectionLost(
                f"connection lost while applying migration {running} "
                f"(SQLSTATE {failure.code}): {database.error_message(translated or error)}"
            )
        message = database.error_message(translated) if translated is not None else _described(error)
        if isinstance(error, SystemExit | KeyboardInterrupt | GeneratorExit):
            message = f"{type(error).__name__}({error.args[0] if error.args else ''}) raised by project code"
        if running is None:
            if not progress.started_any and failure.code is None:
                return BrokenProject(f"migrate, before any migration ran: {message}{_where(error)}")
            return MigrationFailed(f"migrate: {message}", revision=None, sqlstate=failure.code)
        transactional = progress.transactional
        if not transactional:
            message += "; this migration ran outside a transaction, so its changes may be partly applied"
        return MigrationFailed(message, revision=running, sqlstate=failure.code, transactional=transactional)

    @contextlib.contextmanager
    def _database_errors(self, *, reading: bool = False) -> Iterator[None]:
        """Turn Django's database errors into the runner's: lost or unreachable, or else SQLAlchemy's own kind."""
        from django.db import connections  # noqa: PLC0415

        try:
            yield
        except Exception as error:
            from runner import database  # noqa: PLC0415  (SQLAlchemy only when something went wrong)

            translated = _as_dbapi_error(error)
            if translated is None:
                raise
            _close(connections[self.alias])
            failure = database.classify(translated)
            if failure.connection or _lost(translated):
                cls = DatabaseUnavailable if reading else ConnectionLost
                raise cls(
                    f"connection lost (SQLSTATE {failure.code or '08006'}): {database.error_message(translated)}"
                ) from error
            raise translated from error


def _applied_ids(loader: Any) -> tuple[str, ...]:
    """What a ``MigrationLoader`` read as applied, as sorted ``app_label.migration_name`` ids."""
    return tuple(sorted(_id(key) for key in loader.applied_migrations))


def _parents_in_app(migration: Any) -> tuple[str, ...]:
    """The migrations of its own app that it depends on, as ``app_label.migration_name``."""
    return tuple(_id(parent) for parent in migration.dependencies if parent[0] == migration.app_label)


def _message(migration: Any) -> str:
    """A one-line description of a migration: its operations, as ``sqlmigrate``'s comments name them."""
    described = [operation.describe() for operation in migration.operations]
    text = "; ".join(described) or "no operations"
    return text if len(text) <= 200 else text[:199] + "…"


class _Progress:
    """The runner's view of one ``migrate`` call: which migration runs, and the hooks around each."""

    def __init__(
        self,
        session: Any,
        before_each: Callable[[str], None],
        on_applied: Callable[[Applied], None],
        in_transaction: Callable[[Execute, str, bool], None],
        records: re.Pattern[str],
    ) -> None:
        self.session = session
        self.records = records
        self.before_each = before_each
        self.on_applied = on_applied
        self.in_transaction = in_transaction
        self.running: Any = None
        self.started_any = False
        self.transactional = True
        self._recorded = False
        self._started = 0.0

    @property
    def running_id(self) -> str | None:
        return None if self.running is None else _id((self.running.app_label, self.running.name))

    def starting(self, migration: Any) -> None:
        revision = _id((migration.app_label, migration.name))
        own(self.before_each, revision)
        self.running, self.started_any, self._recorded = migration, True, False
        # Non-atomic migrations, and every one on MySQL (no transactional DDL), commit as they go.
        self.transactional = bool(migration.atomic and self.session.features.can_rollback_ddl)
        self._started = time.monotonic()

    def applied(self, migration: Any) -> None:
        key = (migration.app_label, migration.name)
        duration = time.monotonic() - self._started
        self.running = None
        own(self.on_applied, Applied(_id(key), _message(migration), duration, _parents_in_app(migration)))

    def record(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        """Django's ``execute_wrapper``: after its ``django_migrations`` insert, the ledger row on that session."""
        result = execute(sql, params, many, context)
        if self.running is not None and not self._recorded and self.records.match(sql):
            self._recorded = True
            dialect = _pyformat_dialect(self.session.vendor)

            def run(statement: Any, parameters: Mapping[str, Any]) -> None:
                # A cursor of its own on the same session: Django still reads the insert's RETURNING from its cursor.
                compiled = statement.compile(dialect=dialect, column_keys=list(parameters))
                with context["connection"].cursor() as cursor:
                    cursor.execute(str(compiled), compiled.construct_params(parameters))

            own(self.in_transaction, run, self.running_id, self.transactional)
        return result


class _RolledBack(Exception):
    """Leaves ``plan --trace``'s outer atomic block, which rolls everything back."""


class _Rehearsal(_Progress):
    """``migrate``'s progress under ``plan --trace``: tells the tracer what runs; stops before a non-atomic one."""

    def __init__(self, session: Any, tracer: Tracer, plan: list[Key]) -> None:
        super().__init__(session, lambda _: None, lambda _: None, lambda *_: None, _RECORDS_APPLIED)
        self.tracer, self.plan = tracer, plan
        self.skipped: list[tuple[str, str]] = []

    def starting(self, migration: Any) -> None:
        key = (migration.app_label, migration.name)
        if not migration.atomic:
            later = self.plan[self.plan.index(key) + 1 :] if key in self.plan else []
            self.skipped.append(
                (_id(key), "atomic = False: it runs outside a transaction, so it cannot be rolled back")
            )
            self.skipped.extend((_id(k), "comes after a migration that was not run") for k in later)
            raise _RolledBack
        super().starting(migration)
        self.tracer.revision = _id(key)

    def applied(self, migration: Any) -> None:
        self.tracer.revision = None
        self.running = None

    def observed(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        """Django's ``execute_wrapper``: each statement of the migration, shown to the tracer."""
        self.tracer.before()
        result = execute(sql, params, many, context)
        raw = context["connection"].connection.cursor()  # the DB-API connection: outside Django's wrappers
        try:
            self.tracer.after(raw, sql)
        finally:
            raw.close()
        return result


def _migrate_command(progress: _Progress) -> Any:
    """Django's ``migrate`` command, reporting each migration to ``progress`` instead of printing it."""
    from django.core.management.commands.migrate import Command as Migrate  # noqa: PLC0415

    # Django has no type information, so Migrate is Any to mypy.
    class RunnerMigrate(Migrate):  # type: ignore[misc]
        def migration_progress_callback(self, action: str, migration: Any = None, fake: bool = False) -> None:
            if action in ("apply_start", "unapply_start"):
                progress.starting(migration)
            elif action in ("apply_success", "unapply_success"):
                progress.applied(migration)

    return RunnerMigrate()


@contextlib.contextmanager
def _recorded_with_their_changes() -> Iterator[None]:
    """Record each atomic migration in ``django_migrations`` inside its own transaction, where DDL can roll back.

    Django's ``MigrationExecutor`` records an applied migration after its transaction has
    committed whenever the schema editor has deferred SQL (the indexes and foreign keys of a
    ``CreateModel``), and every unapplied one after the commit. A stop in between leaves a
    change that ``django_migrations`` (and so the ledger, written beside it) does not record,
    and the next run fails on "relation ... already exists" naming nothing. Here the record
    is written before the transaction ends: the deferred SQL still runs in it, after the
    record, and a failure rolls back both. Non-atomic migrations, MySQL's (no transactional
    DDL) and ``--fake`` runs keep Django's own order.

    ``apply_migration`` and ``unapply_migration`` are not documented API; the replacements
    follow Django 5.2's, and tests/test_real_projects.py pins the order they replace.
    """
    from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

    apply, unapply = MigrationExecutor.apply_migration, MigrationExecutor.unapply_migration

    def transactional(executor: Any, migration: Any, fake: bool) -> bool:
        return not fake and bool(migration.atomic) and bool(executor.connection.features.can_rollback_ddl)

    def apply_migration(self: Any, state: Any, migration: Any, fake: bool = False, fake_initial: bool = False) -> Any:
        if fake_initial or not transactional(self, migration, fake):
            return apply(self, state, migration, fake, fake_initial)
        if self.progress_callback:
            self.progress_callback("apply_start", migration, fake)
        with self.connection.schema_editor(atomic=True) as schema_editor:
            state = migration.apply(state, schema_editor)
            self.record_migration(migration)  # the deferred SQL runs after this, in the same transaction
        if self.progress_callback:
            self.progress_callback("apply_success", migration, fake)
        return state

    def unapply_migration(self: Any, state: Any, migration: Any, fake: bool = False) -> Any:
        if not transactional(self, migration, fake):
            return unapply(self, state, migration, fake)
        if self.progress_callback:
            self.progress_callback("unapply_start", migration, fake)
        with self.connection.schema_editor(atomic=True) as schema_editor:
            state = migration.unapply(state, schema_editor)
            for app_label, name in migration.replaces:  # a squash: its replaced migrations too, as Django does
                self.recorder.record_unapplied(app_label, name)
            self.recorder.record_unapplied(migration.app_label, migration.name)
        if self.progress_callback:
            self.progress_callback("unapply_success", migration, fake)
        return state

    MigrationExecutor.apply_migration = apply_migration
    MigrationExecutor.unapply_migration = unapply_migration
    try:
        yield
    finally:
        MigrationExecutor.apply_migration = apply
        MigrationExecutor.unapply_migration = unapply


def _pyformat_dialect(vendor: str) -> Any:
    """A SQLAlchemy dialect that compiles to ``%(name)s`` parameters, which Django's cursors take on every backend."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite  # noqa: PLC0415

    module = {"postgresql": postgresql, "mysql": mysql, "sqlite": sqlite}[vendor]
    return module.dialect(paramstyle="pyformat")


def _is_database_error(error: BaseException) -> bool:
    from django.db import Error as DjangoDatabaseError  # noqa: PLC0415

    return isinstance(error, DjangoDatabaseError)


def _as_dbapi_error(error: BaseException) -> sa_exc.DBAPIError | None:
    """Django's wrapped database error as SQLAlchemy's, so :func:`runner.database.classify` reads it.

    Django re-raises the driver's exception as ``django.db.utils.<Class>`` with
    the original as ``__cause__`` (``DatabaseErrorWrapper``).
    """
    from sqlalchemy import exc as sa_exc  # noqa: PLC0415

    if isinstance(error, sa_exc.DBAPIError):
        return error
    if not _is_database_error(error):
        return None
    orig = error.__cause__ if isinstance(error.__cause__, Exception) else error
    return cast(sa_exc.DBAPIError, sa_exc.DBAPIError.instance(None, None, orig, Exception))


def _lost(error: sa_exc.DBAPIError) -> bool:
    # psycopg raises InterfaceError ("the connection is closed") once it has seen the connection die.
    from sqlalchemy import exc as sa_exc  # noqa: PLC0415

    return isinstance(error, sa_exc.InterfaceError)


def _close(session: Any) -> None:
    """Close Django's session (the next use reconnects); whatever closing a dead one raises is moot."""
    with contextlib.suppress(Exception):
        session.close()


if TYPE_CHECKING:  # the Django project is a Driver (checked by mypy, not at run time)
    _as_driver: Driver = Project(settings=cast("Settings", None), cwd=Path(), url=None)
