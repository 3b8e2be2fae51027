"""Revision checksums that ignore formatting and catch a changed operation.

A Python revision file's checksum is the SHA-256 of a canonical form of its
syntax tree (:mod:`ast`): comments, blank lines, quote style, line endings,
layout and docstrings leave no trace in it; every identifier and literal does.
The canonical form is this module's own, not ``ast.dump``'s text, whose layout
changes between Python versions (3.13 omits empty fields, 3.12 added
``type_params``): fields that are ``None`` or empty are left out, so a newer
Python that adds an empty field gives the same checksum.

The algorithm is versioned (:data:`VERSION`): a ledger row records the version
its checksum was made with, and a row of another version is never read as drift.
"""

from __future__ import annotations

import ast
import hashlib

VERSION = 1
# Fields that record how a literal was written, not what it is (u"" strings).
_FORMATTING_FIELDS = frozenset({"kind"})


def of_python(source: str | bytes) -> str:
    """The checksum of a Python source file: hex SHA-256 of its canonical syntax tree.

    Args:
        source: the file's text or bytes (an encoding declaration is honoured for bytes).

    Returns:
        64 hexadecimal characters.

    Raises:
        SyntaxError: the source does not parse.
    """
    return hashlib.sha256(_canonical(ast.parse(source)).encode()).hexdigest()


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
