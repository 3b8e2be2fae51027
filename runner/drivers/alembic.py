"""The Alembic driver: finding a project, where its URL comes from, and loading it as a :class:`Project`.

The driver is four modules beside this one:

- :mod:`._alembic_config`: the ini file and ``pyproject.toml``, read as ``alembic`` reads them;
- :mod:`._alembic_files`: the revision-file reader of the fast path (no Alembic import);
- :mod:`._alembic_history`: the :class:`runner.drivers.History` queries over the revision graph;
- :mod:`._alembic_executor`: the :class:`runner.drivers.Executor` members, running the project's env.py;
- :mod:`._alembic_env`: what env.py is handed, and what is checked of its connection.

Project code (env.py, revision files) runs with ``sys.stdout`` pointed at
stderr, so its ``print()`` never mixes with a document on stdout, and
whatever it raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is a
failed revision or a broken project, never the runner's own exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner.drivers import (
    Driver,
    VersionTable,
    _alembic_env,
    project_code,
)
from runner.drivers._alembic_config import _config, _config_file_errors, config_files, ini_database_url
from runner.drivers._alembic_executor import AlembicExecutor
from runner.drivers._alembic_files import quick_current, quick_heads
from runner.errors import (
    BrokenProject,
    ConfigError,
)

# What a driver module offers (docs/drivers.md); quick_heads and quick_current are runner.noop's FilesFastPath.
__all__ = [
    "HAS_OWN_URL",
    "PLACEHOLDER_URL",
    "Project",
    "detect",
    "fallback_urls",
    "quick_current",
    "quick_heads",
    "shown_settings",
]

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from runner import urls
    from runner.settings import Settings


def detect(cwd: Path, environ: Mapping[str, str], settings: Settings) -> str | None:
    """What says an Alembic project is here: an ini file, ``[tool.alembic]`` or ``MIGRATION_SCRIPT_LOCATION``."""
    if settings.script_location is not None:
        return "MIGRATION_SCRIPT_LOCATION"
    found = [path.name for path in config_files(settings.alembic_config, cwd) if path is not None]
    return " and ".join(found) or None


# An Alembic project's URL comes from the runner's settings or the ini file: target.resolve's chain.
HAS_OWN_URL = False
# `alembic init` writes this URL into alembic.ini; it means "not configured".
PLACEHOLDER_URL = "driver://user:pass@localhost/dbname"


def fallback_urls(settings: Settings, cwd: Path) -> Iterator[tuple[str, str]]:
    """The ini's ``sqlalchemy.url``, as ``(source, URL)``, unless it is ``alembic init``'s placeholder.

    Raises:
        ConfigError: the ini file is not readable.
    """
    found = ini_database_url(settings.alembic_config, cwd)
    if found and found[0].strip() != PLACEHOLDER_URL:
        yield f"sqlalchemy.url in {found[1]}", found[0]


def shown_settings(settings: Settings, cwd: Path) -> dict[str, tuple[Any, str]]:
    """For ``config``: the configuration file in use, found as ``alembic`` finds it, by variable name."""
    if settings.alembic_config is not None:
        return {}
    found = [path.name for path in config_files(None, cwd) if path is not None]
    return {"ALEMBIC_CONFIG": (" + ".join(found) or None, "found in the working directory" if found else "not set")}


class Project(AlembicExecutor):
    """An Alembic project: its ``alembic.ini`` and/or ``pyproject.toml``, and its script directory.

    The :class:`runner.drivers.Driver` for Alembic.

    Args:
        settings: ``MIGRATION_ALEMBIC_CONFIG`` (``None`` means ``./alembic.ini``
            and ``./pyproject.toml`` when they exist), ``MIGRATION_SCRIPT_LOCATION``
            (overrides the ini's), ``MIGRATION_VERSION_TABLE`` and ``_SCHEMA``.
        cwd: the working directory relative paths start from.

    Raises:
        ConfigError: no ini file and no script location, a missing ini file, or a
            script directory that does not exist.

    """

    tool = "alembic"
    merge_command = "alembic merge heads"

    def __init__(self, *, settings: Settings, cwd: Path, url: urls.DatabaseUrl | None = None) -> None:
        del url  # an Alembic project's URL is in the runner's chain (target.resolve); env.py is given it per run
        from alembic.script import ScriptDirectory  # noqa: PLC0415
        from alembic.util.exc import CommandError  # noqa: PLC0415

        script_location = settings.script_location
        self.version_table = VersionTable(settings.version_table, settings.version_table_schema)
        # For an env.py connection of its own to the same database (_alembic_env.check_configured).
        self._session_timeouts = _alembic_env.SessionTimeouts(settings.ddl_lock_timeout, settings.statement_timeout)
        ini, toml = config_files(settings.alembic_config, cwd)
        if ini is None and toml is None and script_location is None:
            raise ConfigError(
                f"no alembic.ini and no pyproject.toml with [tool.alembic] in {cwd}, and MIGRATION_SCRIPT_LOCATION "
                "is not set; set MIGRATION_ALEMBIC_CONFIG or MIGRATION_SCRIPT_LOCATION "
                "(for a Django project, set DJANGO_SETTINGS_MODULE)"
            )
        self.config = _config(ini, toml)
        self.config_files = [path for path in (ini, toml) if path is not None]
        where = " or ".join(path.name for path in self.config_files) or "the configuration"
        setting = "MIGRATION_SCRIPT_LOCATION" if script_location else f"script_location in {where}"
        with _config_file_errors(ini):
            # Alembic reads the ini lazily: the first option read parses it, and its errors are the file's.
            if script_location is not None:
                self.config.set_main_option("script_location", script_location)
            databases = self.config.get_main_option("databases")
        if databases:
            raise ConfigError(
                f"{where} lists several databases (databases = ...: Alembic's multidb template); "
                "the runner locks and reads one database per run: run it once per database, each with its "
                "own script directory (docs/alembic.md)"
            )
        try:
            with _config_file_errors(ini, parse_only=True):
                self.script = ScriptDirectory.from_config(self.config)
            self._applied_cache: tuple[tuple[str, ...], set[str]] | None = None
        except CommandError as error:
            raise ConfigError(f"{setting}: {error}") from None
        self._require_env_py(setting)
        with project_code():
            self._load_history()
        if not self.script.revision_map.heads:
            # _version_locations is private; Alembic has no public accessor for where it looked.
            looked = ", ".join(map(str, self.script._version_locations))
            raise BrokenProject(
                f"{setting}: the script directory {self.script.dir} has no revisions (looked in {looked}); "
                "are the revision files in the image?"
            )

    def _require_env_py(self, setting: str) -> None:
        """A script directory without ``env.py`` would report "already at target" forever."""
        directory = Path(self.script.dir)
        if (directory / "env.py").is_file():
            return
        found = sorted(str(p.parent) for p in directory.glob("*/env.py")) + sorted(
            str(p.parent) for p in directory.glob("*/*/env.py")
        )
        hint = f"; did you mean {found[0]}?" if found else ""
        raise BrokenProject(f"{setting}: {directory} has no env.py, so it is not an Alembic script directory{hint}")


if TYPE_CHECKING:  # the Alembic project is a Driver (checked by mypy, not at run time)
    _as_driver: Driver = Project(settings=cast("Settings", None), cwd=Path(), url=None)
