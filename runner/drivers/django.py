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

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner import DISTRIBUTION, sessions, urls
from runner.drivers import (
    Driver,
    VersionTable,
    project_code,
)
from runner.errors import (
    BrokenProject,
    BrokenRevisionFiles,
    ConfigError,
)

# Django and SQLAlchemy are imported where they are used: choosing the tool (`detect`) needs neither.
if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from runner.settings import Settings
from runner.drivers._django_database import _ENGINES, _described, _is_database_error, _where, entry_of_url, url_of_entry
from runner.drivers._django_executor import DjangoExecutor

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


class Project(DjangoExecutor):
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
    merge_command = "manage.py makemigrations --merge"

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
                f"application's image with `pip install '{DISTRIBUTION}[django]'`"
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


if TYPE_CHECKING:  # the Django project is a Driver (checked by mypy, not at run time)
    _as_driver: Driver = Project(settings=cast("Settings", None), cwd=Path(), url=None)
