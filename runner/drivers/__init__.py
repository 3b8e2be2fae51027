"""The seam between the orchestration and a migration system.

:mod:`runner.commands` asks a :class:`Driver` for what it needs and never
imports Alembic (or, later, Django) itself: the heads, what the database has
applied, the pending steps to a target, and applying them with per-step
callbacks. Each system is one module here, imported only when it is used
(:func:`load`), so an Alembic run never imports another tool.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection


def tools() -> list[str]:
    """The migration systems this version has a driver for: the modules of this package."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))


@dataclass(frozen=True)
class Step:
    """One pending migration step.

    Attributes:
        revision: its id (an Alembic revision id).
        message: its one-line description.
    """

    revision: str
    message: str


@dataclass(frozen=True)
class Applied:
    """One step that was applied and committed.

    Attributes:
        revision: the step's id.
        message: its one-line description.
        duration_seconds: wall time of the step and its version update.
        replaces: the ids it supersedes among the database's current ones
            (Alembic: its ``down_revision`` ids).
    """

    revision: str
    message: str
    duration_seconds: float
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class VersionTable:
    """Where the tool records what is applied."""

    name: str = "alembic_version"
    schema: str | None = None


class Driver(Protocol):
    """What the orchestration asks of a migration system. Every error is one of :mod:`runner.errors`."""

    tool: str

    def heads(self) -> tuple[str, ...]:
        """The project's heads (leaf nodes), sorted."""
        ...

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """The ids a target names (``()`` for ``base`` and for relative targets); ConfigError if unknown."""
        ...

    def is_relative(self, target: str) -> bool:
        """The target depends on the database (``+2``)."""
        ...

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """What the database has applied (empty without a version table); the read's transaction is ended."""
        ...

    def unknown(self, current: Sequence[str]) -> list[str]:
        """The applied ids the project does not have (an application rollback)."""
        ...

    def is_applied(self, current: Sequence[str], revision: str) -> bool:
        """``revision`` is applied when the database is at ``current``."""
        ...

    def past_target(self, current: Sequence[str], target: str) -> bool:
        """Reaching ``target`` from ``current`` would take a downgrade."""
        ...

    def pending(self, current: Sequence[str], target: str) -> list[Step]:
        """The steps an upgrade from ``current`` to ``target`` applies, in order."""
        ...

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it."""
        ...

    def upgrade(
        self,
        *,
        connection: Connection,
        url: URL,
        target: str,
        version_table: VersionTable,
        on_applied: Callable[[Applied], None],
        before_each: Callable[[str], None],
        in_transaction: Callable[[Connection, str], None],
    ) -> None:
        """Apply the pending steps; raises MigrationFailed, BrokenProject, ConnectionLost or Stopped."""
        ...


def load(tool: str, *, alembic_config: Path | None, script_location: str | None, cwd: Path) -> Driver:
    """Load the project with the driver of ``tool``, importing only that tool.

    Raises:
        ConfigError: the tool is unknown, or the project cannot be loaded.
    """
    if tool not in tools():
        from runner.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"MIGRATION_TOOL={tool!r}: use one of {', '.join(tools())}")
    module = importlib.import_module(f"runner.drivers.{tool}")
    driver: Driver = module.Project(alembic_config=alembic_config, script_location=script_location, cwd=cwd)
    return driver
