"""mkdocs hook: pages generated from their one source, so they cannot drift.

The home page is the README (``<!-- readme -->`` in ``docs/index.md``), its links rewritten for the site.

``docs/configuration.md`` holds the marker ``<!-- settings-reference -->``; at build time it becomes one
table row per field of :class:`runner.settings.Settings`: the variable, what it takes, its default
(with the per-environment defaults of ``ENVIRONMENT_DEFAULTS``) and the field's own description, which
is also what ``migration-runner --help`` prints.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from runner.settings import DEFAULT_SECRETS_DIR, ENVIRONMENT_DEFAULTS, PREFIX, Settings

MARKER = "<!-- settings-reference -->"
README_MARKER = "<!-- readme -->"
REPOSITORY = "https://github.com/migration-runner/migration-runner/blob/main/"
ROOT = Path(__file__).resolve().parents[1]


def _takes(annotation: Any) -> str:
    """What a field's annotation accepts, in a reader's words."""
    origin = typing.get_origin(annotation)
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        return _takes(arguments[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_takes(a) for a in arguments)
    if origin is list:
        return "a JSON array of strings"
    names = {bool: "`true` \\| `false`", int: "integer", float: "seconds", str: "text", Path: "path"}
    if annotation is SecretStr:
        return "text (secret)"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _value(value: Any) -> str:
    """A default as a variable would spell it: `true`, `300`, `json`; none for no value."""
    if value in (None, (), []):
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _default(name: str, field: FieldInfo) -> str:
    """The default, and where the environment changes it."""
    by_environment = [f"{env} {_value(values[name])}" for env, values in ENVIRONMENT_DEFAULTS.items() if name in values]
    return _value(field.default) + (f" ({', '.join(by_environment)})" if by_environment else "")


def settings_reference() -> str:
    """The Markdown table of every setting, in the model's order."""
    rows = ["| variable | takes | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        takes = _takes(field.annotation)
        description = (field.description or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{PREFIX}{name.upper()}` | {takes} | {_default(name, field)} | {description} |")
    rows.append(
        f"| `{PREFIX}SECRETS_DIR` | path | `{DEFAULT_SECRETS_DIR}` | The directory of secret files, one per "
        "setting, named like `migration_database_url` (a Kubernetes Secret volume). |"
    )
    return "\n".join(rows)


def readme_for_the_site() -> str:
    """README.md with its links to docs/ made site-relative and its other repository links made absolute."""
    text = (ROOT / "README.md").read_text()

    def relink(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith(("http://", "https://", "#")):
            return match.group(0)
        if target.startswith("docs/"):
            return f"]({target.removeprefix('docs/')})"
        if target == "docs":
            return "](index.md)"
        return f"]({REPOSITORY}{target})"

    return re.sub(r"\]\(([^)\s]+)\)", relink, text)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The mkdocs hook: put the generated parts where a page asks for them."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_reference())
    if README_MARKER in markdown:
        markdown = markdown.replace(README_MARKER, readme_for_the_site())
    return markdown
