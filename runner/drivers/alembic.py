"""The Alembic driver: a project's config and script directory, pending revisions, upgrade.

It runs the project's own, unmodified ``env.py``. Three defaults are passed
into that env.py's ``context.configure()`` unless it sets them itself:
``transaction_per_migration=True`` (so a failure at revision k leaves 1..k-1
applied and recorded), ``version_table`` and ``version_table_schema``; and an
``on_version_apply`` callback is added to the env.py's own, so that the
runner's ledger row commits in the revision's transaction.

Project code (env.py, revision files) runs with ``sys.stdout`` pointed at
stderr, so its ``print()`` never mixes with a document on stdout, and
whatever it raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is a
failed revision or a broken project, never the runner's own exit.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import io
import itertools
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner import logs, stopping
from runner.drivers import (
    Applied,
    CallbackFailed,
    Driver,
    MigrateOptions,
    Rendered,
    Step,
    VersionTable,
    _alembic_env,
    own,
    project_code,
    where,
)
from runner.errors import (
    BrokenProject,
    BrokenRevisionFiles,
    ConfigError,
    ConnectionLost,
    MigrationFailed,
    RunnerError,
    Stopped,
)

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationStep
    from alembic.script import Script
    from sqlalchemy.engine import URL, Connection

    from runner import urls
    from runner.settings import Settings
    from runner.trace import Tracer


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


# Alembic's own file filter (alembic.script.base._only_source_rev_file).
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
# Options that change where or how Alembic finds revision files: the quick read leaves them to Alembic.
_LOCATION_OPTIONS = ("version_locations", "recursive_version_locations", "sourceless", "databases")
# Code that could set a module's names in ways a reading of its assignments cannot see. Plain
# substrings, so a comment that mentions one only costs the full path, never a wrong answer.
_DYNAMIC = (
    "globals(",
    "setattr(",
    "exec(",
    "eval(",
    "vars(",
    "__import__",
    "__dict__",
    "sys.modules",
    "import *",
    "global ",
    "nonlocal ",
)
_IDENTIFIERS = ("revision", "down_revision", "depends_on")


def quick_heads(
    settings: Settings, cwd: Path, sources: dict[str, tuple[str, bytes]] | None = None
) -> tuple[str, ...] | None:
    """The heads, read from the revision files' text without importing Alembic or the files; None when unsure.

    Sure means: the configuration is one ini file (or MIGRATION_SCRIPT_LOCATION
    alone) without ``version_locations``, ``recursive_version_locations``,
    ``sourceless`` or ``databases``; the script directory has ``env.py``; and
    every revision file (Alembic's own filter over ``versions/``) assigns
    ``revision``, ``down_revision`` and, if at all, ``depends_on`` exactly once,
    at module level, to literals, with no code that could set them otherwise. A
    history that does not check out (a duplicate id, a dangling reference, a
    cycle) is None too. None sends the run down the full path, where Alembic
    itself decides. Heads are the revisions no ``down_revision`` names
    (``RevisionMap.heads``); ``depends_on`` does not make or unmake a head.

    Args:
        settings: the run's settings.
        cwd: the working directory.
        sources: if given, filled with each revision's file (its path as text) and bytes (for :mod:`runner.drift`).

    Returns:
        The heads, sorted; or None.
    """
    try:
        directory = _quick_script_directory(settings, cwd)
        if directory is None:
            return None
        names, texts, contents = _revision_texts(directory / "versions")
    except (OSError, ValueError, configparser.Error):  # UnicodeDecodeError is a ValueError
        return None
    # One look over all the files at once for what would leave a file unsure: usually nothing.
    everything = "\n".join(texts)
    for marker in _DYNAMIC:
        if marker in everything:
            return None
    downs = _read_history(texts, screened=_DEFINES_IDENTIFIER.search(everything) is None)
    if not downs:
        return None
    if sources is not None:  # downs is in the files' order
        versions = f"{directory / 'versions'}{os.sep}"
        for revision, name, data in zip(downs, names, contents, strict=True):
            sources[revision] = versions + name, data
    named = {down for parents, _ in downs.values() for down in parents}
    return tuple(sorted(set(downs) - named))


def _read_history(texts: list[str], *, screened: bool) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None:
    """Each revision's ``(down_revisions, depends_on)``, if every file reads plainly and the history is a DAG."""
    found: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    try:
        for text in texts:
            identifiers = _literal_identifiers(text, screened=screened)
            if identifiers is None or identifiers[0] in found:
                return None
            revision, down, depends = identifiers
            found[revision] = down, depends
    except (ValueError, SyntaxError):
        return None
    if not _is_a_dag({revision: down + depends for revision, (down, depends) in found.items()}):
        return None
    return found


def quick_current(connection: Any, family: str, settings: Settings) -> tuple[str, ...] | None:
    """The version table's revisions, read on a DB-API connection (:mod:`runner.noop`); None when unsure.

    Raises:
        Exception: whatever the driver raises (a missing table included): the caller takes the full path.
    """
    table, schema = settings.version_table, settings.version_table_schema
    if family == "mysql":
        quoted = ".".join(f"`{part.replace('`', '``')}`" for part in (schema, table) if part)
    elif family == "sqlite" and schema:
        return None
    else:
        quoted = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table) if part)
    cursor = connection.cursor()
    try:
        cursor.execute(f"SELECT version_num FROM {quoted}")  # noqa: S608  (quoted identifiers from our settings)
        return tuple(str(row[0]) for row in cursor.fetchall())
    finally:
        cursor.close()


def _quick_script_directory(settings: Settings, cwd: Path) -> Path | None:
    """The script directory, read from the ini as Alembic's ``Config`` reads it; None when unsure."""
    ini, toml = config_files(settings.alembic_config, cwd)
    if toml is not None or (ini is None and settings.script_location is None):
        return None
    parser = _read_ini(ini)
    if not parser.has_section("alembic"):
        parser.add_section("alembic")
    if settings.script_location is not None:
        parser.set("alembic", "script_location", settings.script_location.replace("%", "%%"))
    if any(parser.has_option("alembic", option) for option in _LOCATION_OPTIONS):
        return None
    location = parser.get("alembic", "script_location", fallback=None)
    if not location or (":" in location and not os.path.isabs(location)):  # a package:resource location
        return None
    directory = Path(location)
    if not (directory / "env.py").is_file() or not (directory / "versions").is_dir():
        return None
    return directory


# Bytes per read(2) of a revision file: most fit in one.
_READ_BYTES = 65536


def _revision_texts(versions: Path) -> tuple[list[str], list[str], list[bytes]]:
    """The name, text and bytes of each revision file (Alembic's own filter over ``versions/``), in name order.

    Each text starts with a newline that is not in the file.

    The leading newline lets the line-start patterns look for a newline, which is
    faster than ``re.MULTILINE``'s ``^``. Plain ``os.read`` on a directory
    descriptor: with a thousand files, ``open()``'s file objects cost as much as the reading.

    Raises:
        OSError: a file cannot be read.
        UnicodeDecodeError: a file is not UTF-8.
    """
    directory = os.open(versions, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if _REVISION_FILE.match(entry.name) and entry.is_file())
        texts, contents = [], []
        for name in names:
            fd = os.open(name, os.O_RDONLY, dir_fd=directory)
            try:
                chunks = [os.read(fd, _READ_BYTES)]
                while chunks[-1]:
                    chunks.append(os.read(fd, _READ_BYTES))
            finally:
                os.close(fd)
            contents.append(b"".join(chunks))
            texts.append("\n" + contents[-1].decode("utf-8"))
        return names, texts, contents
    finally:
        os.close(directory)


def _literal_identifiers(text: str, *, screened: bool = False) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """``(revision, down_revisions, depends_on)`` of a revision file, if it sets them plainly; else None.

    Only what runs at import can set a module's names: its top-level statements.
    Function and class bodies do not run, so when everything after the first
    top-level ``def``/``class`` is more of them, only the text before it is parsed.

    Args:
        text: the file's text after a newline (:func:`_revision_texts`).
        screened: the caller has found no :data:`_DYNAMIC` marker and no
            ``def revision``-like definition anywhere in the text.

    Raises:
        SyntaxError, ValueError: the text does not parse, or a value is not a literal.
    """
    if not screened and any(marker in text for marker in _DYNAMIC):
        return None
    first = _FIRST_DEFINITION.search(text)
    rest = text[first.start() :] if first else ""
    if not screened and _DEFINES_IDENTIFIER.search(rest):
        return None
    values, tree = None, None
    if rest and _ONLY_DEFINITIONS.search(rest) is None:
        head = text[: len(text) - len(rest)]
        values = _plain_head(head)  # the usual file: a few regular expressions, a third of the parser's time
        if values is None:
            with contextlib.suppress(SyntaxError):  # the cut fell inside a string: read it all
                tree = ast.parse(head)
    if values is None:
        values = _top_level_values(tree or ast.parse(text))
    if values is None or "revision" not in values or "down_revision" not in values:
        return None
    revision, down, depends = values["revision"], _ids(values["down_revision"]), _ids(values.get("depends_on"))
    if not isinstance(revision, str) or not revision or down is None or depends is None:
        return None
    return revision, down, depends


_STRING = r"'[^'\\\n]*'|\"[^\"\\\n]*\""
_LITERAL = rf"None|{_STRING}|[(\[][ \t]*(?:(?:{_STRING})[ \t]*,[ \t]*)*(?:{_STRING})?[ \t]*,?[ \t]*[)\]]"
_COMMENT = r"[ \t]*(?:#[^\n]*)?"
# A name an import binds must not be one of the identifiers (the parser decides those files).
_NOT_IDENTIFIER = r"(?!(?:revision|down_revision|depends_on)\b)"
_IMPORTED = rf"{_NOT_IDENTIFIER}[\w.]+(?: as {_NOT_IDENTIFIER}\w+)?"
_FROM_IMPORTED = rf"{_NOT_IDENTIFIER}\w+(?: as {_NOT_IDENTIFIER}\w+)?"
# One line of a plain module head: blank, a comment, a plain import, or an assignment of a plain literal.
_PLAIN_LINE = (
    rf"{_COMMENT}"
    rf"|import {_IMPORTED}(?:[ \t]*,[ \t]*{_IMPORTED})*{_COMMENT}"
    rf"|from \.*[\w.]* import {_FROM_IMPORTED}(?:[ \t]*,[ \t]*{_FROM_IMPORTED})*{_COMMENT}"
    rf"|[A-Za-z_]\w*[ \t]*(?::[ \t]*[^=\n#]+?)?[ \t]*=[ \t]*(?:{_LITERAL}){_COMMENT}"
)
# A whole head of such lines, matched at once: a loop over the lines costs more than the reading.
_PLAIN_HEAD = re.compile(rf"(?:(?:{_PLAIN_LINE})\n)*(?:{_PLAIN_LINE})")
_ASSIGNMENT = re.compile(
    rf"^(?P<name>revision|down_revision|depends_on)[ \t]*(?::[ \t]*[^=\n#]+?)?[ \t]*=[ \t]*(?P<value>{_LITERAL})",
    re.MULTILINE,
)
# Line breaks other than \n (str.splitlines and Python's tokenizer know more): left to the parser.
_OTHER_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_STRINGS = re.compile(_STRING)


def _plain_head(head: str) -> dict[str, Any] | None:
    """The identifiers' values when ``head`` is only a docstring, comments, plain imports and plain literals.

    None when any line is something else: the parser (:func:`_top_level_values`) then decides.
    ``tests/test_noop.py`` pins both readings to the same values.
    """
    text = head.replace("\r\n", "\n").lstrip("\n")  # blank lines only: an indented first line is an error
    if text.startswith('"""'):
        end = text.find('"""', 3)
        if end < 0 or "\\" in text[:end]:
            return None
        text = text[end + 3 :]
    if _OTHER_BREAKS.search(text) or not _PLAIN_HEAD.fullmatch(text):
        return None
    values: dict[str, Any] = {}
    # Every line is plain, so a line that starts with an identifier is its one assignment.
    for match in _ASSIGNMENT.finditer(text):
        name, raw = match.group("name"), match.group("value")
        if name in values:
            return None
        if raw == "None":
            values[name] = None
        elif raw[0] in "'\"":
            values[name] = raw[1:-1]
        else:
            items = [found[1:-1] for found in _STRINGS.findall(raw)]
            values[name] = tuple(items) if raw[0] == "(" else items  # as ast.literal_eval gives them
    return values


def _top_level_values(tree: ast.Module) -> dict[str, Any] | None:
    """The literal values of the identifiers' one plain top-level assignment each; None if bound otherwise."""
    values: dict[str, Any] = {}
    for statement in tree.body:
        assigned: tuple[ast.expr, ast.expr] | None = None
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            assigned = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            assigned = statement.target, statement.value
        if assigned and isinstance(assigned[0], ast.Name) and assigned[0].id in _IDENTIFIERS:
            if assigned[0].id in values:
                return None
            values[assigned[0].id] = ast.literal_eval(assigned[1])
        elif _may_bind_identifiers(statement):
            return None
    return values


# Line starts, as "\n" (the text starts with one): a definition or decorator at column 0.
_FIRST_DEFINITION = re.compile(r"\n(?:async\s+def|def|class|@)\b")
# A line at column 0 after the first definition that is not another definition, a decorator or a comment.
_ONLY_DEFINITIONS = re.compile(r"\n(?!async\s+def\b|def\b|class\b|@|#|\s|\Z)")
_DEFINES_IDENTIFIER = re.compile(r"\n(?:async\s+def|def|class)\s+(?:revision|down_revision|depends_on)\b")


def _may_bind_identifiers(statement: ast.stmt) -> bool:
    """Whether a top-level statement other than a plain assignment could bind revision/down_revision/depends_on."""
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return any((alias.asname or alias.name).split(".")[0] in _IDENTIFIERS for alias in statement.names)
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return False  # the docstring
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        if statement.name in _IDENTIFIERS:
            return True
        parts: list[ast.AST] = list(statement.decorator_list)
        if not isinstance(statement, ast.ClassDef):
            parts += [*statement.args.defaults, *(d for d in statement.args.kw_defaults if d is not None)]
    else:
        parts = [statement]
    return any(
        (isinstance(node, ast.Name) and node.id in _IDENTIFIERS and not isinstance(node.ctx, ast.Load))
        or (isinstance(node, ast.alias) and (node.asname or node.name).split(".")[0] in _IDENTIFIERS)
        for part in parts
        for node in ast.walk(part)
    )


def _ids(value: Any) -> tuple[str, ...] | None:
    """None, a str, or a tuple/list of str, as Alembic's ``to_tuple`` takes them; anything else None."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, tuple | list) and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    return None


def _is_a_dag(needs: dict[str, tuple[str, ...]]) -> bool:
    """Every named revision exists and nothing depends on itself through others (Kahn's algorithm)."""
    if any(parent not in needs for parents in needs.values() for parent in parents):
        return False  # a dangling down_revision, or a depends_on naming a branch label: Alembic decides
    waiting = {revision: len(set(parents)) for revision, parents in needs.items()}
    children: dict[str, list[str]] = {}
    for revision, parents in needs.items():
        for parent in set(parents):
            children.setdefault(parent, []).append(revision)
    ready = [revision for revision, count in waiting.items() if count == 0]
    seen = 0
    while ready:
        seen += 1
        for child in children.get(ready.pop(), []):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return seen == len(needs)


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


_RELATIVE_UP = re.compile(r"^\+\d+$")


class Project:
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
                "own script directory (README, 'Your Alembic project')"
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

    def _load_history(self) -> None:
        """Import every revision file now, so a broken one is named before any connection.

        Raises:
            BrokenRevisionFiles: a file fails to import, a ``down_revision`` points
                nowhere, or the revisions form a cycle.
        """
        from alembic.script.revision import RevisionError  # noqa: PLC0415

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # Alembic warns, then raises KeyError, for a dangling down_revision
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
            # Raised inside Alembic (a ``revision = None``) or pathlib (a symlink loop): the frames name no
            # revision file, so name the files whose ``revision`` is no string, or the directory.
            where = in_versions[-1] if in_versions else (self._files_without_a_revision_id() or self.script.dir)
            raise BrokenRevisionFiles(f"revision file {where}: {type(error).__name__}: {error}") from None
        # Alembic keeps one of two files with the same revision id, by the order the file system lists them.
        if any("is present more than once" in str(warning.message) for warning in caught):
            raise BrokenRevisionFiles(self._explain_duplicates())

    def _files_without_a_revision_id(self) -> str:
        """The revision files whose module-level ``revision`` is not assigned a string literal, comma-separated."""
        import ast  # noqa: PLC0415  (only on this error path)

        found = []
        for location in self.script._version_locations:  # private: Alembic has no public accessor
            for path in sorted(Path(location).glob("*.py")):
                try:
                    tree = ast.parse(path.read_bytes())
                except (OSError, RuntimeError, SyntaxError, ValueError):
                    continue
                values = [
                    node.value
                    for node in tree.body
                    if isinstance(node, ast.Assign | ast.AnnAssign)
                    and any(isinstance(t, ast.Name) and t.id == "revision" for t in _targets_of(node))
                ]
                if values and not all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values):
                    found.append(str(path))
        return ", ".join(found)

    def _explain_duplicates(self) -> str:
        """Name each revision id that several files define, with the files."""
        by_id: dict[str, list[str]] = {}
        for script in self.script._load_revisions():  # private: the files, without the map that keeps one of each
            by_id.setdefault(script.revision, []).append(script.path)
        twice = {revision: paths for revision, paths in by_id.items() if len(paths) > 1}
        named = "; ".join(f"{revision!r} in {' and '.join(sorted(paths))}" for revision, paths in sorted(twice.items()))
        return f"revision history: several files define one revision id: {named}; give each file its own id"

    def _explain_history(self, error: BaseException) -> str:
        """Name the files behind a dangling ``down_revision`` or a cycle."""
        from alembic.script.revision import RevisionError  # noqa: PLC0415
        from alembic.util import to_tuple  # noqa: PLC0415

        try:
            scripts = list(self.script._load_revisions())  # each file once more, no map
        except RevisionError:  # a down_revision naming its own revision fails each file's load: name them by text
            involved = set(getattr(error, "revisions", ()) or ())
            files = sorted(
                str(path)
                for location in self.script._version_locations
                for path in Path(location).glob("*.py")
                if any(
                    re.search(
                        rf"""^revision\s*(:[^=]*)?=\s*['"]{re.escape(r)}['"]""", path.read_text(errors="replace"), re.M
                    )
                    for r in involved
                )
            )
            return f"revision history: {error}; files: {', '.join(files) or self.script.dir}"
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

    def returned_early(self, revisions: Sequence[str], state: str) -> str:
        """env.py returned with ``revisions`` still ``state``: it did not run them (an offline-only env.py, say)."""
        verb = "is" if len(revisions) == 1 else "are"
        return (
            f"env.py returned, but {', '.join(revisions)} {verb} still {state}; "
            "does env.py call context.run_migrations() in online mode?"
        )

    def database_url(self) -> None:
        """None: an Alembic project's URL (the ini's ``sqlalchemy.url``) is already in the settings chain."""
        return None

    def summary(self, current: Sequence[str]) -> tuple[str, ...]:
        """The version table's revisions, as they are."""
        return tuple(current)

    def heads(self) -> tuple[str, ...]:
        """The head revisions of the script directory, sorted.

        Raises:
            ConfigError: the revision files do not form a valid history.

        """
        with _history_errors():
            return tuple(sorted(self.script.get_heads()))

    @staticmethod
    def is_relative(target: str) -> bool:
        """``+N``: N revisions past the database's current one, as ``alembic upgrade +2`` takes it."""
        return _RELATIVE_UP.match(target) is not None

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """Resolve a target (``heads``, ``head``, a revision id or prefix) to revision ids.

        A relative target (``+N``) resolves to none here: it depends on the
        database, so :meth:`pending` resolves it.

        Raises:
            ConfigError: an unknown target, or ``head`` while there are several heads.

        """
        if self.is_relative(target):
            return ()
        with _history_errors(target):
            scripts = self.script.revision_map.get_revisions(target)
        if None in scripts:  # Alembic's answer for ``-N`` past base; read as "base" it would pass anything
            raise ConfigError(
                f"MIGRATION_TARGET={target!r} goes past base: the history is not that long below its head"
            )
        return tuple(sorted(s.revision for s in scripts if s is not None and not isinstance(s, str)))

    def unknown(self, current: Sequence[str]) -> list[str]:
        """The revisions in ``current`` that the script directory does not contain."""
        from alembic.script.revision import RevisionError  # noqa: PLC0415

        missing = []
        for revision in current:
            try:
                self.script.revision_map.get_revision(revision)
            except RevisionError:
                missing.append(revision)
        return missing

    def past_target(self, current: Sequence[str], target: str) -> bool:
        """Whether the database is newer than ``target``: reaching it would take a downgrade.

        True when a target revision is an ancestor of, but not one of, the
        current revisions, or when the target is ``base`` and the database is not.

        Raises:
            ConfigError: the target cannot be resolved.
        """
        wanted = self.target_revisions(target)
        if not current or self.is_relative(target):
            return False
        if not wanted:
            return True  # "base"
        with _history_errors(target):
            applied = {s.revision for s in self.script.iterate_revisions(tuple(current), "base")}
        return any(revision in applied and revision not in current for revision in wanted)

    def is_applied(self, current: Sequence[str], revision: str) -> bool:
        """Whether ``revision`` is one of ``current`` or an ancestor of one (an unknown one is not)."""
        if not current or self.unknown([revision]):
            return False
        return revision in self._applied(tuple(current))

    def _applied(self, current: tuple[str, ...]) -> set[str]:
        """``current`` and its ancestors; the last answer is kept (the post-upgrade check asks once per step)."""
        cached = self._applied_cache
        if cached is not None and cached[0] == current:
            return cached[1]
        with _history_errors():
            applied = {s.revision for s in self.script.iterate_revisions(current, "base")}
        self._applied_cache = (current, applied)
        return applied

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it (``MigrationContext.stamp``, Alembic API).

        Raises:
            ConfigError: the revision cannot be resolved.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        with _history_errors(revision), connection.begin():
            context.stamp(self.script, revision)

    def source(self, revision: str) -> Path | None:
        """The revision's file, for its checksum (:mod:`runner.checksum`); None for an unknown one or a .pyc."""
        script = None if self.unknown([revision]) else self.script.get_revision(revision)
        path = Path(script.path) if script is not None else None
        return path if path is not None and path.suffix == ".py" else None

    def applied_revisions(self, current: Sequence[str]) -> list[str]:
        """Every revision ``current`` implies: the current ones and their ancestors, sorted."""
        return sorted(self._applied(tuple(current))) if current and not self.unknown(current) else []

    def unstamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as reverted without running it: the version table gets its ``down_revision`` ids.

        ``MigrationContext.stamp`` (Alembic API) to the current heads with
        ``revision`` replaced by its down revisions, as ``alembic stamp`` takes several.

        Raises:
            ConfigError: the revision cannot be resolved.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        with _history_errors(revision):
            current = set(context.get_current_heads())
            script = self.script.get_revision(revision)
            below = set(_down_revisions(script)) if script else set()
            heads = tuple(sorted((current - {revision}) | below))
        if connection.in_transaction():
            connection.rollback()
        with _history_errors(revision), connection.begin():
            context.stamp(self.script, cast(str, heads) if heads else "base")

    def pending(self, current: Sequence[str], target: str) -> list[Step]:
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
            if wanted <= applied and not self.is_relative(target):
                return []
            scripts = [step.revision for step in self.script._upgrade_revs(target, _heads_arg(current))]
        return [Step(script.revision, script.doc) for script in scripts]

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """Read the revisions recorded in the version table, read-only.

        Uses ``MigrationContext.get_current_heads()`` (Alembic API), which returns
        an empty tuple when the version table does not exist yet. Ends the
        transaction it opened, so the connection can be handed on.

        Returns:
            The revision ids, sorted.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        try:
            return tuple(sorted(context.get_current_heads()))
        finally:
            if connection.in_transaction():
                connection.rollback()

    def reverting(self, current: Sequence[str], target: str) -> list[Step]:
        """The revisions a downgrade from ``current`` to ``target`` reverts, newest first.

        Targets as ``alembic downgrade`` takes them: a revision id or prefix,
        ``-N`` or ``base``. Uses ``ScriptDirectory._downgrade_revs``, the private
        method ``alembic downgrade`` itself plans with (no public API lists the
        steps; ``tests/test_downgrade.py`` pins it).

        Raises:
            ConfigError: the target is unknown, or is not below the database (``heads``, a newer revision).
        """
        if target in ("heads", "head") or self.is_relative(target):
            raise ConfigError(
                f"MIGRATION_TARGET={target!r} is not below the database: downgrade takes a revision id, -N or base"
            )
        with _history_errors(target):
            steps = self.script._downgrade_revs(target, _heads_arg(current))
        return [Step(step.revision.revision, step.revision.doc, _down_revisions(step.revision)) for step in steps]

    def irreversible(self, steps: Sequence[Step]) -> list[tuple[str, str]]:
        """The revisions whose ``downgrade()`` is missing, does nothing (``pass``, a docstring) or only raises."""
        found = []
        for step in steps:
            script = self.script.get_revision(step.revision)
            module = script.module if script else None
            why = _why_irreversible(getattr(module, "downgrade", None), getattr(module, "upgrade", None))
            if why:
                found.append((step.revision, why))
        return found

    def render(self, current: Sequence[str], target: str, url: URL) -> list[Rendered]:
        """Each pending revision's SQL from Alembic's offline mode (``alembic upgrade CURRENT:TARGET --sql``).

        The project's env.py runs its offline branch (``context.is_offline_mode()``),
        starting at the database's revisions. The output is cut per revision at
        the points where Alembic asks for the next step. A revision that raises
        offline (it reads data through ``op.get_bind()``, say) is reported as not
        rendered, and the rendering goes on after it as if it had run.

        Raises:
            ConfigError: the target cannot be resolved.
        """
        from runner import database  # noqa: PLC0415

        pending = self.pending(current, target)
        mysql = database.family(url) == "mysql"
        done: dict[str, Rendered] = {}
        start = tuple(current)
        self._use_url(url)
        while len(done) < len(pending):
            marks, text, failure = self._render_from(start, target)
            for (revision, begin), (_, end) in itertools.pairwise(marks):
                if revision is not None:
                    sql = text[begin:end]
                    done[revision] = Rendered(revision, sql, None, self._transactional_step(revision, mysql))
            if failure is None:
                break
            first_line = (str(failure).splitlines() or [""])[0]
            why = f"cannot be rendered offline: {type(failure).__name__}: {first_line}"
            failed = marks[-1][0] if marks else None
            if failed is None:  # env.py itself failed offline: nothing more can be shown
                for step in pending:
                    done.setdefault(step.revision, Rendered(step.revision, None, f"env.py {why}", not mysql))
                break
            done[failed] = Rendered(failed, None, why, self._transactional_step(failed, mysql))
            start = (failed,)  # go on after it, as if it had run
        return [done[s.revision] for s in pending if s.revision in done]

    def _render_from(
        self, start: tuple[str, ...], target: str
    ) -> tuple[list[tuple[str | None, int]], str, Exception | None]:
        """One offline run of env.py from ``start``: where each step's SQL begins, the SQL, and what it raised."""
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        buffer = io.StringIO()
        marks: list[tuple[str | None, int]] = []

        def steps(heads: tuple[str, ...], _: Any) -> Iterator[Any]:
            for step in self.script._upgrade_revs(target, _heads_arg(heads)):
                marks.append((step.revision.revision, buffer.tell()))
                yield step
            marks.append((None, buffer.tell()))

        self.config.output_buffer = buffer
        environment = EnvironmentContext(
            self.config, self.script, fn=steps, as_sql=True, starting_rev=start or None, destination_rev=target
        )
        try:
            with environment, logs.env_py_file_config_ignored(), project_code():
                self.script.run_env()
        except Exception as error:  # project code, offline: what it cannot render is reported, not raised
            return marks, buffer.getvalue(), error
        finally:
            self.config.output_buffer = None
        return marks, buffer.getvalue(), None

    def rehearse(self, *, url: URL, target: str, version_table: VersionTable, tracer: Tracer) -> list[tuple[str, str]]:
        """Run the pending revisions in one transaction that is always rolled back, showing ``tracer`` each statement.

        env.py runs online as in :meth:`upgrade`. When it configures its
        connection, a transaction is begun on it first, so Alembic treats the
        transaction as external (``MigrationContext``'s ``_in_external_transaction``:
        ``begin_transaction()`` then neither begins nor commits), and the
        runner rolls it back after the last revision. A revision with an
        ``autocommit_block`` would commit: it and those after it are not run.

        Returns:
            ``(revision, why)`` of the revisions that were not run.

        Raises:
            ConfigError: env.py configures no connection in online mode.
            MigrationFailed: a revision raised (nothing stays: it is all rolled back).
        """
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        rehearsal = _Rehearsal(self, target, version_table, tracer)
        environment = EnvironmentContext(
            self.config, self.script, fn=rehearsal.steps, as_sql=False, starting_rev=None, destination_rev=target
        )
        rehearsal.configure = environment.configure
        environment.configure = rehearsal.configure_rolled_back  # type: ignore[method-assign]
        self._use_url(url)
        try:
            with environment, logs.env_py_file_config_ignored(), project_code():
                self.script.run_env()
        except (ConfigError, Stopped):
            raise
        except BaseException as error:  # project code
            from runner import database  # noqa: PLC0415

            failed = rehearsal.running[0] if rehearsal.running else None
            message = f"plan --trace: {database.error_message(error)} (rolled back: nothing was changed)"
            raise MigrationFailed(message, revision=failed, sqlstate=database.classify(error).code) from error
        finally:
            rehearsal.roll_back()
        return rehearsal.skipped

    merge_command = "alembic merge heads"

    def diverged(self) -> list[str]:
        """Every head, when there are several (``alembic heads``); empty when there is one."""
        heads = self.heads()
        return list(heads) if len(heads) > 1 else []

    def step_target(self, revision: str, direction: str) -> str:
        """Up: the revision itself. Down: ``revision@-1``, or for a merge point its first ``down_revision``.

        ``revision@-1`` reverts the revision alone also while other heads are
        applied (a plain ``down_revision`` target would revert their branches
        too); ``@-1`` from a merge point is an ambiguous walk to Alembic, and
        downgrading to one parent reverts only the merge.
        """
        if direction == "up":
            return revision
        script = self.script.get_revision(revision)
        downs = _down_revisions(script) if script is not None else ()
        return downs[0] if len(downs) > 1 else f"{revision}@-1"

    def models_match(self, connection: Connection, url: URL, ignored: Sequence[str] = ()) -> tuple[str, list[str]]:
        """Compare the models ``env.py`` configures as ``target_metadata`` with the database (``command.check``).

        Alembic's own public API (``alembic check``, Alembic 1.9+): env.py runs in
        autogenerate mode, and the operations a new revision would contain are the
        difference.

        Args:
            connection: a connection to the migrated database, outside a transaction.
            url: its URL, for an env.py that builds its own engine.
            ignored: tables no model describes on purpose (the version table, the ledger).

        Returns:
            ``("passed", [])``; ``("failed", operations)``, one line each, e.g.
            ``add_column items.price``; or ``("skipped", [reason])`` when env.py sets
            no ``target_metadata``.

        Raises:
            BrokenProject: env.py fails in autogenerate mode.
        """
        from alembic import command  # noqa: PLC0415
        from alembic.util import exc  # noqa: PLC0415

        self._use_url(url)
        self.config.attributes["connection"] = _alembic_env.SharedConnection(connection)
        try:
            with logs.env_py_file_config_ignored(), project_code(), _alembic_env.unwrapping_configure():
                command.check(self.config)
        except exc.AutogenerateDiffsDetected as error:
            found = [_operation(diff) for diff in error.diffs if not _about(diff, ignored)]
            return ("failed", found) if found else ("passed", [])
        except exc.CommandError as error:
            if "MetaData" in str(error):  # env.py configures no target_metadata
                return "skipped", ["env.py sets no target_metadata, so there are no models to compare"]
            raise BrokenProject(f"env.py failed in autogenerate mode (alembic check): {error}") from None
        except Exception as error:
            raise BrokenProject(f"env.py failed in autogenerate mode (alembic check): {where(error)}") from None
        return "passed", []

    def _use_url(self, url: URL) -> None:
        """Give env.py the run's URL as ``sqlalchemy.url``, for an env.py that builds its own engine."""
        # configparser interpolation: a literal % must be doubled (Alembic docs, Config.set_main_option).
        self.config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))

    def commits_as_it_goes(self, revision: str) -> bool:
        """An ``autocommit_block`` in the revision's file: it commits what came before it."""
        return not self._transactional_step(revision, mysql=False)

    def _transactional_step(self, revision: str, mysql: bool) -> bool:
        """It runs in a transaction: not on MySQL (DDL commits), and no ``autocommit_block`` in its file."""
        if mysql:
            return False
        script = self.script.get_revision(revision)
        try:
            return "autocommit_block" not in Path(script.path).read_text(encoding="utf-8") if script else True
        except OSError:
            return True

    def upgrade(self, options: MigrateOptions) -> None:
        """Run the project's env.py to upgrade the database to ``options.target``; see :meth:`_run_env`."""
        self._run_env(self.script._upgrade_revs, options)

    def downgrade(self, options: MigrateOptions) -> None:
        """Run the project's env.py to downgrade the database to ``options.target`` (as ``alembic downgrade``)."""
        self._run_env(self.script._downgrade_revs, options)

    def _run_env(self, plan: Callable[[str, str], Sequence[Any]], options: MigrateOptions) -> None:
        """Run the project's env.py over the steps ``plan(target, heads)`` gives.

        The URL is set as ``sqlalchemy.url`` and the open connection is passed as
        ``config.attributes["connection"]`` (Alembic cookbook, "Sharing a
        Connection"), so both kinds of env.py work.

        Args:
            plan: ``ScriptDirectory._upgrade_revs`` or ``_downgrade_revs``, what
                Alembic's own ``upgrade`` and ``downgrade`` commands hand to
                ``run_migrations`` (private; ``tests/test_downgrade.py`` pins both).
            options: the connection, URL, target, version table and the runner's callbacks
                (:class:`runner.drivers.MigrateOptions`); ``in_transaction`` is called from
                Alembic's ``on_version_apply``, so the ledger row commits with the revision.

        Raises:
            MigrationFailed: a revision raised (``BaseException`` included); the message names it.
            BrokenProject: env.py failed before any revision ran.
            ConnectionLost: the connection was lost while migrating.
            Stopped: the runner's own signal or deadline, with the running revision attached.

        """
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        from runner import database  # noqa: PLC0415

        connection, url, target, version_table = options.connection, options.url, options.target, options.version_table
        on_applied, before_each, in_transaction = options.on_applied, options.before_each, options.in_transaction
        self._use_url(url)
        self.config.attributes["connection"] = _alembic_env.SharedConnection(connection)
        running: list[Script] = []
        started_any: list[bool] = []

        def steps(heads: tuple[str, ...], _: Any) -> Iterator[MigrationStep]:
            # run_migrations() asks for the next step only after the previous
            # one's transaction ended, so the code after `yield` sees it committed.
            stopping.migrating()  # in whichever thread env.py runs them (runner.stopping)
            for step in plan(target, _heads_arg(heads)):
                stopping.checkpoint()
                own(before_each, step.revision.revision)
                running[:] = [step.revision]
                started_any.append(True)
                started = time.monotonic()
                database.transaction_watch.start()
                yield step
                database.transaction_watch.stop()
                running.clear()
                done = step.revision
                own(on_applied, Applied(done.revision, done.doc, time.monotonic() - started, _down_revisions(done)))

        def version_applied(*, ctx: MigrationContext, step: Any, **_: Any) -> None:
            stopping.checkpoint()  # the last safe point before the revision commits
            database.transaction_watch.stop()  # Alembic's own commit of this step follows
            assert ctx.connection is not None  # noqa: S101  (online mode always has one)
            transactional = not database.transaction_watch.ended
            own(in_transaction, ctx.connection.execute, step.up_revision_id, transactional)

        environment = EnvironmentContext(
            self.config, self.script, fn=steps, as_sql=False, starting_rev=None, destination_rev=target
        )
        configure = environment.configure

        def configure_with_defaults(*args: Any, **kwargs: Any) -> None:
            _set_defaults(kwargs, version_table, version_applied)
            own(
                lambda: _alembic_env.check_configured(
                    kwargs, ours=connection, version_table=version_table, timeouts=self._session_timeouts
                )
            )
            configure(*args, **kwargs)

        # An instance attribute, not a subclass: alembic.context proxies only
        # the EnvironmentContext class itself.
        environment.configure = configure_with_defaults  # type: ignore[method-assign]
        try:
            with environment, logs.env_py_file_config_ignored(), project_code(), stopping.env_py_running():
                self.script.run_env()
            if stopping.cause() is not None:  # a stop the migrating thread never reached a safe point for
                raise cast(Stopped, stopping.cause())
        except CallbackFailed as callback:
            raise callback.error from None  # the lock check's ConnectionLost / LockLost, or a bug of ours
        except BaseException as error:  # project code: SystemExit, KeyboardInterrupt and GeneratorExit too
            raise self._ended_by(error, running[0] if running else None, url, started=bool(started_any)) from None
        finally:
            database.transaction_watch.stop()
            self.config.attributes.pop("connection", None)

    def _ended_by(self, error: BaseException, failed: Script | None, url: URL, *, started: bool) -> BaseException:
        """What ended env.py's run: our own stop, or else project code's failure (:meth:`_failure`).

        Our own signal or deadline, raised here or in env.py's worker thread, keeps its code
        130/143/75 whatever it surfaced as (a cancelled statement's error, an event loop's wrapping).
        """
        stopped = error if isinstance(error, Stopped) else stopping.cause()
        if stopped is None:
            failure = self._failure(error, failed, url, started=started)
            failure.__cause__ = error
            return failure
        if failed is not None:
            stopped.revision = failed.revision
            stopped.transactional = self._transactional(url)
        return stopped

    def _transactional(self, url: URL) -> bool:
        # MySQL commits DDL as it goes; a revision that ended its own transaction
        # (a COMMIT, an autocommit_block) has committed what came before.
        from runner import database  # noqa: PLC0415

        return database.family(url) != "mysql" and not database.transaction_watch.ended

    def _failure(self, error: BaseException, failed: Script | None, url: URL, *, started: bool) -> RunnerError:
        """What a project-code exception means: a lost connection, a broken env.py, or a failed revision."""
        from runner import database  # noqa: PLC0415

        failure = database.classify(error)
        if failure.connection:
            return ConnectionLost(
                f"connection lost while applying revision {failed.revision if failed else None} "
                f"(SQLSTATE {failure.code}): {database.error_message(error)}"
            )
        message = database.error_message(error)
        if isinstance(error, SystemExit | KeyboardInterrupt | GeneratorExit):
            message = f"{type(error).__name__}({error.args[0] if error.args else ''}) raised by project code"
        elif failure.code is None and not message.startswith(type(error).__name__):
            message = f"{type(error).__name__}: {message}"
        if not started and failure.code is None:
            return BrokenProject(f"env.py {self.script.env_py_location}: {message}{where(error)}")
        if failed is None:
            return MigrationFailed(message, revision=None, sqlstate=failure.code)
        transactional = self._transactional(url)
        if not transactional:
            message += "; this revision ran outside a transaction, so its changes may be partly applied"
        return MigrationFailed(message, revision=failed.revision, sqlstate=failure.code, transactional=transactional)


def _about(diff: Any, tables: Sequence[str]) -> bool:
    """Whether an autogenerate difference concerns one of ``tables`` (the table, or a column or index of it)."""
    if isinstance(diff, list):  # modify_* differences come as a list of tuples
        return all(_about(part, tables) for part in diff)
    names: set[str | None] = set()
    for part in diff[1:]:
        table = getattr(part, "table", None)  # a Column, an Index, a constraint
        if isinstance(part, str):
            names.add(part)
        elif table is not None:
            names.add(getattr(table, "name", None))
        elif hasattr(part, "columns"):  # a Table
            names.add(getattr(part, "name", None))
    return bool(names & set(tables))


def _operation(diff: Any) -> str:
    """One autogenerate difference as a line: ``add_column items.price``, ``add_table orders``."""
    if isinstance(diff, list):  # modify_* differences come as a list of tuples
        return "; ".join(_operation(part) for part in diff)
    kind, *rest = diff
    names = []
    for part in rest:
        name = getattr(part, "name", None)
        if name is not None:
            names.append(str(name))
        elif isinstance(part, str):
            names.append(part)
    return f"{kind} {'.'.join(names)}".strip()


def _down_revisions(script: Script) -> tuple[str, ...]:
    from alembic.util import to_tuple  # noqa: PLC0415

    return tuple(to_tuple(script.down_revision, default=()))


class _Rehearsal:
    """The hooks of one :meth:`Project.rehearse`: its steps, the statement events, the rolled-back transaction."""

    def __init__(self, project: Project, target: str, version_table: VersionTable, tracer: Tracer) -> None:
        self.project, self.target, self.version_table, self.tracer = project, target, version_table, tracer
        self.skipped: list[tuple[str, str]] = []
        self.running: list[str] = []
        self.transactions: list[Any] = []
        self.configure: Callable[..., None] = lambda *_, **__: None

    def steps(self, heads: tuple[str, ...], _: Any) -> Iterator[Any]:
        plan = list(self.project.script._upgrade_revs(self.target, _heads_arg(heads)))
        try:
            for number, step in enumerate(plan):
                revision = step.revision.revision
                if not self.project._transactional_step(revision, mysql=False):
                    why = "runs outside a transaction (autocommit_block), so it cannot be rolled back: not run"
                    self.skipped.append((revision, why))
                    later = plan[number + 1 :]
                    self.skipped.extend((s.revision.revision, "comes after a revision that was not run") for s in later)
                    return
                self.running[:] = [revision]
                self.tracer.revision = revision
                yield step
                self.tracer.revision = None
        finally:
            self.running.clear()
            self.roll_back()  # the end of the rehearsal, whatever env.py does next

    def configure_rolled_back(self, *args: Any, **kwargs: Any) -> None:
        from sqlalchemy import event  # noqa: PLC0415

        connection = kwargs.get("connection")
        if connection is None:
            raise ConfigError(
                "plan --trace: env.py configured no connection in online mode, so its statements cannot be "
                "rolled back; nothing was run"
            )
        if not self.transactions:
            event.listen(connection, "before_cursor_execute", lambda *_: self.tracer.before())
            event.listen(connection, "after_cursor_execute", self._after)
            cursor = connection.connection.driver_connection.cursor()
            try:
                self.tracer.begin(cursor)
            finally:
                cursor.close()
            self.transactions.append(connection.begin())
        kwargs.setdefault("version_table", self.version_table.name)
        kwargs.setdefault("version_table_schema", self.version_table.schema)
        self.configure(*args, **kwargs)

    def _after(self, _: Any, cursor: Any, statement: str, *__: Any) -> None:
        own_cursor = cursor.connection.cursor()  # the DB-API connection: no SQLAlchemy events, same transaction
        try:
            self.tracer.after(own_cursor, statement)
        finally:
            own_cursor.close()

    def roll_back(self) -> None:
        for transaction in self.transactions:
            with contextlib.suppress(Exception):
                if transaction.is_active:
                    transaction.rollback()


def _why_irreversible(downgrade: Any, upgrade: Any) -> str | None:
    """Why a revision's ``downgrade`` cannot revert it: missing, empty (pass, ``...``, a docstring), or only raising.

    An empty ``downgrade()`` reverts an empty ``upgrade()`` exactly: a merge
    revision as ``alembic merge`` writes it, or a placeholder.
    """
    if not callable(downgrade):
        return "it has no downgrade()"
    body = _statements(downgrade)
    if body is None:
        return None  # no source to read: Alembic finds out when it runs
    if not body:
        return None if _statements(upgrade) == [] else "its downgrade() does nothing"
    if len(body) == 1 and isinstance(body[0], ast.Raise):
        return "its downgrade() only raises"
    return None


def _statements(function: Any) -> list[ast.stmt] | None:
    """A function's statements but ``pass`` and bare constants (a docstring, ``...``); None without its source."""
    import inspect  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    if not callable(function):
        return None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    return [
        statement
        for statement in definition.body
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
        and not isinstance(statement, ast.Pass)
    ]


def _set_defaults(kwargs: dict[str, Any], version_table: VersionTable, version_applied: Callable[..., None]) -> None:
    """The runner's defaults for env.py's ``context.configure()`` (module docstring), and its callback added."""
    kwargs.setdefault("transaction_per_migration", True)
    kwargs.setdefault("version_table", version_table.name)
    kwargs.setdefault("version_table_schema", version_table.schema)
    theirs = kwargs.get("on_version_apply") or ()
    kwargs["on_version_apply"] = [*(theirs if isinstance(theirs, list | tuple) else [theirs]), version_applied]


def _targets_of(node: Any) -> list[Any]:
    """The names an assignment statement assigns to (``a = b = 1``, ``a: str = 1``)."""
    return list(node.targets) if hasattr(node, "targets") else [node.target]


def _heads_arg(heads: Sequence[str]) -> str:
    # _upgrade_revs() is annotated with one revision, but Alembic's own
    # run_migrations() passes it the tuple of current heads, as we do.
    return cast(str, tuple(heads))


@contextlib.contextmanager
def _history_errors(target: str | None = None) -> Iterator[None]:
    """Turn Alembic's revision-resolution errors into one-line ConfigErrors."""
    from alembic.script.revision import MultipleHeads, ResolutionError, RevisionError  # noqa: PLC0415
    from alembic.util.exc import CommandError  # noqa: PLC0415

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
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        # Alembic's resolver asserts on identifiers it cannot split (``@``, ``branch@``, ``@head``) instead of
        # raising a RevisionError; with no target it is a broken history, which the other handlers name.
        if target is None:
            raise
        raise ConfigError(
            f"MIGRATION_TARGET={target!r} is not a revision: give a revision id or prefix, head, heads, base, "
            f"branch@head or +N ({type(error).__name__} {error})".replace(" ()", "")
        ) from None


if TYPE_CHECKING:  # the Alembic project is a Driver (checked by mypy, not at run time)
    _as_driver: Driver = Project(settings=cast("Settings", None), cwd=Path(), url=None)
