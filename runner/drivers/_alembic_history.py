"""The Alembic driver's history: pure queries over the revision graph (the :class:`runner.drivers.History` half).

Every query goes through Alembic's own ``ScriptDirectory`` and ``RevisionMap``;
resolution errors become one-line ConfigErrors (:func:`_history_errors`).
"""

from __future__ import annotations

import ast
import contextlib
import re
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner.drivers import DOES_NOTHING, NOT_IMPLEMENTED, Step, VersionTable
from runner.errors import (
    BrokenRevisionFiles,
    ConfigError,
)

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory


class AlembicHistory:
    """The queries of :class:`runner.drivers.History` over a loaded script directory.

    :class:`runner.drivers.alembic.Project` builds it: ``script`` is the project's
    ``ScriptDirectory``, ``version_table`` where the database records its revisions.
    """

    script: ScriptDirectory
    config: Config
    version_table: VersionTable
    _applied_cache: tuple[tuple[str, ...], set[str]] | None

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

    def source(self, revision: str) -> Path | None:
        """The revision's file, for its checksum (:mod:`runner.checksum`); None for an unknown one or a .pyc."""
        script = None if self.unknown([revision]) else self.script.get_revision(revision)
        path = Path(script.path) if script is not None else None
        return path if path is not None and path.suffix == ".py" else None

    def applied_revisions(self, current: Sequence[str]) -> list[str]:
        """Every revision ``current`` implies: the current ones and their ancestors, sorted."""
        return sorted(self._applied(tuple(current))) if current and not self.unknown(current) else []

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

    def breaking_operations(self, revision: str) -> list[tuple[str, str | None, str]]:
        """None beyond the SQL: Alembic's operations are read as the SQL they render."""
        return []

    def release_columns(self, current: Sequence[str]) -> None:
        """Unknown: Alembic keeps no models per revision, only ``target_metadata``, which is the new release's."""
        return None

    def diverged(self) -> list[str]:
        """Every head, when there are several (``alembic heads``); empty when there is one."""
        heads = self.heads()
        return list(heads) if len(heads) > 1 else []

    def step_target(self, revision: str, direction: str) -> str:
        """Up: the revision itself. Down: ``revision@-1``, or for a merge point its first ``down_revision``.

        Below: its (first) ``down_revision``, or ``base``.

        ``revision@-1`` reverts the revision alone also while other heads are
        applied (a plain ``down_revision`` target would revert their branches
        too); ``@-1`` from a merge point is an ambiguous walk to Alembic, and
        downgrading to one parent reverts only the merge.
        """
        if direction == "up":
            return revision
        script = self.script.get_revision(revision)
        downs = _down_revisions(script) if script is not None else ()
        if direction == "below":
            return downs[0] if downs else "base"
        return downs[0] if len(downs) > 1 else f"{revision}@-1"

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


_RELATIVE_UP = re.compile(r"^\+\d+$")


def _down_revisions(script: Script) -> tuple[str, ...]:
    from alembic.util import to_tuple  # noqa: PLC0415

    return tuple(to_tuple(script.down_revision, default=()))


def _why_irreversible(downgrade: Any, upgrade: Any) -> str | None:
    """Why a revision's ``downgrade`` cannot revert it: missing, empty (pass, ``...``, a docstring), or only raising.

    "Only raising": a ``raise`` after nothing but assignments of plain values (a message first).

    An empty ``downgrade()`` reverts an empty ``upgrade()`` exactly: a merge
    revision as ``alembic merge`` writes it, or a placeholder.
    """
    if not callable(downgrade):
        return "it has no downgrade()"
    body = _statements(downgrade)
    if body is None:
        return None  # no source to read: Alembic finds out when it runs
    if not body:
        return None if _statements(upgrade) == [] else DOES_NOTHING
    if isinstance(body[-1], ast.Raise) and all(_only_names_a_value(statement) for statement in body[:-1]):
        raised = body[-1].exc.func if isinstance(body[-1].exc, ast.Call) else body[-1].exc
        if isinstance(raised, ast.Name) and raised.id == "NotImplementedError":
            return NOT_IMPLEMENTED
        return "its downgrade() only raises"  # also `msg = "..."; raise ValueError(msg)`, as ruff's EM rules want
    return None


def _only_names_a_value(statement: ast.stmt) -> bool:
    """An assignment that changes nothing outside the function: its value calls nothing but a string's own methods."""
    if not isinstance(statement, ast.Assign | ast.AnnAssign) or statement.value is None:
        return False
    calls = [node for node in ast.walk(statement.value) if isinstance(node, ast.Call)]
    return all(isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Constant) for call in calls)


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
