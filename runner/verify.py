"""``verify``: the checks a CI stage runs on a scratch database before a migration can reach production.

Each check is a named test case with a status (``passed``, ``failed``, ``skipped``):

- ``single_head``: one head (or exactly ``MIGRATION_VERIFY_HEADS``);
- ``upgrade``: base to head, one revision at a time, under the lock, as ``upgrade`` runs them;
- ``models_match``: the models against the migrated schema (Alembic's ``command.check``);
- ``backward_compatible``: the newest revision (or every one after ``MIGRATION_VERIFY_RELEASED``)
  breaks nothing the release still running during a rolling update reads or writes
  (:mod:`runner.commands.compatible`);
- ``up_down_consistency``: the stairway, from head down to base one revision at a time and up
  again; one case per revision and direction;
- ``downgrade_leaves_no_trace``: after a revision is downgraded, the schema (tables, columns,
  indexes, constraints, as SQLAlchemy's inspector reports them; sequences, types, views, functions,
  triggers and extensions, as :func:`runner.catalog.definitions` reads them) is what it was before the
  revision was applied. Each difference is reported once, at the revision whose downgrade left it.

The report is text, JSON (``docs/verify.schema.json``), Markdown (a pull-request comment) and,
with ``--junit-xml``, JUnit XML as GitHub and GitLab read it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 1
CHECKS = (
    "single_head",
    "upgrade",
    "models_match",
    "backward_compatible",
    "up_down_consistency",
    "downgrade_leaves_no_trace",
)


@dataclass
class Case:
    """One test case of the report.

    Attributes:
        check: one of :data:`CHECKS`.
        name: the case's name: the check's, or ``check[revision direction]`` for a stairway step.
        status: ``passed``, ``failed`` or ``skipped``.
        message: why it failed or was skipped; empty when it passed.
        details: the lines behind the message (the heads, the operations, the objects left behind).
        revision: the revision a stairway case is about.
        direction: ``up`` or ``down``, for a stairway case.
        seconds: how long it took.
    """

    check: str
    name: str
    status: str = "passed"
    message: str = ""
    details: list[str] = field(default_factory=list)
    revision: str | None = None
    direction: str | None = None
    seconds: float = 0.0

    def fail(self, message: str, details: Sequence[str] = ()) -> None:
        """Mark it failed."""
        self.status, self.message, self.details = "failed", message, list(details)

    def skip(self, message: str) -> None:
        """Mark it skipped, with the reason."""
        self.status, self.message = "skipped", message

    def document(self) -> dict[str, Any]:
        """Its entry in the JSON report."""
        return {
            "check": self.check,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "details": self.details,
            "revision": self.revision,
            "direction": self.direction,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class Rebuild:
    """One rebuild of the scratch database by the stairway: everything dropped, then upgraded to ``at`` again.

    Attributes:
        at: the revision it was rebuilt at (the one below the step that left it elsewhere), or ``base``.
        after: the step that left it elsewhere, e.g. ``the downgrade of 0002``.
        seconds: how long the drop and the upgrade took.
        failed: the error when it could not be rebuilt (the stairway stops there); empty otherwise.
    """

    at: str
    after: str
    seconds: float = 0.0
    failed: str = ""

    def document(self) -> dict[str, Any]:
        """Its entry in the JSON report's ``rebuilds``."""
        return {"at": self.at, "after": self.after, "seconds": round(self.seconds, 6), "failed": self.failed}

    def line(self) -> str:
        """As the summary says it."""
        said = f"rebuilt at {self.at} after {self.after}"
        return said + (f", and that failed: {self.failed}" if self.failed else f" ({self.seconds:.1f} s)")


class Timer:
    """Times a case: ``with Timer(case): ...`` sets ``case.seconds``."""

    def __init__(self, case: Case) -> None:
        self.case = case

    def __enter__(self) -> Case:
        self.started = time.monotonic()
        return self.case

    def __exit__(self, *_: object) -> None:
        self.case.seconds = time.monotonic() - self.started


# What a schema is, as compared: per table, its columns, indexes, unique constraints, foreign keys,
# primary key and check constraints; under DATABASE_OBJECTS, the objects beside the tables by kind
# (runner.catalog.definitions). Each is a sorted tuple of plain values, its name first.
Schema = dict[str, dict[str, tuple[Any, ...]]]
# The key of the objects beside the tables: no table is named so.
DATABASE_OBJECTS = ""


def snapshot(connection: Connection, schema: str | None, ignored: Sequence[str]) -> Schema:
    """The schema as SQLAlchemy's inspector reports it (``ignored``: the tools' own tables), and what is beside it.

    One call per kind of object for all tables (``Inspector.get_multi_columns`` and
    its kin, SQLAlchemy 2.0): PostgreSQL answers each with one query, where a call
    per table made ``verify`` quadratic in the history's length (57 s for 100
    revisions). Sequences, types, views, functions, triggers and extensions come from
    :func:`runner.catalog.definitions`. Leaves the connection's transaction as it found it.
    """
    from runner import catalog, database  # noqa: PLC0415  (verify only)

    found: Schema = {DATABASE_OBJECTS: catalog.definitions(connection)}
    inspector = sa.inspect(connection)
    with database.reading(connection):
        spaces: list[str | None] = [schema]
        if connection.dialect.name == "postgresql":  # a table in any other schema is the application's too
            default = schema or inspector.default_schema_name
            spaces += [
                name
                for name in inspector.get_schema_names()
                if name != default and name not in catalog.POSTGRES_SYSTEM_SCHEMAS and not name.startswith("pg_")
            ]
        for space in spaces:
            prefix = "" if space == schema else f"{space}."
            found.update({prefix + table: shape for table, shape in _tables(inspector, space, ignored).items()})
    return found


def _tables(inspector: Any, schema: str | None, ignored: Sequence[str]) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The tables of one schema, each by the kinds of object :data:`Schema` names."""
    names = sorted(set(inspector.get_table_names(schema=schema)) - set(ignored))
    if not names:
        return {}
    columns = inspector.get_multi_columns(schema, filter_names=names)
    primary = inspector.get_multi_pk_constraint(schema, filter_names=names)
    indexes = inspector.get_multi_indexes(schema, filter_names=names)
    uniques = inspector.get_multi_unique_constraints(schema, filter_names=names)
    foreign = inspector.get_multi_foreign_keys(schema, filter_names=names)
    checks = _checks(inspector, schema, names)
    found: dict[str, dict[str, tuple[Any, ...]]] = {}
    for table in names:
        key = (schema, table)
        found[table] = {
            "columns": tuple(
                sorted(
                    (c["name"], str(c["type"]), bool(c["nullable"]), str(c.get("default")), bool(c.get("identity")))
                    for c in columns.get(key, ())
                )
            ),
            "indexes": tuple(
                sorted(
                    (i["name"] or "", tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                    for i in indexes.get(key, ())
                    # The index behind a unique constraint is that constraint, compared below: said once.
                    if not i.get("duplicates_constraint")
                )
            ),
            "unique_constraints": tuple(
                sorted((u["name"] or "", tuple(u["column_names"])) for u in uniques.get(key, ()))
            ),
            "foreign_keys": tuple(
                sorted(
                    (
                        f["name"] or "",
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"]),
                        tuple(sorted((f.get("options") or {}).items())),
                    )
                    for f in foreign.get(key, ())
                )
            ),
            "primary_key": (tuple(primary[key]["constrained_columns"] if key in primary else ()),),
            "check_constraints": tuple(sorted((c["name"] or "", c["sqltext"]) for c in checks.get(key, ()))),
        }
    return found


def _checks(inspector: Any, schema: str | None, names: list[str]) -> dict[tuple[str | None, str], list[Any]]:
    try:
        return dict(inspector.get_multi_check_constraints(schema, filter_names=names))
    except NotImplementedError:  # a dialect without them
        return {}


def differences(before: Schema, after: Schema) -> list[str]:
    """What ``after`` has that ``before`` had not, and the reverse, one line each, e.g. ``index ix_a on t``.

    An object whose definition is unchanged but whose name is not is one line, ``... is now named ...``,
    so that a reader can tell a renamed constraint from a real leftover; an object whose name stayed
    and whose definition changed is one line too, ``... differs: before -> after``.
    """
    tables = set(before) - {DATABASE_OBJECTS}, set(after) - {DATABASE_OBJECTS}
    lines = [f"table {t} is left behind" for t in sorted(tables[1] - tables[0])]
    lines += [f"table {t} is missing" for t in sorted(tables[0] - tables[1])]
    for table in sorted(tables[0] & tables[1]):
        for kind in before[table]:
            lines += _changes(_LABELS[kind], set(before[table][kind]), set(after[table][kind]), f" on {table}")
    objects_before, objects_after = before.get(DATABASE_OBJECTS, {}), after.get(DATABASE_OBJECTS, {})
    for kind in sorted(set(objects_before) | set(objects_after)):
        lines += _changes(kind, set(objects_before.get(kind, ())), set(objects_after.get(kind, ())), "")
    return lines


def _changes(label: str, was: set[tuple[Any, ...]], now: set[tuple[Any, ...]], where: str) -> list[str]:
    """The lines for one kind of object: renamed, changed, left behind, missing."""
    left, gone = sorted(now - was, key=str), sorted(was - now, key=str)
    lines = []
    for item in list(left):
        same = next((old for old in gone if len(old) > 1 and old[1:] == item[1:] and old[0] != item[0]), None)
        if same is None and item[0]:  # a name is the identity: the same name with another definition is one line
            same = next((old for old in gone if old[0] == item[0]), None)
            if same is not None:
                lines.append(
                    f"{label} {_shown(item)}{where} differs: {_shown_definition(same)} -> {_shown_definition(item)}"
                )
        elif same is not None:
            lines.append(f"{label} {_shown(same)}{where} is now named {_shown(item)} (the same definition)")
        if same is not None:
            left.remove(item)
            gone.remove(same)
    lines += [f"{label} {_shown(item)}{where} is left behind" for item in left]
    lines += [f"{label} {_shown(item)}{where} is missing" for item in gone]
    return lines


def _shown_definition(item: tuple[Any, ...]) -> str:
    if len(item) == 5 and isinstance(item[2], bool):  # a column: (name, type, nullable, default, identity)
        _, kind, nullable, default, identity = item
        shown = f"{kind} {'NULL' if nullable else 'NOT NULL'}"
        return shown + (f" DEFAULT {default}" if default != "None" else "") + (" IDENTITY" if identity else "")
    return " ".join(map(str, item[1:])) or "(none)"


_LABELS = {
    "columns": "column",
    "indexes": "index",
    "unique_constraints": "unique constraint",
    "foreign_keys": "foreign key",
    "primary_key": "primary key",
    "check_constraints": "check constraint",
}


def _shown(item: tuple[Any, ...]) -> str:
    name = item[0]
    if isinstance(name, tuple):
        return "(" + ", ".join(map(str, name)) + ")"
    return str(name) or "(unnamed) " + " ".join(map(str, item[1:]))


def document(
    *, tool: str, database: str | None, cases: Sequence[Case], exit_code: int, rebuilds: Sequence[Rebuild] = ()
) -> dict[str, Any]:
    """The JSON report (``docs/verify.schema.json``); ``rebuilds``: the stairway's rebuilds of the database."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool,
        "database": database,
        "exit_code": exit_code,
        "passed": sum(1 for c in cases if c.status == "passed"),
        "failed": sum(1 for c in cases if c.status == "failed"),
        "skipped": sum(1 for c in cases if c.status == "skipped"),
        "cases": [c.document() for c in cases],
        "rebuilds": [r.document() for r in rebuilds],
    }


_MARK = {"passed": "✅", "failed": "❌", "skipped": "⏭️"}


def text(report: dict[str, Any]) -> str:
    """The report as a terminal shows it."""
    lines = []
    for case in report["cases"]:
        lines.append(
            f"{case['status'].upper():<8} {case['name']}" + (f": {case['message']}" if case["message"] else "")
        )
        lines += [f"           {detail}" for detail in case["details"]]
    lines.append(f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped")
    lines += _rebuild_lines(report)
    return "\n".join(lines) + "\n"


def _rebuild_lines(report: dict[str, Any]) -> list[str]:
    rebuilds = report.get("rebuilds", [])
    if not rebuilds:
        return []
    lines = [f"The scratch database was rebuilt {len(rebuilds)} time{'s' if len(rebuilds) > 1 else ''}:"]
    for entry in rebuilds:
        lines.append(f"  - {Rebuild(entry['at'], entry['after'], entry['seconds'], entry['failed']).line()}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as a pull-request comment: a summary line, a table, the failures' details."""
    verdict = "passed" if report["failed"] == 0 else "failed"
    lines = [
        f"### migration-runner verify: {verdict}",
        "",
        f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped ({report['tool']}).",
        *_rebuild_lines(report),
        "",
        "| | check | result |",
        "|---|---|---|",
    ]
    for case in report["cases"]:
        result = case["message"].replace("|", "\\|") or "ok"
        lines.append(f"| {_MARK[case['status']]} | `{case['name']}` | {result} |")
    failed = [c for c in report["cases"] if c["status"] == "failed" and c["details"]]
    for case in failed:
        lines += ["", f"<details><summary><code>{case['name']}</code></summary>", "", "```"]
        lines += case["details"]
        lines += ["```", "</details>"]
    return "\n".join(lines) + "\n"


def junit(report: dict[str, Any], *, timestamp: datetime | None = None, hostname: str | None = None) -> bytes:
    """JUnit XML: one ``<testsuite>`` in ``<testsuites>``, a ``<testcase>`` per case (``<failure>``, ``<skipped>``).

    Valid against ``docs/junit.xsd``, the shape GitHub's and GitLab's test reports read,
    and against Apache Ant's own JUnit schema (the ``JUnit.xsd`` of windyroad/JUnit-Schema,
    which Jenkins' description follows): ``<testsuites>`` carries no attributes; the suite in it
    has ``package``, ``id``, ``hostname`` and ``timestamp`` (no zone, whole seconds), and holds
    ``<properties>`` before its cases and ``<system-out>``, ``<system-err>`` after them. Characters
    XML 1.0 cannot hold (control characters a database error may carry) are replaced with
    U+FFFD, so the file always parses.

    Args:
        report: the JSON report (:func:`document`).
        timestamp: when the run started (UTC); default now.
        hostname: the machine (a pod's name); default this one's.

    Returns:
        The file's bytes, UTF-8 with an XML declaration.
    """
    cases: list[dict[str, Any]] = report["cases"]
    counts = {
        "tests": str(len(cases)),
        "failures": str(report["failed"]),
        "errors": "0",
        "skipped": str(report["skipped"]),
        "time": f"{sum(c['seconds'] for c in cases):.3f}",
    }
    suites = ElementTree.Element("testsuites")
    started = (timestamp or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0, tzinfo=None)
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        {
            "name": "migration-runner verify",
            "package": "migration-runner",
            "id": "0",
            "hostname": hostname or socket.gethostname() or "localhost",
            "timestamp": started.isoformat(),
            **counts,
        },
    )
    ElementTree.SubElement(suite, "properties")
    for case in cases:
        element = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"verify.{case['check']}",
            name=_xml_text(case["name"]),
            time=f"{case['seconds']:.3f}",
        )
        message = _xml_text(case["message"])
        if case["status"] == "failed":
            failure = ElementTree.SubElement(element, "failure", message=message, type=case["check"])
            failure.text = _xml_text("\n".join([case["message"], *case["details"]]))
        elif case["status"] == "skipped":
            ElementTree.SubElement(element, "skipped", message=message)
    ElementTree.SubElement(suite, "system-out")
    ElementTree.SubElement(suite, "system-err")
    ElementTree.indent(suites)
    xml: bytes = ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


# What XML 1.0 cannot hold: C0 controls but tab, newline and carriage return; surrogates; U+FFFE, U+FFFF
# (https://www.w3.org/TR/xml/#charsets). ElementTree writes them as they are, and the file would not parse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)
