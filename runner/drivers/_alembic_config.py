"""An Alembic project's configuration files, found and read as ``alembic`` finds and reads them.

``alembic.ini`` and ``pyproject.toml`` (``[tool.alembic]``), ``MIGRATION_ALEMBIC_CONFIG``
playing the part of ``-c``; the ini's ``sqlalchemy.url``; and the one-line errors
of a file Alembic cannot parse.
"""

from __future__ import annotations

import configparser
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import (
    ConfigError,
)

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from alembic.config import Config


def config_files(alembic_config: Path | None, cwd: Path) -> tuple[Path | None, Path | None]:
    """The ini file and ``pyproject.toml`` of a project, found as ``alembic`` finds them.

    Alembic's command line (``alembic.config.CommandLine``) reads ``alembic.ini``
    and ``pyproject.toml`` from the working directory; ``-c`` may name either.
    ``MIGRATION_ALEMBIC_CONFIG`` plays the part of ``-c``. A ``pyproject.toml``
    counts only when it has a ``[tool.alembic]`` table.

    Args:
        alembic_config: ``MIGRATION_ALEMBIC_CONFIG``, relative to ``cwd``, or ``None``.
        cwd: the working directory.

    Returns:
        ``(ini, pyproject)``, each ``None`` when absent.

    Raises:
        ConfigError: ``alembic_config`` names a file that does not exist.
    """
    ini, toml = cwd / "alembic.ini", cwd / "pyproject.toml"
    if alembic_config is not None:
        named = cwd / alembic_config
        if not named.is_file():
            raise ConfigError(f"MIGRATION_ALEMBIC_CONFIG={str(alembic_config)!r}: no such file")
        if named.name == "pyproject.toml":
            toml = named
        else:
            ini = named
    return (ini if ini.is_file() else None), (toml if _has_tool_alembic(toml) else None)


def _has_tool_alembic(path: Path) -> bool:
    if not path.is_file():
        return False
    import tomllib  # noqa: PLC0415  (only when there is a pyproject.toml)

    try:
        with path.open("rb") as file:
            return "alembic" in tomllib.load(file).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not a readable TOML file ({error})") from None


def _config(ini: Path | None, toml: Path | None) -> Config:
    """Alembic's own ``Config`` over both files, as ``alembic`` builds it."""
    from alembic.config import Config  # noqa: PLC0415

    return Config(file_=str(ini) if ini else None, toml_file=str(toml) if toml else None)


def ini_database_url(alembic_config: Path | None, cwd: Path) -> tuple[str, str] | None:
    """The ``sqlalchemy.url`` of the project's ini file, as ``alembic -c FILE`` would read it.

    Alembic's own ``Config.get_main_option`` (so ``%(here)s`` and ``%%`` mean
    what they mean to Alembic). ``pyproject.toml`` holds no URL (Alembic docs,
    "Using pyproject.toml for configuration").

    Returns:
        ``(the URL text, the ini file's name)``, or ``None`` when there is none.

    Raises:
        ConfigError: the file is not a readable ini file.
    """
    ini, _ = config_files(alembic_config, cwd)
    if ini is None:
        return None
    try:
        parser = _read_ini(ini)
        if not parser.has_section("alembic"):
            raise configparser.NoSectionError("alembic")
        found = parser.get("alembic", "sqlalchemy.url", fallback=None)
    except (configparser.Error, OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{ini}: not a readable Alembic ini file ({type(error).__name__}: {error})") from None
    return (found, ini.name) if found else None


@contextlib.contextmanager
def _config_file_errors(ini: Path | None, *, parse_only: bool = False) -> Iterator[None]:
    """Turn an unreadable ini file (Alembic's ``CommandError``, configparser's and decoding errors) into 78.

    Args:
        ini: the ini file, for the message.
        parse_only: leave Alembic's ``CommandError`` to the caller (it names a setting, not the file's form).

    Raises:
        ConfigError: naming the file and what is wrong with it.
    """
    from alembic.util.exc import CommandError  # noqa: PLC0415

    caught: tuple[type[Exception], ...] = (configparser.Error, UnicodeDecodeError)
    if not parse_only:
        caught = (*caught, CommandError)
    try:
        yield
    except caught as error:
        name = ini if ini is not None else "the Alembic configuration"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"{name}: not a readable Alembic ini file ({type(error).__name__}: {detail}); it needs an [alembic] "
            "section with script_location, in UTF-8, each option once (%% for a literal %)"
        ) from None


def _read_ini(ini: Path | None) -> configparser.ConfigParser:
    """The ini file as Alembic's ``Config.file_config`` reads it (``%(here)s`` is its directory), without Alembic.

    Reading it costs nothing next to importing Alembic, and a no-op run needs no more of it.
    """
    here = ini.absolute().parent.as_posix() if ini else Path().as_posix()
    parser = configparser.ConfigParser({"here": here})
    if ini is not None:
        parser.read(ini, encoding="locale")  # as alembic.util.compat.read_config_parser
    return parser
