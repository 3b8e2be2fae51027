"""The Alembic driver: a project's config and script directory, pending revisions, upgrade.

It runs the project's own, unmodified ``env.py``. Three defaults are passed
into that env.py's ``context.configure()`` unless it sets them itself:
``transaction_per_migration=True`` (so a failure at revision k leaves 1..k-1
applied and recorded), ``version_table`` and ``version_table_schema``.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationStep
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import MultipleHeads, ResolutionError, RevisionError
from alembic.util import to_tuple
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Connection

from runner import database, logs
from runner.errors import BrokenRevisionFiles, ConfigError, ConnectionLost, MigrationFailed


@dataclass(frozen=True)
class Applied:
    """One revision that was applied and committed.

    Attributes:
        revision: the revision id.
        message: the revision's message (its docstring's first line).
        duration_seconds: wall time of its upgrade() and version update.
        replaces: its ``down_revision`` ids: the heads it supersedes.
    """

    revision: str
    message: str
    duration_seconds: float
    replaces: tuple[str, ...] = ()


class _CallbackFailed(Exception):
    """A callback of the runner's own raised inside env.py's run: not a failed revision."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _own(callback: Callable[..., None], *args: Any) -> None:
    """Run one of the runner's callbacks so that what it raises passes env.py's run unchanged."""
    try:
        callback(*args)
    except Exception as error:
        raise _CallbackFailed(error) from error


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
        self._load_history()

    def _load_history(self) -> None:
        """Import every revision file now, so a broken one is named before any connection.

        Raises:
            BrokenRevisionFiles: a file fails to import, a ``down_revision`` points
                nowhere, or the revisions form a cycle.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Alembic warns, then raises KeyError, for a dangling down_revision
                self.script.revision_map.heads  # noqa: B018  (building the map imports every file)
        except SyntaxError as error:
            raise BrokenRevisionFiles(
                f"revision file {error.filename}: SyntaxError: {error.msg} (line {error.lineno})"
            ) from None
        except (KeyError, RevisionError) as error:
            raise BrokenRevisionFiles(self._explain_history(error)) from None
        except Exception as error:
            frames = [f.filename for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith(".py")]
            in_versions = [f for f in frames if Path(f).parent.name == "versions"]
            where = (in_versions or frames or ["?"])[-1]
            raise BrokenRevisionFiles(f"revision file {where}: {type(error).__name__}: {error}") from None

    def _explain_history(self, error: BaseException) -> str:
        """Name the files behind a dangling ``down_revision`` or a cycle."""
        scripts = list(self.script._load_revisions())  # each file once more, no map
        known = {script.revision for script in scripts}
        if isinstance(error, KeyError):
            dangling = [
                f"{script.path} (down_revision {script.down_revision!r})"
                for script in scripts
                if set(to_tuple(script.down_revision, default=())) - known
            ]
            return f"revision {error.args[0]!r} does not exist but is named as down_revision by {'; '.join(dangling)}"
        involved = set(getattr(error, "revisions", ()) or ())
        files = [script.path for script in scripts if script.revision in involved] or [self.script.dir]
        return f"revision history: {error}; files: {', '.join(files)}"

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
        before_each: Callable[[], None] = lambda: None,
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
            before_each: called before each revision (the lock liveness check);
                whatever it raises ends the upgrade.

        Raises:
            MigrationFailed: a revision raised; the message names it.
            ConnectionLost: the connection was lost while migrating.

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
                _own(before_each)
                running[:] = [step.revision]
                started = time.monotonic()
                yield step
                running.clear()
                script = step.revision
                replaces = tuple(to_tuple(script.down_revision, default=()))
                applied = Applied(script.revision, script.doc, time.monotonic() - started, replaces)
                _own(on_applied, applied)

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
        except _CallbackFailed as callback:
            raise callback.error from None  # the lock check's ConnectionLost / LockLost, or a bug of ours
        except Exception as error:
            failed = running[0] if running else None
            failure = database.classify(error)
            if failure.connection:
                raise ConnectionLost(
                    f"connection lost while applying revision {failed.revision if failed else None} "
                    f"(SQLSTATE {failure.code}): {database.error_message(error)}"
                ) from error
            message = database.error_message(error)
            if failure.code is None and not message.startswith(type(error).__name__):
                message = f"{type(error).__name__}: {message}"
            transactional = database.family(url) != "mysql" and not (failed and _uses_autocommit_block(failed))
            if not transactional:
                message += "; this revision ran outside a transaction, so its changes may be partly applied"
            raise MigrationFailed(
                message,
                revision=failed.revision if failed else None,
                sqlstate=failure.code,
                transactional=transactional,
            ) from error
        finally:
            self.config.attributes.pop("connection", None)


def _uses_autocommit_block(script: Script) -> bool:
    # Statements in an autocommit_block() commit one by one: such a revision can
    # be partly applied, and is never retried.
    return "autocommit_block" in Path(script.path).read_text(errors="replace")


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
