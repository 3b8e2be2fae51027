"""Model registration: every table the models package defines is on ``target_metadata`` when ``env.py`` runs.

Autogenerate (``alembic revision --autogenerate``, ``alembic check``) sees only the
tables on the ``MetaData`` that ``env.py`` passes as ``target_metadata``; a model
whose module ``env.py`` never imports is invisible to it, so a new revision would
silently leave it out, and ``models_match`` would pass. pytest-alembic calls the
same check ``test_all_models_register_on_metadata``.

The check runs after ``env.py`` has run in autogenerate mode: the tables on the
metadata then are the registered ones. It imports every module of the package
the metadata comes from, one at a time, and names each table that appears on the
metadata only then, with the module that defines it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.drivers import NOT_REGISTERED

# Modules a walk never imports: running them is a program's start, not a definition.
_NEVER_IMPORTED = ("__main__", "conftest", "setup")


def unregistered(target_metadata: Any, *, skip_under: Sequence[Path]) -> tuple[str, list[str]]:
    """The tables of the models package that ``target_metadata`` lacks until each module is imported.

    Args:
        target_metadata: what ``env.py`` passed to ``context.configure()``: a ``MetaData``, or a
            list of them (Alembic accepts both).
        skip_under: directories whose modules are never imported (the script directory: ``env.py``
            and the revision files run only under Alembic).

    Returns:
        ``("passed", [])``; ``("failed", lines)``, one per table, e.g.
        ``not on target_metadata when env.py runs: table audit_log (myapp.models.audit)``;
        or ``("skipped", [reason])`` when the metadata comes from no package (``env.py`` itself,
        or a single-file module) and there is nothing to walk.
    """
    metadatas = list(target_metadata) if isinstance(target_metadata, list | tuple) else [target_metadata]
    packages = sorted({name for metadata in metadatas for name in _packages_holding(metadata, skip_under)})
    if not packages:
        return "skipped", [
            "model registration not checked: target_metadata comes from no package (env.py itself, or a "
            "single-file module), so there are no model modules to walk"
        ]
    known = {name for metadata in metadatas for name in metadata.tables}
    lines = []
    for module_name in _modules_of(packages, skip_under):
        try:
            importlib.import_module(module_name)
        except (Exception, SystemExit):  # noqa: S112  (a module that cannot be imported alone shows nothing)
            continue
        for metadata in metadatas:
            for table in sorted(set(metadata.tables) - known):
                known.add(table)
                lines.append(f"{NOT_REGISTERED} table {table} ({_defined_in(metadata.tables[table], module_name)})")
    return ("failed", lines) if lines else ("passed", [])


def _packages_holding(metadata: Any, skip_under: Sequence[Path]) -> set[str]:
    """The top-level packages of the modules that hold ``metadata``, or a declarative base whose ``metadata`` it is.

    A module outside any package (``models.py`` beside ``alembic.ini``) has no package; nor
    does ``env.py``, which Alembic loads under the script directory.
    """
    found = set()
    for name, module in list(sys.modules.items()):
        if module is None or _under(module, skip_under):
            continue
        try:
            values: Iterable[Any] = list(vars(module).values())
        except TypeError:
            continue
        if any(value is metadata or _attribute(value, "metadata") is metadata for value in values):
            top = sys.modules.get(name.partition(".")[0])
            if top is not None and hasattr(top, "__path__"):
                found.add(top.__name__)
    return found


def _modules_of(packages: Sequence[str], skip_under: Sequence[Path]) -> list[str]:
    """Every module of ``packages``, subpackages included, sorted; those under ``skip_under`` left out."""
    names = []
    for package_name in packages:
        package = sys.modules[package_name]
        for info in pkgutil.walk_packages(package.__path__, package_name + ".", onerror=lambda _name: None):
            last = info.name.rpartition(".")[2]
            directory = getattr(info.module_finder, "path", None)  # a FileFinder's: the directory it reads
            if last in _NEVER_IMPORTED or (directory and _path_under(Path(directory), skip_under)):
                continue
            names.append(info.name)
    return sorted(names)


def _defined_in(table: Any, imported: str) -> str:
    """The module that defines ``table``: a mapped class's module, else the module whose import added it."""
    for module in list(sys.modules.values()):
        for value in list(vars(module).values()) if module is not None else ():
            if _attribute(value, "__table__") is table:
                return str(value.__module__)
            if value is table:
                return str(module.__name__)
    return imported


def _attribute(value: Any, name: str) -> Any:
    """A class's attribute (a declarative base's ``metadata``, a model's ``__table__``); None for anything else.

    Only classes are asked: an object's ``__getattr__`` may do anything (``ctypes.cdll`` loads a library).
    """
    if not isinstance(value, type):
        return None
    try:
        return getattr(value, name, None)
    except Exception:  # a metaclass's __getattr__ that raises: not a model
        return None


def _under(module: ModuleType, directories: Sequence[Path]) -> bool:
    file = getattr(module, "__file__", None)
    return isinstance(file, str) and _path_under(Path(file), directories)


def _path_under(path: Path, directories: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(directory.resolve()) for directory in directories)
