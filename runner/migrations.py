"""The Alembic driver: a project's config and script directory, pending revisions, upgrade.

It runs the project's own, unmodified ``env.py``. Three defaults are passed
into that env.py's ``context.configure()`` unless it sets them itself:
``transaction_per_migration=True`` (so a failure at revision k leaves 1..k-1
applied and recorded), ``version_table`` and ``version_table_schema``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationStep
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import MultipleHeads, ResolutionError, RevisionError
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Connection

from runner import database, logs
from runner.errors import ConfigError, DatabaseUnavailable, MigrationFailed


@dataclass(frozen=True)
class Applied:
    """One revision that was applied and committed.

    Attributes:
        revision: the revision id.
        message: the revision's message (its docstring's first line).
        duration_seconds: wall time of its upgrade() and version update.

    """

    revision: str
    message: str
    duration_seconds: float


@dataclass(frozen=True)
class VersionTable:
    """Where Alembic records the applied revisions."""

    name: str = "alembic_version"
    schema: str | None = None


class Project:
    """An Alembic project: its ``alembic.ini`` (optional) and script directory.

    Args:
        alembic_config: path to ``alembic.ini``; ``None`` means ``./alembic.ini``
            when it exists.
        script_location: the script directory; overrides the ini's.
        cwd: the working directory relative paths start from.

    Raises:
        ConfigError: no ini file and no script location, a missing ini file, or a
            script directory that does not exist.

    """

    def __init__(self, *, alembic_config: Path | None, script_location: str | None, cwd: Path) -> None:
        if alembic_config is not None and not (cwd / alembic_config).is_file():
            raise ConfigError(f"MIGRATION_ALEMBIC_CONFIG={str(alembic_config)!r}: no such file")
        if alembic_config is None and (cwd / "alembic.ini").is_file():
            alembic_config = Path("alembic.ini")
        if alembic_config is None and script_location is None:
            raise ConfigError(
                f"no alembic.ini in {cwd} and MIGRATION_SCRIPT_LOCATION is not set; "
                "set MIGRATION_ALEMBIC_CONFIG or MIGRATION_SCRIPT_LOCATION"
            )
        self.config = Config(str(cwd / alembic_config)) if alembic_config is not None else Config()
        if script_location is not None:
            self.config.set_main_option("script_location", script_location)
        try:
            self.script = ScriptDirectory.from_config(self.config)
        except CommandError as error:
            setting = "MIGRATION_SCRIPT_LOCATION" if script_location else "script_location in alembic.ini"
            raise ConfigError(f"{setting}: {error}") from None

    def heads(self) -> tuple[str, ...]:
        """The head revisions of the script directory, sorted.

        Raises:
            ConfigError: the revision files do not form a valid history.

        """
        with _history_errors():
            return tuple(sorted(self.script.get_heads()))

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """Resolve a target (``heads``, ``head``, a revision id or prefix) to revision ids.

        Raises:
            ConfigError: an unknown target, or ``head`` while there are several heads.

        """
        with _history_errors(target):
            scripts = self.script.revision_map.get_revisions(target)
        return tuple(sorted(s.revision for s in scripts if s is not None and not isinstance(s, str)))

    def unknown(self, current: Sequence[str]) -> list[str]:
        """The revisions in ``current`` that the script directory does not contain."""
        missing = []
        for revision in current:
            try:
                self.script.revision_map.get_revision(revision)
            except RevisionError:
                missing.append(revision)
        return missing

    def pending(self, current: Sequence[str], target: str) -> list[Script]:
        """The revisions an upgrade from ``current`` to ``target`` applies, in order.

        A database at or past the target has none pending.

        Args:
            current: the database's revisions (known to the script directory).
            target: as for :meth:`target_revisions`.

        Raises:
            ConfigError: the target cannot be resolved.

        """
        wanted = set(self.target_revisions(target))
        with _history_errors(target):
            applied = {s.revision for s in self.script.iterate_revisions(tuple(current), "base")} if current else set()
            if wanted <= applied:
                return []
            return [step.revision for step in self.script._upgrade_revs(target, _heads_arg(current))]

    def upgrade(
        self,
        *,
        connection: Connection,
        url: URL,
        target: str,
        version_table: VersionTable,
        on_applied: Callable[[Applied], None],
    ) -> None:
        """Run the project's env.py to upgrade the database to ``target``.

        The URL is set as ``sqlalchemy.url`` and the open connection is passed as
        ``config.attributes["connection"]`` (Alembic cookbook, "Sharing a
        Connection"), so both kinds of env.py work.

        Args:
            connection: an open connection outside any transaction.
            url: the database URL, for an env.py that builds its own engine.
            target: the revision(s) to upgrade to.
            version_table: where the revisions are recorded.
            on_applied: called after each revision's transaction has committed.

        Raises:
            MigrationFailed: a revision raised; the message names it.
            DatabaseUnavailable: the connection was lost while migrating.

        """
        # configparser interpolation: a literal % must be doubled (Alembic docs,
        # Config.set_main_option).
        self.config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
        self.config.attributes["connection"] = connection
        running: list[Script] = []

        def steps(heads: tuple[str, ...], _: Any) -> Iterator[MigrationStep]:
            # run_migrations() asks for the next step only after the previous
            # one's transaction ended, so the code after `yield` sees it committed.
            for step in self.script._upgrade_revs(target, _heads_arg(heads)):
                running[:] = [step.revision]
                started = time.monotonic()
                yield step
                on_applied(Applied(step.revision.revision, step.revision.doc, time.monotonic() - started))
            running.clear()

        environment = EnvironmentContext(
            self.config, self.script, fn=steps, as_sql=False, starting_rev=None, destination_rev=target
        )
        configure = environment.configure

        def configure_with_defaults(*args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("transaction_per_migration", True)
            kwargs.setdefault("version_table", version_table.name)
            kwargs.setdefault("version_table_schema", version_table.schema)
            configure(*args, **kwargs)

        # An instance attribute, not a subclass: alembic.context proxies only
        # the EnvironmentContext class itself.
        environment.configure = configure_with_defaults  # type: ignore[method-assign]
        try:
            with environment, logs.env_py_file_config_ignored():
                self.script.run_env()
        except Exception as error:
            revision = running[0].revision if running else None
            if database.is_connection_error(error):
                raise DatabaseUnavailable(
                    f"connection lost while applying revision {revision}: {database.error_message(error)}"
                ) from error
            message = database.error_message(error)
            if database.sqlstate(error) is None and not message.startswith(type(error).__name__):
                message = f"{type(error).__name__}: {message}"
            raise MigrationFailed(message, revision=revision, sqlstate=database.sqlstate(error)) from error
        finally:
            self.config.attributes.pop("connection", None)


def _heads_arg(heads: Sequence[str]) -> str:
    # _upgrade_revs() is annotated with one revision, but Alembic's own
    # run_migrations() passes it the tuple of current heads, as we do.
    return cast(str, tuple(heads))


@contextlib.contextmanager
def _history_errors(target: str | None = None) -> Iterator[None]:
    """Turn Alembic's revision-resolution errors into one-line ConfigErrors."""
    try:
        yield
    except MultipleHeads as error:
        raise ConfigError(
            f"MIGRATION_TARGET={target!r} needs a single head but the script directory has "
            f"several ({', '.join(error.heads)}); use 'heads' or name one revision"
        ) from None
    except ResolutionError as error:
        if target is None:
            raise ConfigError(f"revision history: {error}") from None
        raise ConfigError(f"MIGRATION_TARGET={target!r}: {error}") from None
    except (RevisionError, CommandError) as error:
        raise ConfigError(f"revision history: {error}") from None
