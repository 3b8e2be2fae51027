"""Where an Alembic project keeps its revision files, read as Alembic reads its configuration, without importing it.

The no-op fast path (:mod:`runner.drivers._alembic_files`) needs the list of
revision files that Alembic's ``ScriptDirectory.from_config`` would load:
``script_location``, ``version_locations`` (split on ``path_separator``, or a TOML
list), ``package:resource`` locations, ``recursive_version_locations``, and
``[tool.alembic]`` in ``pyproject.toml`` beside or instead of ``alembic.ini``.
Each rule below names the Alembic code it follows (Alembic 1.16+: ``alembic/config.py``
and ``alembic/script/base.py``); ``tests/test_noop.py`` pins the result to
Alembic's own reading of the same projects. Any doubt is ``None``, and the full
path, with Alembic itself, decides.
"""

from __future__ import annotations

import configparser
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.drivers._alembic_config import _read_ini, config_files

if TYPE_CHECKING:
    from runner.settings import Settings

# Alembic's own file filter (alembic.script.base._only_source_rev_file).
REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
# Options whose layouts the quick read leaves to Alembic: .pyc revisions, and the multidb template
# (which the full path refuses with its own message).
_LEFT_TO_ALEMBIC = ("sourceless", "databases")
# Config._get_file_separator_char's names for path_separator.
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
# Config.get_version_locations_list and get_prepend_sys_paths_list without a path_separator.
_LEGACY_VERSION_SPLIT = re.compile(r", *|(?: +)")
_LEGACY_SYS_PATH_SPLIT = re.compile(r", *|(?: +)|\:")


class _Unsure(Exception):
    """The configuration says something the quick read does not follow: Alembic decides."""


@dataclass(frozen=True)
class Layout:
    """The revision files' places.

    Attributes:
        script_directory: the directory with ``env.py``.
        version_directories: each version location that exists, absolute, in the configuration's order.
        recursive: ``recursive_version_locations``: subdirectories hold revision files too.
    """

    script_directory: Path
    version_directories: tuple[Path, ...]
    recursive: bool

    def revision_files(self) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
        """Each directory that holds revision files (its real path), with their names and whether each is a symlink.

        As ``Script._list_py_dir`` lists them: a top-down walk (``os.walk``, which
        does not enter symlinked subdirectories) that skips ``__pycache__``, names
        sorted within a directory, subdirectories in name order and only when
        recursive; names filtered with Alembic's own pattern.

        Raises:
            OSError: a directory cannot be listed.
        """
        for location in self.version_directories:
            stack = [str(location)]
            while stack:
                root = stack.pop()
                files, subdirectories = [], []
                with os.scandir(root) as entries:
                    for entry in entries:
                        if entry.is_dir():
                            if not entry.is_symlink() and not entry.name.endswith("__pycache__"):
                                subdirectories.append(entry.name)
                        elif REVISION_FILE.match(entry.name):
                            files.append((entry.name, entry.is_symlink()))
                yield os.path.realpath(root), sorted(files)
                if self.recursive:
                    stack.extend(os.path.join(root, name) for name in sorted(subdirectories, reverse=True))


class _Options:
    """The ``[alembic]`` section over ``[tool.alembic]``, as ``Config.get_alembic_option`` reads them."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        ini, toml = config_files(settings.alembic_config, cwd)
        if ini is None and toml is None and settings.script_location is None:
            raise _Unsure
        self.ini = _read_ini(ini)
        if not self.ini.has_section("alembic"):
            if ini is not None and settings.script_location is None:
                raise _Unsure  # Alembic's "file has no '[alembic]' section" is the full path's to give
            self.ini.add_section("alembic")
        if settings.script_location is not None:  # Config.set_main_option, as the driver sets it
            self.ini.set("alembic", "script_location", settings.script_location.replace("%", "%%"))
        self.toml: dict[str, Any] = {}
        self.here = {"here": ""}
        if toml is not None:
            import tomllib  # noqa: PLC0415  (only for a pyproject.toml)

            with toml.open("rb") as file:
                found = tomllib.load(file).get("tool", {}).get("alembic", {})
            if not isinstance(found, dict):
                raise _Unsure
            self.toml, self.here = found, {"here": toml.absolute().parent.as_posix()}

    def text(self, name: str) -> str | None:
        """A string option (``Config.get_alembic_option``): the ini's, else the TOML's with ``%(here)s``."""
        if self.ini.has_option("alembic", name):
            return self.ini.get("alembic", name)
        value = self.toml.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Unsure
        return value % self.here

    def boolean(self, name: str) -> bool:
        """``Config.get_alembic_boolean_option``: the ini's ``true``, else a TOML boolean."""
        if self.ini.has_option("alembic", name):
            return self.ini.get("alembic", name) == "true"
        value = self.toml.get(name, False)
        if not isinstance(value, bool):
            raise _Unsure  # Alembic: "boolean value expected"
        return value

    def paths(self, name: str, legacy: re.Pattern[str], *separator_names: str) -> list[str] | None:
        """A list of paths: the ini's text split as Alembic splits it, else the TOML's list."""
        raw = self.ini.get("alembic", name, fallback=None)
        if raw:
            separator = next(
                (self.ini.get("alembic", s) for s in separator_names if self.ini.has_option("alembic", s)), None
            )
            if separator is None:
                return legacy.split(raw)
            if separator not in _SEPARATORS:
                raise _Unsure  # Alembic raises ValueError naming the option
            return [part.strip() for part in raw.split(_SEPARATORS[separator]) if part]
        value = self.toml.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _Unsure
        return [item % self.here for item in value]


def quick_layout(settings: Settings, cwd: Path) -> Layout | None:
    """Where the revision files are, as ``ScriptDirectory.from_config`` would find them; None when unsure.

    Args:
        settings: the run's settings (``MIGRATION_ALEMBIC_CONFIG``, ``MIGRATION_SCRIPT_LOCATION``).
        cwd: the working directory, against which relative locations are taken (Alembic's ``Path.absolute``).

    Returns:
        The layout, or None: a configuration the quick read does not follow (``sourceless``,
        ``databases``, a bad separator or TOML value, a resource it cannot find without importing
        its package), or a script directory without ``env.py``.
    """
    try:
        options = _Options(settings, cwd)
        if any(options.boolean(name) if name == "sourceless" else options.text(name) for name in _LEFT_TO_ALEMBIC):
            return None
        location = options.text("script_location")
        if not location:
            return None
        sys_path = options.paths("prepend_sys_path", _LEGACY_SYS_PATH_SPLIT, "path_separator") or []
        script_directory = _location(location, cwd, sys_path)
        listed = options.paths("version_locations", _LEGACY_VERSION_SPLIT, "path_separator", "version_path_separator")
        directories = [_location(item, cwd, sys_path) for item in listed or ()] or [script_directory / "versions"]
        recursive = options.boolean("recursive_version_locations")
    except (_Unsure, OSError, ValueError, TypeError, KeyError, ImportError, configparser.Error):
        return None  # TOMLDecodeError is a ValueError; a '%' that TOML's formatting cannot take, a TypeError
    if not (script_directory / "env.py").is_file():
        return None
    existing = tuple(path for path in directories if path.exists())  # ScriptDirectory._load_revisions
    return Layout(script_directory, existing, recursive) if existing else None


def _location(location: str, cwd: Path, sys_path: list[str]) -> Path:
    """A location as ``alembic.util.coerce_resource_to_filename`` reads it, made absolute against ``cwd``.

    A relative name with a colon is ``package:resource[:more]``; its package is
    found without being imported (see :func:`_package_directory`).

    Raises:
        _Unsure: a resource whose package cannot be found that way.
    """
    if os.path.isabs(location) or ":" not in location:
        return cwd / location
    package, *parts = location.split(":")
    return _package_directory(package, cwd, sys_path).joinpath(*parts)


def _package_directory(name: str, cwd: Path, sys_path: list[str]) -> Path:
    """The one directory of package ``name``, found as the import system finds it, running none of its code.

    ``importlib.resources.files(name)`` imports the package (and with it, often, an
    application). Here the top-level name goes through ``importlib.util.find_spec``
    with ``prepend_sys_path`` in front of ``sys.path``, as ``from_config`` puts it
    there, and each further part through ``PathFinder`` over its parent's path. A
    namespace package over several directories, or an ``__init__.py`` that mentions
    ``__path__`` (it may extend it), is unsure.

    Raises:
        _Unsure: as above, or the package is not found.
    """
    top, *rest = name.split(".")
    saved = sys.path[:]
    sys.path[:0] = [entry if os.path.isabs(entry) else str(cwd / entry) for entry in sys_path]
    try:
        spec = importlib.util.find_spec(top)
    finally:
        sys.path[:] = saved
    for depth in range(1, len(rest) + 1):
        parent = _one_directory(spec)
        if parent is None:
            raise _Unsure
        spec = importlib.machinery.PathFinder.find_spec(".".join([top, *rest[:depth]]), [str(parent)])
    directory = _one_directory(spec)
    if directory is None:
        raise _Unsure
    return directory


def _one_directory(spec: importlib.machinery.ModuleSpec | None) -> Path | None:
    """A package's single directory, if its ``__init__.py`` (if any) does not mention ``__path__``."""
    if spec is None or not spec.submodule_search_locations:
        return None
    locations = list(spec.submodule_search_locations)
    if len(locations) != 1:
        return None
    if spec.origin and spec.has_location:
        with open(spec.origin, "rb") as init:
            if b"__path__" in init.read():
                return None
    return Path(locations[0])
