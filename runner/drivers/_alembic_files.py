"""The revision-file reader of the Alembic fast path: the heads from the files' text, without importing Alembic.

:mod:`runner.noop` asks :func:`quick_heads` and :func:`quick_current` (through
:mod:`runner.drivers.alembic`) whether the database is at the heads. The reader
answers only for files whose identifiers are plain literals in a plain module
head; any doubt is ``None``, and the full path, with Alembic itself, decides.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from runner.settings import Settings
from runner.drivers._alembic_layout import Layout, quick_layout

# Names that code setting a module's names in ways a reading of its assignments cannot see must
# use: builtins, and attributes reached from sys or a frame. A file that has one as a whole word
# (or a star import) is parsed, and only its code that runs at import decides
# (:func:`_sets_names_dynamically`): a docstring or a comment decides nothing.
_DYNAMIC_NAMES = frozenset(("globals", "locals", "vars", "setattr", "delattr", "exec", "eval", "__import__"))
_DYNAMIC_ATTRIBUTES = frozenset(("__dict__", "modules", "f_globals", "f_locals"))
_DYNAMIC_WORDS = (*sorted(_DYNAMIC_NAMES | _DYNAMIC_ATTRIBUTES), "global", "nonlocal")
_STAR_IMPORT = re.compile(r"import[\s\\]*\*")


def _may_be_dynamic(text: str) -> bool:
    """Whether ``text`` has a :data:`_DYNAMIC_WORDS` word or a star import: a screen, decided by the parser.

    ``str.find`` and a look at the characters around each hit: ``op.execute`` is in most
    revision files and must not count as ``exec``. A regular expression with word
    boundaries costs several times as much over a thousand files.
    """
    for word in _DYNAMIC_WORDS:
        start = text.find(word)
        while start >= 0:
            end = start + len(word)
            before, after = text[start - 1 : start], text[end : end + 1]
            if not (before.isalnum() or before == "_" or after.isalnum() or after == "_"):
                return True
            start = text.find(word, end)
    return _STAR_IMPORT.search(text) is not None


_IDENTIFIERS = ("revision", "down_revision", "depends_on")


def quick_heads(
    settings: Settings, cwd: Path, sources: dict[str, tuple[str, bytes]] | None = None
) -> tuple[str, ...] | None:
    """The heads, read from the revision files' text without importing Alembic or the files; None when unsure.

    Sure means: :func:`runner.drivers._alembic_layout.quick_layout` found the files
    Alembic would load (``version_locations``, ``package:resource``,
    ``[tool.alembic]`` and recursive directories included; not ``sourceless`` or
    ``databases``), each listed once; and every file assigns ``revision``,
    ``down_revision`` and, if at all, ``depends_on`` exactly once, at module level,
    to literals, with no code that runs at import and could set them otherwise
    (prose does not count: :func:`_sets_names_dynamically`). A history that does
    not check out (a duplicate id, a dangling reference, a cycle) is None too.
    None sends the run down the full path, where Alembic itself decides. Heads
    are the revisions no ``down_revision`` names (``RevisionMap.heads``);
    ``depends_on`` does not make or unmake a head.

    Args:
        settings: the run's settings.
        cwd: the working directory.
        sources: if given, filled with each revision's file (its real path) and bytes (for :mod:`runner.drift`).

    Returns:
        The heads, sorted; or None.
    """
    try:
        layout = quick_layout(settings, cwd)
        if layout is None:
            return None
        paths, texts, contents = _revision_texts(layout)
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError, and so is a file listed twice
        return None
    # One look over all the files at once for what needs a closer look: usually nothing.
    everything = "\n".join(texts)
    screened = _DEFINES_IDENTIFIER.search(everything) is None and not _may_be_dynamic(everything)
    downs = _read_history(texts, screened=screened)
    if not downs:
        return None
    if sources is not None:  # downs is in the files' order
        for revision, path, data in zip(downs, paths, contents, strict=True):
            sources[revision] = path, data
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


# Bytes per read(2) of a revision file: most fit in one.
_READ_BYTES = 65536


def _revision_texts(layout: Layout) -> tuple[list[str], list[str], list[bytes]]:
    """The path, text and bytes of each revision file, in Alembic's order (:meth:`Layout.revision_files`).

    Each text starts with a newline that is not in the file. The leading newline
    lets the line-start patterns look for a newline, which is faster than
    ``re.MULTILINE``'s ``^``. Plain ``os.read`` on a directory descriptor: with a
    thousand files, ``open()``'s file objects cost as much as the reading.

    Raises:
        OSError: a file cannot be read.
        UnicodeDecodeError: a file is not UTF-8.
        ValueError: a file is listed twice (overlapping locations, a symlink): Alembic
            warns and skips it, and the full path should say so.
    """
    paths: list[str] = []
    texts: list[str] = []
    contents: list[bytes] = []
    seen: set[str] = set()
    for directory, files in layout.revision_files():
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, linked in files:
                path = os.path.join(directory, name)
                real = os.path.realpath(path) if linked else path  # ScriptDirectory._load_revisions's dupes
                if real in seen:
                    raise ValueError(f"{real} is listed twice")
                seen.add(real)
                fd = os.open(name, os.O_RDONLY, dir_fd=descriptor)
                try:
                    chunks = [os.read(fd, _READ_BYTES)]
                    while chunks[-1]:
                        chunks.append(os.read(fd, _READ_BYTES))
                finally:
                    os.close(fd)
                paths.append(real)
                contents.append(b"".join(chunks))
                texts.append("\n" + contents[-1].decode("utf-8"))
        finally:
            os.close(descriptor)
    return paths, texts, contents


def _literal_identifiers(text: str, *, screened: bool = False) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """``(revision, down_revisions, depends_on)`` of a revision file, if it sets them plainly; else None.

    Only what runs at import can set a module's names: its top-level statements.
    Function bodies do not run, and a class body binds the class's names, not the
    module's (a ``global`` in it is a :func:`_may_be_dynamic` word), so when everything
    after the first top-level ``def``/``class`` is more of them, only the text
    before it is parsed. A file with such a word is parsed whole and decided by
    :func:`_sets_names_dynamically`.

    Args:
        text: the file's text after a newline (:func:`_revision_texts`).
        screened: the caller has found no :func:`_may_be_dynamic` word and no
            ``def revision``-like definition anywhere in the text.

    Raises:
        SyntaxError, ValueError: the text does not parse, or a value is not a literal.
    """
    if not screened and _may_be_dynamic(text):
        module = ast.parse(text)  # a closer look: is the word in code that runs at import, or in prose?
        return None if _sets_names_dynamically(module) else _checked(_top_level_values(module))
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
    return _checked(values)


def _checked(values: dict[str, Any] | None) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """``(revision, down_revisions, depends_on)`` from the literal values, if they are what Alembic takes."""
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


def _sets_names_dynamically(tree: ast.Module) -> bool:
    """Whether code that runs at import could set a module name other than by a plain statement.

    That code is the top-level statements and class bodies, and the body of a
    function defined in the file only when that code names it (it may call it).
    It is dynamic if it uses ``globals()``, ``vars()``, ``setattr``, ``exec`` and
    the like (:data:`_DYNAMIC_NAMES`), reaches ``__dict__``, ``sys.modules`` or a
    frame's globals, star-imports, or declares an identifier ``global``/``nonlocal``.
    """
    functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.setdefault(node.name, []).append(node)
    pending: list[ast.AST] = list(tree.body)
    entered: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending += [*getattr(node, "decorator_list", ()), *node.args.defaults]
            pending += [default for default in node.args.kw_defaults if default is not None]
            continue  # the body runs only when called
        named = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if named in _DYNAMIC_NAMES or (isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRIBUTES):
            return True
        if isinstance(node, ast.Global | ast.Nonlocal) and set(node.names) & set(_IDENTIFIERS):
            return True
        if isinstance(node, ast.ImportFrom) and any(
            alias.name == "*" or alias.name in _DYNAMIC_NAMES | _DYNAMIC_ATTRIBUTES for alias in node.names
        ):
            return True
        if named in functions and named not in entered:
            entered.add(named)
            pending += [statement for function in functions[named] for statement in function.body]
        pending.extend(ast.iter_child_nodes(node))
    return False


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
