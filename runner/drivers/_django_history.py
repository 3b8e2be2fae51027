"""The Django driver's history: pure queries over the migration graph (the :class:`runner.drivers.History` half).

Revision ids are ``app_label.migration_name``; the graph is Django's
``MigrationLoader`` (``tests/test_django.py`` pins what is used of it).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner.drivers import (
    Step,
    VersionTable,
)
from runner.errors import (
    ConfigError,
    ConnectionLost,
    DatabaseUnavailable,
)

# Django and SQLAlchemy are imported where they are used: choosing the tool (`detect`) needs neither.
if TYPE_CHECKING:
    pass
from runner.drivers._django_database import _as_dbapi_error, _close, _lost


class DjangoHistory:
    """The queries of :class:`runner.drivers.History` over a loaded ``MigrationLoader``.

    :class:`runner.drivers.django.Project` builds it: ``_loader`` is the project's
    loader, ``alias`` the ``DATABASES`` alias it migrates.
    """

    alias: str
    tool: str
    version_table: VersionTable
    _loader: Any
    _own_url: tuple[str, str] | None

    def _check_conflicts(self) -> None:
        conflicts = self._loader.detect_conflicts()
        if conflicts:
            names = "; ".join(f"{', '.join(sorted(names))} in {app}" for app, names in sorted(conflicts.items()))
            raise ConfigError(
                f"conflicting migrations: several leaf nodes in one app ({names}); "
                "run `python manage.py makemigrations --merge` and commit the merge migration"
            )

    def returned_early(self, revisions: Sequence[str], state: str) -> str:
        """``migrate`` returned with ``revisions`` still ``state``: it ran on another alias or another database."""
        verb = "is" if len(revisions) == 1 else "are"
        return (
            f"migrate returned, but {', '.join(revisions)} {verb} still {state}; does a database router "
            f"(allow_migrate) send them elsewhere, or MIGRATION_DJANGO_DATABASE={self.alias!r} name another alias?"
        )

    def database_url(self) -> tuple[str, str] | None:
        """The URL of the alias' ``DATABASES`` entry and where it is, unless MIGRATION_DATABASE_URL replaced it."""
        return self._own_url

    def summary(self, current: Sequence[str]) -> tuple[str, ...]:
        """The last applied migration of each app: applied nodes without an applied child in their app.

        A row whose migration a squash on disk replaces is no node of the graph (the
        loader put the squash in its place, or, for a squash half applied, kept the
        row's own node): it is not a last migration of its own. Other rows without a
        node (a migration no longer on disk) still show, as :meth:`unknown` reports them.
        """
        applied = {_key(revision) for revision in current}
        graph = self._loader.graph
        replaced = self._replaced()
        last = []
        for key in applied:
            node = graph.node_map.get(key)
            if node is None and key in replaced:
                continue
            children = node.children if node is not None else set()
            if not any(child[0] == key[0] and child in applied for child in children):
                last.append(_id(key))
        return tuple(sorted(last))

    def heads(self) -> tuple[str, ...]:
        """Every app's leaf node, sorted."""
        return tuple(sorted(_id(key) for key in self._loader.graph.leaf_nodes()))

    @staticmethod
    def is_relative(target: str) -> bool:
        """Django has no relative targets."""
        return False

    def _targets(self, target: str) -> list[tuple[str, str | None]]:
        """``migrate``'s targets for a MIGRATION_TARGET: ``(app, name)``, ``(app, None)`` for ``app:zero``."""
        from django.db.migrations.exceptions import AmbiguityError  # noqa: PLC0415

        loader = self._loader
        if target == "heads":
            return list(loader.graph.leaf_nodes())
        app, _, name = target.partition(":")
        if app not in loader.migrated_apps:
            raise ConfigError(
                f"MIGRATION_TARGET={target!r}: no installed app {app!r} with migrations; use heads, an app label "
                f"({', '.join(sorted(loader.migrated_apps))}) or app_label:migration_name"
            )
        if not name:
            return [key for key in loader.graph.leaf_nodes() if key[0] == app]
        if name == "zero":
            return [(app, None)]
        try:
            migration = loader.get_migration_by_prefix(app, name)
        except AmbiguityError:
            raise ConfigError(f"MIGRATION_TARGET={target!r}: more than one migration of {app} starts so") from None
        except KeyError:
            raise ConfigError(f"MIGRATION_TARGET={target!r}: {app} has no migration matching {name!r}") from None
        key = (app, migration.name)
        if key not in loader.graph.nodes and key in loader.replacements:
            key = loader.replacements[key].replaces[-1]  # a partly applied squash: its last original, as migrate does
        return [key]

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """The migrations a target names, as ``app_label.migration_name`` (``()`` for ``app:zero``)."""
        return tuple(sorted(_id(cast(Key, key)) for key in self._targets(target) if key[1] is not None))

    def unknown(self, current: Sequence[str]) -> list[str]:
        """Applied migrations of installed apps that are neither on disk nor replaced by a squash on disk.

        Rows of apps no longer installed are not counted: Django ignores them too.
        """
        loader = self._loader
        replaced = self._replaced()
        return sorted(
            revision
            for revision in current
            if (key := _key(revision))[0] in loader.migrated_apps
            and key not in loader.disk_migrations
            and key not in replaced
        )

    def _replaced(self) -> set[Key]:
        """Every migration that a squash on disk replaces (``Migration.replaces``)."""
        return {key for migration in self._loader.disk_migrations.values() for key in migration.replaces}

    def is_applied(self, current: Sequence[str], revision: str) -> bool:
        """``revision`` is among the applied migrations."""
        return revision in set(current)

    def past_target(self, current: Sequence[str], target: str) -> bool:
        """Reaching ``target`` would unapply migrations (``migrate app 0002`` after 0003 ran)."""
        applied = {_key(revision) for revision in current}
        for app, name in self._targets(target):
            if name is None:
                if any(key[0] == app for key in applied):
                    return True
            elif (app, name) in applied:
                node = self._loader.graph.node_map[(app, name)]
                if any(child[0] == app and child in applied for child in node.children):
                    return True
        return False

    def pending(self, current: Sequence[str], target: str) -> list[Step]:
        """The migrations ``migrate`` would apply, in order.

        The forward half of Django's ``MigrationExecutor.migration_plan``, over the graph of the last read.
        """
        applied = {_key(revision) for revision in current}
        graph = self._loader.graph
        plan: list[Key] = []
        for app, name in self._targets(target):
            if name is None or (app, name) in applied:
                continue
            for key in graph.forwards_plan((app, name)):
                if key not in applied and key not in plan:
                    plan.append(key)
        return [Step(_id(key), _message(graph.nodes[key])) for key in plan]

    def source(self, revision: str) -> Path | None:
        """The migration's module file, for its checksum (:mod:`runner.checksum`); None if it has none."""
        migration = self._loader.graph.nodes.get(_key(revision))
        path = getattr(sys.modules.get(type(migration).__module__), "__file__", None) if migration else None
        return Path(path) if path and path.endswith(".py") else None

    def commits_as_it_goes(self, revision: str) -> bool:
        """``atomic = False``: Django runs the migration outside a transaction."""
        migration = self._loader.graph.nodes.get(_key(revision))
        return migration is not None and not migration.atomic

    def diverged(self) -> list[str]:
        """The leaf nodes of every app that has more than one (what ``makemigrations --merge`` joins)."""
        leaves = self._loader.graph.leaf_nodes()
        apps = [app for app, _ in leaves]
        return sorted(_id(key) for key in leaves if apps.count(key[0]) > 1)

    def step_target(self, revision: str, direction: str) -> str:
        """Up: ``app:name``. Down and below: ``app:parent`` (its first parent in its app) or ``app:zero``.

        Migrating an app back to a parent unapplies that parent's children
        (``MigrationExecutor.migration_plan``): for a merge migration only the
        merge, but for one side of a branch the other side too, which the
        caller sees in :meth:`reverting`.
        """
        app, name = _key(revision)
        if direction == "up":
            return f"{app}:{name}"
        migration = self._loader.graph.nodes.get((app, name))
        parents = _parents_in_app(migration) if migration is not None else ()
        return f"{app}:{_key(parents[0])[1]}" if parents else f"{app}:zero"

    def applied_revisions(self, current: Sequence[str]) -> list[str]:
        """The applied migrations: ``current`` itself (``django_migrations`` lists every one)."""
        return sorted(current)

    def reverting(self, current: Sequence[str], target: str) -> list[Step]:
        """The migrations ``migrate app_label migration_name`` (or ``zero``) unapplies, in order.

        Django's own plan (``MigrationExecutor.migration_plan``, which reads
        ``django_migrations`` again); ``current`` is not needed.

        Raises:
            ConfigError: not ``app_label:migration_name`` or ``app_label:zero``, or not below the database.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

        if ":" not in target:
            raise ConfigError(
                f"MIGRATION_TARGET={target!r} is not below the database: downgrade takes "
                "app_label:migration_name or app_label:zero"
            )
        targets = self._targets(target)
        with self._database_errors():
            plan = MigrationExecutor(connections[self.alias]).migration_plan(targets)
        if any(not backwards for _, backwards in plan):
            raise ConfigError(f"MIGRATION_TARGET={target!r} is not below the database: use upgrade to go forward")
        return [Step(_id((m.app_label, m.name)), _message(m), _parents_in_app(m)) for m, _ in plan]

    def irreversible(self, steps: Sequence[Step]) -> list[tuple[str, str]]:
        """The migrations with an operation Django cannot reverse (``Operation.reversible``).

        That is a ``RunPython`` without ``reverse_code`` or a ``RunSQL`` without ``reverse_sql``.
        """
        found = []
        for step in steps:
            migration = self._loader.graph.nodes.get(_key(step.revision))
            for operation in getattr(migration, "operations", ()):
                if not operation.reversible:
                    found.append((step.revision, f"{operation.describe()}: no reverse"))
        return found

    def release_columns(self, current: Sequence[str]) -> dict[str, set[str]]:
        """Each model's table and columns in the migration state at ``current`` (``MigrationLoader.project_state``).

        That is what the release that applied ``current`` reads: a field that an earlier migration
        removed from the state only (``SeparateDatabaseAndState``) is not among them.
        """
        nodes = [_key(revision) for revision in current if _key(revision) in self._loader.graph.nodes]
        if not nodes:
            return {}
        apps = self._loader.project_state(nodes, at_end=True).apps
        return {
            model._meta.db_table: {f.column for f in model._meta.local_concrete_fields}
            for model in apps.get_models(include_auto_created=True)
        }

    def breaking_operations(self, revision: str) -> list[tuple[str, str | None, str]]:
        """The operations of ``revision`` that break the release still running (django-migration-linter's signals).

        ``RemoveField``, ``RenameField``, ``DeleteModel``, ``RenameModel``, and ``AlterField`` from
        ``null=True`` to ``null=False`` without ``db_default``; inside ``SeparateDatabaseAndState``, its
        database operations only. Read against the migration state just before each operation.

        Returns:
            ``(table, column or None, what it does)`` per operation.
        """
        app, name = _key(revision)
        migration = self._loader.graph.nodes.get((app, name))
        if migration is None:
            return []
        state = self._loader.project_state((app, name), at_end=False)
        found: list[tuple[str, str | None, str]] = []
        for operation in migration.operations:
            inner = getattr(operation, "database_operations", None)
            for each in [operation] if inner is None else inner:
                change = _breaking(app, each, state)
                if change is not None:
                    found.append(change)
            operation.state_forwards(app, state)
        return found

    @contextlib.contextmanager
    def _database_errors(self, *, reading: bool = False) -> Iterator[None]:
        """Turn Django's database errors into the runner's: lost or unreachable, or else SQLAlchemy's own kind."""
        from django.db import connections  # noqa: PLC0415

        try:
            yield
        except Exception as error:
            from runner import database  # noqa: PLC0415  (SQLAlchemy only when something went wrong)

            translated = _as_dbapi_error(error)
            if translated is None:
                raise
            _close(connections[self.alias])
            failure = database.classify(translated)
            if failure.connection or _lost(translated):
                cls = DatabaseUnavailable if reading else ConnectionLost
                raise cls(
                    f"connection lost (SQLSTATE {failure.code or '08006'}): {database.error_message(translated)}"
                ) from error
            raise translated from error


Key = tuple[str, str]


def _key(revision: str) -> Key:
    app, _, name = revision.partition(".")
    return app, name


def _id(key: Key) -> str:
    return f"{key[0]}.{key[1]}"


def _applied_ids(loader: Any) -> tuple[str, ...]:
    """What a ``MigrationLoader`` read as applied, as sorted ``app_label.migration_name`` ids."""
    return tuple(sorted(_id(key) for key in loader.applied_migrations))


def _parents_in_app(migration: Any) -> tuple[str, ...]:
    """The migrations of its own app that it depends on, as ``app_label.migration_name``."""
    return tuple(_id(parent) for parent in migration.dependencies if parent[0] == migration.app_label)


def _message(migration: Any) -> str:
    """A one-line description of a migration: its operations, as ``sqlmigrate``'s comments name them."""
    described = [operation.describe() for operation in migration.operations]
    text = "; ".join(described) or "no operations"
    return text if len(text) <= 200 else text[:199] + "…"


def _breaking(app: str, operation: Any, state: Any) -> tuple[str, str | None, str] | None:
    """``(table, column, what)`` when ``operation`` breaks code that reads the state before it; else None."""
    kind = type(operation).__name__
    model_name = operation.old_name if kind == "RenameModel" else getattr(operation, "model_name", None)
    model = state.models.get((app, str(model_name or getattr(operation, "name", "")).lower()))
    if model is None:
        return None
    table = model.options.get("db_table") or f"{app}_{model.name_lower}"
    if kind in {"DeleteModel", "RenameModel"}:
        verb = "deletes" if kind == "DeleteModel" else f"renames to {operation.new_name}"
        return table, None, f"{verb} model {model.name} (table {table}), which the running release reads"
    field_name = operation.old_name if kind == "RenameField" else getattr(operation, "name", None)
    field = model.fields.get(field_name) if field_name else None
    if field is None:
        return None
    column = field.db_column or (f"{field_name}_id" if getattr(field, "many_to_one", False) else field_name)
    what = {
        "RemoveField": f"removes field {model.name}.{field_name} (column {column}), which the running release reads",
        "RenameField": f"renames field {model.name}.{field_name} to {getattr(operation, 'new_name', '')}: the "
        f"running release uses {column}",
    }.get(kind)
    new = getattr(operation, "field", None)
    no_default = getattr(new, "db_default", None) in (None, _not_provided())
    if kind == "AlterField" and field.null and new is not None and not new.null and no_default:
        what = f"makes {model.name}.{field_name} NOT NULL with no database default: the running release may write NULL"
    return None if what is None else (table, column, what)


def _not_provided() -> Any:
    from django.db.models import NOT_PROVIDED  # noqa: PLC0415

    return NOT_PROVIDED
