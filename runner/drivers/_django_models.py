"""Django's models against the migrated database itself, as Django's own introspection reads it.

``makemigrations --check`` compares the models with the *migration state*: the
state the operations describe, not what their SQL did. A ``RunSQL`` whose SQL
and ``state_operations`` disagree (a column added by hand, another type, a
``NULL`` the state says is ``NOT NULL``) passes it. This compares each model
of the migration state with its table, as ``connection.introspection`` reads
it: its columns by name, nullability and type family (integer, text, date and
time, ...), since the exact type a backend reports varies (``varchar(200)``
and ``character varying``).
"""

from __future__ import annotations

from typing import Any

from runner.drivers import SCHEMA_DIFFERS

# Django field classes by the family of database type they are stored as. Introspection gives back a
# class of the same family, not always the same class (a SlugField reads back as a CharField).
_FAMILIES = {
    "integer": (
        "AutoField BigAutoField SmallAutoField IntegerField BigIntegerField SmallIntegerField "
        "PositiveIntegerField PositiveSmallIntegerField PositiveBigIntegerField"
    ),
    "text": "CharField TextField SlugField EmailField URLField FilePathField FileField ImageField",
    "decimal": "DecimalField",
    "float": "FloatField",
    "boolean": "BooleanField NullBooleanField",
    "date": "DateField",
    "datetime": "DateTimeField",
    "time": "TimeField",
    "duration": "DurationField",
    "binary": "BinaryField",
    "uuid": "UUIDField",
    "json": "JSONField",
    "ip address": "GenericIPAddressField IPAddressField",
}
_FAMILY_OF = {name: family for family, names in _FAMILIES.items() for name in names.split()}
# Families a backend stores as another (Django's own data_types per backend): MySQL and SQLite keep a
# UUID as char(32), JSON as text (MariaDB: longtext), an IP address as char(39), a duration as bigint,
# and MySQL a boolean as tinyint(1); SQLite reads a decimal back as one.
_STORED_AS = {
    "mysql": {"uuid": "text", "json": "text", "ip address": "text", "duration": "integer", "boolean": "integer"},
    "sqlite": {"uuid": "text", "json": "text", "ip address": "text", "duration": "integer", "decimal": "float"},
    "postgresql": {},
}


def differences(alias: str, state_apps: Any) -> list[str]:
    """What the database holds otherwise than the migration state says, one line each.

    The state, not the models: where the models and the state differ, ``makemigrations --check``
    already says so, and once they agree this is the models against the database.

    Args:
        alias: the ``DATABASES`` alias the run migrated.
        state_apps: the migration state's apps at the leaf nodes (``MigrationLoader.project_state().apps``):
            the migrated apps only, as the operations describe them.

    Returns:
        Lines beginning with :data:`runner.drivers.SCHEMA_DIFFERS`, e.g. ``... column shop_product.sku
        (shop.Product.sku) is missing``; empty when every managed model's table matches.
    """
    from django.db import connections, router  # noqa: PLC0415

    connection = connections[alias]
    vendor = connection.vendor
    lines: list[str] = []
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        for model in state_apps.get_models(include_auto_created=True):
            meta = model._meta
            if not meta.managed or meta.proxy or meta.swapped:
                continue
            if not router.allow_migrate_model(alias, model):
                continue
            if meta.db_table not in tables:
                lines.append(f"{SCHEMA_DIFFERS} table {meta.db_table} ({meta.label}) is missing")
                continue
            found = {c.name: c for c in connection.introspection.get_table_description(cursor, meta.db_table)}
            lines += _column_lines(connection, vendor, meta, found)
    return lines


def _column_lines(connection: Any, vendor: str, meta: Any, found: dict[str, Any]) -> list[str]:
    """The differences of one model's columns: missing, extra, nullability, type family."""
    lines = []
    expected = {field.column: field for field in meta.local_concrete_fields}
    for column, field in expected.items():
        where = f"column {meta.db_table}.{column} ({meta.label}.{field.name})"
        described = found.get(column)
        if described is None:
            lines.append(f"{SCHEMA_DIFFERS} {where} is missing")
            continue
        if bool(described.null_ok) != bool(field.null) and not field.primary_key:
            held = "NULL" if described.null_ok else "NOT NULL"
            lines.append(f"{SCHEMA_DIFFERS} {where} is {held}, and the model says null={field.null}")
        model_family = _family(vendor, _stored_class(field))
        try:
            database_family = _family(vendor, connection.introspection.get_field_type(described.type_code, described))
        except KeyError:  # a type Django does not map back: nothing to compare
            continue
        if None not in (model_family, database_family) and model_family != database_family:
            lines.append(f"{SCHEMA_DIFFERS} {where} is {database_family}, and the model says {model_family}")
    lines += [
        f"{SCHEMA_DIFFERS} column {meta.db_table}.{column} is in the database, and no field of {meta.label} has it"
        for column in sorted(set(found) - set(expected))
    ]
    return lines


def _stored_class(field: Any) -> str:
    """The field class whose type the column has: a foreign key's column is its target's."""
    while getattr(field, "is_relation", False) and getattr(field, "target_field", None) is not None:
        field = field.target_field
    return str(field.get_internal_type())


def _family(vendor: str, field_class: str) -> str | None:
    family = _FAMILY_OF.get(field_class)
    if family is None:
        return None
    return _STORED_AS.get(vendor, {}).get(family, family)
