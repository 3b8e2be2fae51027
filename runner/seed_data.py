"""``verify``'s revision data: rows put in place just before a revision, so that it meets real data.

A revision that adds ``NOT NULL``, a unique constraint or a foreign key passes on an
empty scratch database and fails in production, where rows break it. With
``MIGRATION_VERIFY_DATA_DIR`` (``--data-dir``), ``verify``'s upgrade runs, just before
revision ``REV``:

- ``REV.sql``: SQL statements, split as :func:`sqlparse.split` splits them;
- ``REV.py``: a file defining ``seed(connection)``, called with the SQLAlchemy ``Connection``.

``REV`` is the id the reports use (Alembic: ``ae1027a6acf``; Django: ``shop.0004_fill``).
pytest-alembic calls the same idea ``before_revision_data``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Collection
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from runner import database
from runner.errors import ConfigError, MigrationFailed

SUFFIXES = (".sql", ".py")


def read_directory(directory: Path, known: Collection[str]) -> dict[str, Path]:
    """The data files of ``directory`` by revision id, checked before anything runs.

    Args:
        directory: ``MIGRATION_VERIFY_DATA_DIR``, relative to the working directory or absolute.
        known: the project's revision ids.

    Returns:
        ``{revision: path}``; files of other suffixes (a README) are not data.

    Raises:
        ConfigError: the directory is missing or unreadable; a file names no revision of the project
            (a typo would silently seed nothing); one revision has both a ``.sql`` and a ``.py``; a
            ``.py`` defines no ``seed(connection)``.
    """
    setting = "MIGRATION_VERIFY_DATA_DIR"
    try:
        files = sorted(path for path in directory.iterdir() if path.suffix in SUFFIXES and path.is_file())
    except OSError as error:
        raise ConfigError(
            f"{setting} {_shown(str(directory))} cannot be read ({error.strerror or error}); "
            "name a directory of REV.sql or REV.py files; nothing was changed"
        ) from None
    found: dict[str, Path] = {}
    for path in files:
        revision = path.stem
        if revision not in known:
            example = min(known, default="none")
            raise ConfigError(
                f"{setting} holds {_shown(path.name)}, and this project has no revision {_shown(revision)} "
                f"(files are named like {example}.sql); nothing was changed"
            )
        if revision in found:
            raise ConfigError(
                f"{setting} holds both {_shown(found[revision].name)} and {_shown(path.name)} for revision "
                f"{_shown(revision)}; "
                "keep one; nothing was changed"
            )
        if path.suffix == ".py" and not _defines_seed(path):
            raise ConfigError(
                f"{setting}: {_shown(path.name)} defines no seed(connection) function; nothing was changed"
            )
        found[revision] = path
    return found


def _shown(name: str) -> str:
    """A file name as one line shows it: quoted with its escapes when it holds a newline or another control."""
    return name if name.isprintable() else repr(name)


def _defines_seed(path: Path) -> bool:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == "seed" for node in tree.body)


def put_in_place(connection: Connection, revision: str, path: Path) -> None:
    """Run ``path``'s data on ``connection`` in one transaction (a savepoint in one already open), committed.

    Raises:
        MigrationFailed: a statement or ``seed()`` failed (rolled back); the message names the file.
    """
    # Inside env.py's run the connection may be shared and in Alembic's transaction: a savepoint there, else our own.
    owned = not connection.in_transaction()
    transaction = connection.begin() if owned else connection.begin_nested()
    try:
        if path.suffix == ".sql":
            import sqlparse  # noqa: PLC0415  (verify only)

            for statement in sqlparse.split(path.read_text(encoding="utf-8")):
                if sqlparse.format(statement, strip_comments=True).strip().rstrip(";").strip():
                    database.execute_statement(connection, statement)
        else:
            spec = importlib.util.spec_from_file_location(f"migration_runner_data_{abs(hash(path))}", path)
            assert spec is not None and spec.loader is not None  # noqa: S101  (a .py file always has a loader)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.seed(connection)
        transaction.commit()
    except Exception as error:
        if transaction.is_active:
            transaction.rollback()
        is_database = isinstance(error, sa_exc.DBAPIError)
        message = database.error_message(error) if is_database else f"{type(error).__name__}: {error}"
        raise MigrationFailed(
            f"its data {path.name} failed before it: {message}",
            revision=revision,
            sqlstate=database.sqlstate(error),
        ) from None
