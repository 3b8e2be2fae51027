"""Revision checksums that ignore formatting and catch a changed operation.

A Python revision file's checksum is the SHA-256 of a canonical form of its
syntax tree (:mod:`ast`): comments, blank lines, quote style, line endings,
layout and docstrings leave no trace in it; every identifier and literal does.
The canonical form is this module's own, not ``ast.dump``'s text, whose layout
changes between Python versions (3.13 omits empty fields, 3.12 added
``type_params``): fields that are ``None`` or empty are left out, so a newer
Python that adds an empty field gives the same checksum.

A revision that loads SQL files (a string literal ending in ``.sql`` that names
a file beside it) has their text in its checksum too, with comments removed and
whitespace collapsed (:func:`normalise_sql`).

The algorithm is versioned (:data:`VERSION`): a ledger row records the version
its checksum was made with, and a recorded checksum is compared with one made
by the same version (:func:`of_file`), so a later change to the algorithm never
reads as drift. Version 1 is the syntax tree alone; version 2 adds the SQL
files (for a file that loads none, both give the same value).

The SQL normaliser is this module's own on purpose, not a library's formatter:
a formatter's output may change with its release, and then every checksum made
with it would read as drift (liquibase#7309).
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

VERSION = 2
VERSIONS = frozenset({1, 2})
# Fields that record how a literal was written, not what it is (u"" strings).
_FORMATTING_FIELDS = frozenset({"kind"})


def of_python(source: str | bytes) -> str:
    """The version-1 checksum of a Python source: hex SHA-256 of its canonical syntax tree.

    Args:
        source: the file's text or bytes (an encoding declaration is honoured for bytes).

    Returns:
        64 hexadecimal characters.

    Raises:
        SyntaxError: the source does not parse.
    """
    return hashlib.sha256(_canonical(ast.parse(source)).encode()).hexdigest()


def of_file(path: Path, *, version: int = VERSION, data: bytes | None = None) -> str:
    """The checksum of a revision file, by the algorithm of ``version``.

    Args:
        path: the revision file; SQL files it names are looked up beside it.
        version: one of :data:`VERSIONS`.
        data: the file's bytes, when the caller has read them already.

    Returns:
        64 hexadecimal characters.

    Raises:
        OSError: the file cannot be read.
        SyntaxError, ValueError: it does not parse, or ``version`` is unknown.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown checksum version {version}")
    tree = ast.parse(path.read_bytes() if data is None else data)
    canonical = _canonical(tree)
    if version >= 2:
        for sql in _loaded_sql(tree, path):
            canonical += "\x00" + normalise_sql(sql.read_text(encoding="utf-8", errors="replace"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def fingerprint(path: Path | None) -> tuple[str, str] | None:
    """What the ledger records of a revision file: ``(checksum, SHA-256 of its bytes)``, at :data:`VERSION`.

    Returns:
        The pair, or ``None`` when there is no file or it cannot be read or parsed.
    """
    if path is None:
        return None
    try:
        data = path.read_bytes()
        return of_file(path, data=data), of_bytes(data)
    except (OSError, SyntaxError, ValueError):
        return None


def of_bytes(data: bytes) -> str:
    """The SHA-256 of a file's bytes, recorded beside the checksum so that an unchanged file is never parsed."""
    return hashlib.sha256(data).hexdigest()


def _loaded_sql(tree: ast.Module, path: Path) -> list[Path]:
    """The SQL files the revision names: each ``*.sql`` literal, beside it or anywhere under its parent."""
    found: list[Path] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        name = node.value.strip()
        if not name.lower().endswith(".sql") or "\n" in name:
            continue
        here, above = path.parent, path.parent.parent
        direct = [base / name for base in (here, above) if (base / name).is_file()]
        matches = direct[:1] or sorted(above.rglob(Path(name).name))
        found.extend(match for match in matches if match.is_file() and match not in found)
    return found


_SQL_TOKEN = re.compile(
    r"""(?P<string>'(?:[^'\\]|\\.|'')*')
      |(?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
      |(?P<dollar>\$(?P<tag>[A-Za-z_]\w*|)\$.*?\$(?P=tag)\$)
      |(?P<comment>--[^\n]*|/\*.*?\*/)
      |(?P<space>\s+)""",
    re.DOTALL | re.VERBOSE,
)


# No space is kept next to these.
_TIGHT = frozenset("(),;")


def normalise_sql(text: str) -> str:
    """SQL text with comments removed and whitespace collapsed; string literals and quoted names kept as written.

    A run of whitespace and comments becomes one space, or nothing at either
    end and next to ``(``, ``)``, ``,`` and ``;``.
    """
    pieces: list[str | None] = []  # None: a gap (whitespace or a comment)
    position = 0
    for match in _SQL_TOKEN.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
        pieces.append(None if match.lastgroup in ("space", "comment") else match.group())
        position = match.end()
    pieces.append(text[position:])
    out: list[str] = []
    gap = False
    for piece in pieces:
        if piece is None:
            gap = True
            continue
        if not piece:
            continue
        if gap and out and out[-1][-1] not in _TIGHT and piece[0] not in _TIGHT:
            out.append(" ")
        out.append(piece)
        gap = False
    return "".join(out)


# Nodes whose body may open with a docstring, which the checksum leaves out.
_WITH_DOCSTRING = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _canonical(value: object) -> str:
    if isinstance(value, ast.AST):
        fields = []
        for name in value._fields:
            field = getattr(value, name, None)
            if name == "body" and isinstance(value, _WITH_DOCSTRING) and field and _is_docstring(field[0]):
                field = field[1:] or [ast.Pass()]  # a body that was only its docstring: as if it were pass
            if name not in _FORMATTING_FIELDS and field is not None and field != []:
                fields.append(f"{name}={_canonical(field)}")
        return f"{type(value).__name__}({','.join(fields)})"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    return f"{type(value).__name__}:{value!r}"


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement.value, "value", None), str)
