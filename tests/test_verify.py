"""verify: the pull-request checks on a scratch database, on real PostgreSQL, MariaDB and SQLite (Alembic, Django)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import jsonschema
import psycopg
import pytest
import sqlalchemy
import xmlschema
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    QUICKSTART,
    REPO,
    TEMPLATE_ENV_PY,
    Cli,
    copy_django_example,
    lock_key_for,
    make_project,
    mysql_query,
    query,
)

from runner import catalog, database, seed_data
from runner import verify as checks
from runner.errors import ConfigError

REPORT_SCHEMA = json.loads((REPO / "docs" / "verify.schema.json").read_text())
JUNIT_SCHEMA = xmlschema.XMLSchema(REPO / "docs" / "junit.xsd")

MODELS = """import sqlalchemy as sa

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),{extra}
)
sa.Index("ix_items_name", items.c.name)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
)
"""

REVISION = '''"""{message}"""
from alembic import op
import sqlalchemy as sa

revision = {revision!r}
down_revision = {down!r}


def upgrade():
{up}


def downgrade():
{down_body}
'''

ITEMS_UP = """    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )"""
ORDERS_UP = """    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
    )
    op.create_index("ix_items_name", "items", ["name"])"""
TAGS_UP = """    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))"""
TAGS_MODEL = """tags = sa.Table("tags", metadata, sa.Column("id", sa.Integer, primary_key=True))
"""
ORDERS_DOWN = """    op.drop_index("ix_items_name", table_name="items")
    op.drop_table("orders")"""


def project(
    root: Path,
    *,
    models: bool = True,
    extra_column: str = "",
    orders_down: str = ORDERS_DOWN,
    second_head: bool = False,
    merged: bool = False,
) -> Path:
    """An Alembic project with `items` (0001) and `orders` plus an index on items (0002), and models to match.

    ``second_head``: a second head 0002b beside 0002. ``merged``: a branch 0002t that creates `tags`, and
    the merge revision 0003 that joins it with 0002.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(QUICKSTART / "alembic.ini", root / "alembic.ini")
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    env_py = TEMPLATE_ENV_PY.read_text()
    if models:
        env_py = env_py.replace(
            "target_metadata = None",
            "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))\n"
            "from models import metadata as target_metadata",
        )
        (root / "models.py").write_text(MODELS.format(extra=extra_column) + (TAGS_MODEL if merged else ""))
    (root / "migrations" / "env.py").write_text(env_py)
    shutil.copy(QUICKSTART / "migrations" / "script.py.mako", root / "migrations" / "script.py.mako")
    files = [
        ("0001", None, "items", ITEMS_UP, '    op.drop_table("items")'),
        ("0002", "0001", "orders", ORDERS_UP, orders_down),
    ]
    if second_head:
        files.append(("0002b", "0001", "a second branch", "    pass", "    pass"))
    if merged:
        files.append(("0002t", "0001", "tags", TAGS_UP, '    op.drop_table("tags")'))
        files.append(("0003", ("0002", "0002t"), "merge", "    pass", "    pass"))
    for revision, down, message, up, down_body in files:
        (versions / f"{revision}_r.py").write_text(
            REVISION.format(message=message, revision=revision, down=down, up=up, down_body=down_body)
        )
    return root


def verify(
    cli: Cli, url: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[Any, dict[str, Any]]:
    """Run verify with --output json; the result, and the report validated against its schema ({} if none)."""
    env = {"MIGRATION_DATABASE_URL": url, **(env or {})}
    result = cli("verify", "--output", "json", *args, env=env, cwd=cwd, timeout=timeout)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    if report:
        jsonschema.validate(report, REPORT_SCHEMA)
    return result, report


def case_named(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The report's case called ``name``."""
    return next(case for case in report["cases"] if case["name"] == name)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {case["name"]: case["status"] for case in report["cases"]}


HEALTHY = {
    "single_head": "passed",
    "upgrade": "passed",
    "models_match": "passed",
    "backward_compatible": "passed",
    "up_down_consistency[0002 down]": "passed",
    "up_down_consistency[0001 down]": "passed",
    "up_down_consistency[0001 up]": "passed",
    "up_down_consistency[0002 up]": "passed",
    "downgrade_leaves_no_trace": "passed",
}


def check_junit(path: Path, report: dict[str, Any]) -> None:
    """The JUnit file is valid against docs/junit.xsd, and holds one testcase per case with the report's counts."""
    JUNIT_SCHEMA.validate(path)
    root = ElementTree.parse(path).getroot()  # noqa: S314  (our own file)
    assert root.tag == "testsuites" and not root.attrib  # Apache Ant's schema allows none there
    (suite,) = root.findall("testsuite")
    assert {"package", "id", "hostname", "timestamp"} <= set(suite.attrib)
    tags = [child.tag for child in suite]
    assert tags[0] == "properties" and tags[-2:] == ["system-out", "system-err"]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["name"] for c in report["cases"]]
    assert int(suite.get("tests", "-1")) == len(cases)
    assert int(suite.get("failures", "-1")) == sum(1 for c in cases if c.find("failure") is not None)
    assert int(suite.get("skipped", "-1")) == sum(1 for c in cases if c.find("skipped") is not None)
    assert all(float(c.get("time", "x")) >= 0 and c.get("classname", "").startswith("verify.") for c in cases)
    for case, element in zip(report["cases"], cases, strict=True):
        failure = element.find("failure")
        assert (failure is not None) == (case["status"] == "failed")
        if failure is not None:
            assert failure.get("message") == case["message"]
            assert all(detail in (failure.text or "") for detail in case["details"])


def test_a_healthy_project_passes_every_check(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """verify passes every check on a healthy project, writes valid JUnit, and leaves the database at head."""
    root = project(tmp_path / "p")
    junit = tmp_path / "verify.xml"

    result, report = verify(cli, pg_url, "--junit-xml", str(junit), cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    assert statuses(report) == HEALTHY
    check_junit(junit, report)
    # Documented: the scratch database is left at head.
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("0002",)]


@pytest.mark.parametrize("database", ["mariadb", "sqlite"])
def test_on_mariadb_and_sqlite_too(cli: Cli, mysql_url: str, tmp_path: Path, database: str) -> None:
    """verify passes the healthy project on MariaDB and SQLite too."""
    root = project(tmp_path / "p")
    url = mysql_url if database == "mariadb" else f"sqlite:///{tmp_path / 'scratch.db'}"

    result, report = verify(cli, url, cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    assert statuses(report) == HEALTHY
    if database == "mariadb":
        assert mysql_query(mysql_url, "SELECT version_num FROM alembic_version") == [("0002",)]


def test_a_model_column_no_revision_creates_fails_models_match(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A model column that no revision creates fails models_match, naming it."""
    root = project(tmp_path / "p", extra_column='\n    sa.Column("price", sa.Numeric(10, 2)),')

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1
    models = case_named(report, "models_match")
    assert models["status"] == "failed"
    assert "add_column items.price" in models["details"]
    assert "items.price" in models["message"]


def test_two_heads_fail_single_head_naming_both(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Two heads fail single_head naming both and the merge command; the other checks are skipped."""
    root = project(tmp_path / "p", second_head=True)

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1
    head = report["cases"][0]
    assert (head["name"], head["status"]) == ("single_head", "failed")
    assert "0002, 0002b" in head["message"] and "alembic merge heads" in head["message"]
    assert head["details"] == ["0002", "0002b"]
    assert {c["status"] for c in report["cases"][1:]} == {"skipped"}
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]  # nothing ran


def test_the_stairway_walks_through_a_merge_point(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Two branches and the merge revision that joins them: each revision is reverted alone, then applied again."""
    root = project(tmp_path / "p", merged=True)
    junit = tmp_path / "verify.xml"

    result, report = verify(cli, pg_url, "--junit-xml", str(junit), cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    stairway = [c for c in report["cases"] if c["check"] == "up_down_consistency"]
    downs = [c["revision"] for c in stairway if c["direction"] == "down"]
    ups = [c["revision"] for c in stairway if c["direction"] == "up"]
    assert downs[0] == "0003" and downs[-1] == "0001" and sorted(downs) == ["0001", "0002", "0002t", "0003"]
    assert ups == downs[::-1]
    assert {c["status"] for c in report["cases"]} == {"passed"}
    check_junit(junit, report)
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("0003",)]


def test_expected_heads_can_be_listed_and_the_stairway_reverts_each_branch_alone(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """Two heads on purpose: each head is reverted by itself (REV@-1), so no branch's tables go missing."""
    root = project(tmp_path / "p", second_head=True)

    result, report = verify(cli, pg_url, cwd=root, env={"MIGRATION_VERIFY_HEADS": "0002b,0002"})

    assert result.code == 0, result.stdout + result.stderr
    assert {c["status"] for c in report["cases"]} == {"passed"}
    downs = [c["revision"] for c in report["cases"] if c.get("direction") == "down"]
    assert sorted(downs) == ["0001", "0002", "0002b"] and downs[-1] == "0001"
    assert sorted(r[0] for r in query(pg_url, "SELECT version_num FROM alembic_version")) == ["0002", "0002b"]


@pytest.mark.parametrize(
    ("raising", "unlisted"),
    [
        ('    raise NotImplementedError("orders are kept")', "skipped"),
        # The form ruff's EM rules enforce: the message in a variable first.
        ('    msg = "orders are kept"\n    raise NotImplementedError(msg)', "skipped"),
        ('    msg = f"orders are kept in {__name__}"\n    raise ValueError(msg)', "failed"),
    ],
    ids=["one-statement", "message-first", "f-string-first"],
)
def test_a_downgrade_that_raises_by_design_fails_unless_listed_or_not_implemented(
    cli: Cli, pg_url: str, tmp_path: Path, raising: str, unlisted: str
) -> None:
    """A downgrade that raises, in any of its usual spellings, fails the stairway unless listed as irreversible;
    NotImplementedError says "by design" itself (pytest-alembic stops there without failing), so it is skipped.

    downgrade itself reads all of them the same way: 78 before anything is reverted, naming the revision.
    """
    root = project(tmp_path / "p", orders_down=raising)

    result, report = verify(cli, pg_url, cwd=root)
    refused = cli("downgrade", "base", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)
    query(pg_url, "DROP TABLE orders, items, alembic_version, migration_runner_history")
    listed, listed_report = verify(cli, pg_url, cwd=root, env={"MIGRATION_VERIFY_IRREVERSIBLE": "0002"})

    assert refused.code == 78, refused.stdout
    assert "0002 (its downgrade() only raises" in refused.one("config.invalid")["error"]

    assert result.code == (1 if unlisted == "failed" else 0), result.stdout + result.stderr
    down = case_named(report, "up_down_consistency[0002 down]")
    assert down["status"] == unlisted
    assert "MIGRATION_VERIFY_IRREVERSIBLE" in down["message"]
    assert listed.code == 0, listed.stdout + listed.stderr
    assert statuses(listed_report)["up_down_consistency[0002 down]"] == "skipped"
    assert "only raises" in case_named(listed_report, "up_down_consistency[0002 down]")["message"]


def test_a_listed_downgrade_that_raises_in_any_shape_is_skipped(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A raise the source reading does not see (inside an if) still counts as by design when it is listed."""
    root = project(tmp_path / "p", orders_down='    if __name__:\n        raise ValueError("orders are kept")')

    unlisted, _ = verify(cli, pg_url, cwd=root)
    query(pg_url, "DROP TABLE orders, items, alembic_version, migration_runner_history")
    listed, report = verify(cli, pg_url, cwd=root, env={"MIGRATION_VERIFY_IRREVERSIBLE": "0002"})

    assert unlisted.code == 1, unlisted.stdout
    assert listed.code == 0, listed.stdout + listed.stderr
    case = case_named(report, "up_down_consistency[0002 down]")
    assert case["status"] == "skipped" and "orders are kept" in case["message"]


def test_an_empty_downgrade_under_a_data_only_upgrade_passes(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """A revision that only reads and checks rows changes no schema: its empty downgrade is right, and passes.

    It was failed from its text alone ("its downgrade() does nothing"), the false alarm most common over
    pytest-alembic's example projects.
    """
    root = project(tmp_path / "p")
    checks_rows = (
        '    rows = op.get_bind().execute(sa.text("SELECT count(*) FROM orders")).scalar()\n    assert rows == 0'
    )
    (root / "migrations" / "versions" / "0003_r.py").write_text(
        REVISION.format(message="check", revision="0003", down="0002", up=checks_rows, down_body="    pass")
    )

    result, report = verify(cli, any_url, cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    assert statuses(report)["up_down_consistency[0003 down]"] == "passed"
    assert statuses(report)["downgrade_leaves_no_trace"] == "passed"


def test_an_empty_downgrade_under_a_schema_change_fails_as_a_trace(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """An empty downgrade whose upgrade created a table: judged by the schema it leaves, named as a leftover."""
    root = project(tmp_path / "p", orders_down="    pass")

    result, report = verify(cli, pg_url, cwd=root)
    down, trace = case_named(report, "up_down_consistency[0002 down]"), case_named(report, "downgrade_leaves_no_trace")

    assert (result.code, down["status"], trace["status"]) == (1, "failed", "failed")
    assert "does nothing, and its upgrade changed the schema" in down["message"] and "orders" in down["message"]
    assert all(line.startswith("0002: ") for line in trace["details"])


def add_revision(root: Path, revision: str, down: str, up: str, down_body: str) -> None:
    """Add revision ``revision`` after ``down`` to a project() project; bodies are indented statements."""
    (root / "migrations" / "versions" / f"{revision}_r.py").write_text(
        REVISION.format(message=revision, revision=revision, down=down, up=up, down_body=down_body)
    )


def test_no_trace_sees_types_sequences_views_and_functions_once(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A downgrade that leaves an enum type, a sequence, a view and a function: each named once, at its revision.

    Only tables were compared before: these passed, and the re-upgrade then failed on "already exists"
    under the wrong case. Now the re-upgrade of that revision is skipped, saying why.
    """
    root = project(tmp_path / "p")
    up = "\n".join(
        f'    op.execute("{sql}")'
        for sql in (
            "CREATE TYPE mood AS ENUM ('ok', 'sad')",
            "CREATE SEQUENCE counter",
            "CREATE VIEW busy AS SELECT count(*) AS n FROM orders",
            "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'",
        )
    )
    add_revision(root, "0003", "0002", up, '    op.execute("DROP VIEW busy")\n    op.execute("DROP SEQUENCE counter")')

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1
    trace = case_named(report, "downgrade_leaves_no_trace")
    assert trace["status"] == "failed"
    assert sorted(trace["details"]) == [
        "0003: enum type public.mood is left behind",
        "0003: function public.answer() is left behind",
    ]
    up_again = case_named(report, "up_down_consistency[0003 up]")
    assert up_again["status"] == "skipped" and "downgrade_leaves_no_trace" in up_again["message"]


def test_a_column_its_downgrade_restores_otherwise_is_one_line(
    cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path
) -> None:
    """A downgrade that puts a column back with another type: one 'differs' line, not 'left behind' and 'missing'.

    Seen on Optuna's history (v3.0.0.b): the same column was reported twice, as if two.
    """
    root = project(tmp_path / "p", models=False)
    add_revision(
        root,
        "0003",
        "0002",
        '    op.alter_column("items", "name", type_=sa.String(200), existing_nullable=False)',
        '    op.alter_column("items", "name", type_=sa.String(50), existing_nullable=False)',
    )

    for url in (pg_url, mysql_url):  # SQLite keeps no length: there is nothing to differ
        result, report = verify(cli, url, cwd=root)

        assert result.code == 1, result.stdout + result.stderr
        (line,) = case_named(report, "downgrade_leaves_no_trace")["details"]
        assert line == "0003: column name on items differs: VARCHAR(100) NOT NULL -> VARCHAR(50) NOT NULL", line


def test_a_table_left_in_another_schema_is_named(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A downgrade that drops its table in `public` but forgets the one it made in schema `audit` fails no_trace.

    Only the version table's schema was compared: the stairway passed, and the table stayed.
    """
    root = project(tmp_path / "p")
    add_revision(
        root,
        "0003",
        "0002",
        '    op.execute("CREATE SCHEMA IF NOT EXISTS audit")\n'
        '    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True), schema="audit")\n'
        '    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))',
        '    op.drop_table("notes")',
    )

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1, result.stdout + result.stderr
    trace = case_named(report, "downgrade_leaves_no_trace")
    assert trace["details"] == ["0003: table audit.events is left behind"]


def test_a_renamed_constraint_is_named_as_a_rename_once(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A downgrade that restores a unique constraint under another name: one 'is now named' line, not two."""
    root = project(tmp_path / "p")
    add_revision(
        root,
        "0003",
        "0002",
        '    op.execute("ALTER TABLE items ADD CONSTRAINT uq_a UNIQUE (name)")',
        '    op.execute("ALTER TABLE items DROP CONSTRAINT IF EXISTS uq_a")\n'
        '    op.execute("ALTER TABLE items DROP CONSTRAINT IF EXISTS uq_c")',
    )
    add_revision(
        root,
        "0004",
        "0003",
        '    op.execute("ALTER TABLE items RENAME CONSTRAINT uq_a TO uq_b")',
        '    op.execute("ALTER TABLE items RENAME CONSTRAINT uq_b TO uq_c")',
    )

    result, report = verify(cli, pg_url, cwd=root)

    trace = case_named(report, "downgrade_leaves_no_trace")
    assert result.code == 1 and trace["status"] == "failed"
    # Once: PostgreSQL's index behind the constraint is the constraint (it was a second line, seen on allauth).
    assert trace["details"] == ["0004: unique constraint uq_a on items is now named uq_c (the same definition)"]


def test_no_trace_sees_a_view_left_behind_on_each_database(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """A view the downgrade forgets is named on PostgreSQL, MariaDB and SQLite alike."""
    root = project(tmp_path / "p")
    add_revision(root, "0003", "0002", '    op.execute("CREATE VIEW busy AS SELECT id FROM orders")', "    pass")

    result, report = verify(cli, any_url, cwd=root)

    assert result.code == 1
    trace = case_named(report, "downgrade_leaves_no_trace")
    assert len(trace["details"]) == 1 and trace["details"][0].startswith("0003: view ")
    assert trace["details"][0].endswith("busy is left behind (its downgrade does nothing)")


def test_a_declared_noop_downgrade_keeps_what_its_upgrade_made(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """A downgrade empty on purpose (an idempotent view nothing depends on): listed, the view stays and it passes."""
    root = project(tmp_path / "p")
    view = (
        '    create = "CREATE VIEW IF NOT EXISTS" if op.get_bind().dialect.name == "sqlite" '
        'else "CREATE OR REPLACE VIEW"\n'
        '    op.execute(create + " busy AS SELECT 1 AS one")'
    )
    add_revision(root, "0003", "0002", view, "    pass")

    declared, report = verify(cli, any_url, cwd=root, env={"MIGRATION_NOOP_DOWNGRADES": "0003"})

    assert declared.code == 0, declared.stdout + declared.stderr
    assert statuses(report)["up_down_consistency[0003 down]"] == "passed"
    assert statuses(report)["up_down_consistency[0003 up]"] == "passed"
    assert statuses(report)["downgrade_leaves_no_trace"] == "passed"


def chain(root: Path, count: int, downs: dict[str, str] | None = None, ups: dict[str, str] | None = None) -> Path:
    """An Alembic project of ``count`` revisions 0001, 0002, ...; revision 000K creates table tK and drops it.

    ``downs`` and ``ups`` replace a revision's bodies (indented statements), by its id.
    """
    project(root, models=False)
    for path in (root / "migrations" / "versions").glob("*.py"):
        path.unlink()
    for number in range(1, count + 1):
        revision = f"{number:04}"
        up = f'    op.create_table("t{number}", sa.Column("id", sa.Integer, primary_key=True))'
        down_body = f'    op.drop_table("t{number}")'
        add_revision(
            root,
            revision,
            f"{number - 1:04}" if number > 1 else None,  # type: ignore[arg-type]
            (ups or {}).get(revision, up),
            (downs or {}).get(revision, down_body),
        )
    return root


def stairway(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The stairway's cases by (revision, direction)."""
    return {(c["revision"], c["direction"]): c for c in report["cases"] if c["check"] == "up_down_consistency"}


def test_the_stairway_goes_on_past_an_irreversible_step_on_each_database(
    cli: Cli, any_url: str, tmp_path: Path
) -> None:
    """A listed irreversible downgrade near the head no longer ends the stairway: each revision below has its cases.

    Before, 0003, 0002 and 0001 got no down or up case at all. Now the database is rebuilt at 0003 (everything
    dropped, 0001-0003 applied again), the rebuild is in the summary, and verify ends at the head.
    """
    root = chain(tmp_path / "p", 5, downs={"0004": '    raise RuntimeError("t4 keeps the audit trail")'})

    result, report = verify(cli, any_url, cwd=root, env={"MIGRATION_VERIFY_IRREVERSIBLE": "0004"})

    assert result.code == 0, result.stdout + result.stderr
    cases = stairway(report)
    assert len(cases) == 10  # every revision, both ways
    assert (
        cases[("0004", "down")]["status"] == "skipped"
        and "MIGRATION_VERIFY_IRREVERSIBLE" in (cases[("0004", "down")]["message"])
    )
    assert cases[("0004", "up")]["status"] == "skipped"
    assert "not applied again after its downgrade: its downgrade cannot run" in cases[("0004", "up")]["message"]
    assert {key: c["status"] for key, c in cases.items() if key[0] != "0004"} == dict.fromkeys(
        [(f"{n:04}", way) for n in (1, 2, 3, 5) for way in ("down", "up")], "passed"
    )
    (rebuild,) = report["rebuilds"]
    assert (rebuild["at"], rebuild["after"], rebuild["failed"]) == ("0003", "the downgrade of 0004", "")
    for shown in (checks.text(report), checks.markdown(report)):  # what the terminal and the pull request show
        assert "The scratch database was rebuilt 1 time:" in shown
        assert "rebuilt at 0003 after the downgrade of 0004" in shown
    assert statuses(report)["downgrade_leaves_no_trace"] == "passed"
    assert cli("check", env={"MIGRATION_DATABASE_URL": any_url}, cwd=root).code == 0  # at the head again


def test_a_downgrade_that_fails_fails_its_own_case_only(cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path) -> None:
    """A real downgrade bug fails its down case; its up case is skipped saying why; every other revision passes."""
    root = chain(tmp_path / "p", 4, downs={"0002": '    op.drop_table("no_such_table")'})

    for url in (pg_url, mysql_url):
        result, report = verify(cli, url, cwd=root)

        assert result.code == 1, result.stdout + result.stderr
        cases = stairway(report)
        assert cases[("0002", "down")]["status"] == "failed"
        assert "the downgrade of 0002 failed" in cases[("0002", "down")]["message"]
        assert cases[("0002", "up")]["status"] == "skipped"
        assert "its downgrade failed" in cases[("0002", "up")]["message"]
        assert "above" not in cases[("0002", "up")]["message"]
        assert [key for key, c in cases.items() if c["status"] == "passed"] == [
            ("0004", "down"),
            ("0003", "down"),
            ("0001", "down"),
            ("0001", "up"),
            ("0003", "up"),
            ("0004", "up"),
        ]
        assert [(r["at"], r["after"]) for r in report["rebuilds"]] == [("0001", "the downgrade of 0002")]


def test_a_trace_is_reported_once_and_the_revisions_below_are_still_tested(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """A downgrade that forgets its table fails no_trace once; the database is rebuilt and the rest pass."""
    root = chain(tmp_path / "p", 4, downs={"0003": "    pass"}, ups={"0003": '    op.create_table("t3")'})
    (root / "migrations" / "versions" / "0003_r.py").write_text(
        (root / "migrations" / "versions" / "0003_r.py")
        .read_text()
        .replace('op.create_table("t3")', 'op.create_table("t3", sa.Column("id", sa.Integer))')
    )

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1
    cases = stairway(report)
    assert cases[("0003", "down")]["status"] == "failed"
    assert cases[("0003", "up")]["status"] == "skipped"
    assert "downgrade_leaves_no_trace" in cases[("0003", "up")]["message"]
    assert all(c["status"] == "passed" for key, c in cases.items() if key[0] != "0003")
    trace = case_named(report, "downgrade_leaves_no_trace")
    assert trace["details"] == ["0003: table t3 is left behind (its downgrade does nothing)"]
    assert [r["at"] for r in report["rebuilds"] if not r["after"].startswith("backward_compatible")] == ["0002"]


def test_a_rebuild_drops_every_kind_of_object_a_revision_made(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """0001 makes a schema, types, a sequence, a view, a routine, a trigger (each database's own): a rebuild
    below 0002 drops them all, so 0001's down and up still pass after it, and the version schema stays."""
    objects = {
        "postgresql": [
            "CREATE SCHEMA app",
            "CREATE TABLE app.accounts (id serial PRIMARY KEY, mood text)",
            "CREATE TYPE mood AS ENUM ('ok', 'sad')",
            "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
            "CREATE SEQUENCE invoice_numbers",
            "CREATE VIEW app.busy AS SELECT id FROM app.accounts",
            "CREATE MATERIALIZED VIEW counted AS SELECT count(*) AS n FROM app.accounts",
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
            "CREATE TRIGGER touched BEFORE UPDATE ON app.accounts FOR EACH ROW EXECUTE FUNCTION touch()",
            "CREATE EXTENSION IF NOT EXISTS citext",
            "INSERT INTO app.accounts (mood) VALUES ('ok')",
        ],
        "mysql": [
            "CREATE TABLE accounts (id integer PRIMARY KEY AUTO_INCREMENT, parent integer,"
            " FOREIGN KEY (parent) REFERENCES accounts (id))",
            "CREATE SEQUENCE invoice_numbers",
            "CREATE VIEW busy AS SELECT id FROM accounts",
            "CREATE PROCEDURE touch() SELECT 1",
            "CREATE TRIGGER touched BEFORE UPDATE ON accounts FOR EACH ROW SET NEW.parent = NEW.parent",
            "CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1",
            "INSERT INTO accounts (id, parent) VALUES (1, NULL), (2, 1)",
        ],
        "sqlite": [
            "CREATE TABLE accounts (id integer PRIMARY KEY AUTOINCREMENT, parent integer REFERENCES accounts (id))",
            "CREATE VIEW busy AS SELECT id FROM accounts",
            "CREATE TRIGGER touched AFTER UPDATE ON accounts BEGIN SELECT 1; END",
            "INSERT INTO accounts (id, parent) VALUES (1, NULL), (2, 1)",
        ],
    }
    undo = {
        "postgresql": [
            "DROP EXTENSION citext",
            "DROP MATERIALIZED VIEW counted",
            "DROP SCHEMA app CASCADE",
            "DROP FUNCTION touch()",
            "DROP SEQUENCE invoice_numbers",
            "DROP DOMAIN positive",
            "DROP TYPE mood",
        ],
        "mysql": [
            "DROP EVENT tidy",
            "DROP PROCEDURE touch",
            "DROP VIEW busy",
            "DROP SEQUENCE invoice_numbers",
            "DROP TABLE accounts",
        ],
        "sqlite": ["DROP VIEW busy", "DROP TABLE accounts"],
    }
    up = (
        f"    statements = {objects!r}\n"
        '    for statement in statements["sqlite" if op.get_bind().dialect.name == "sqlite" else '
        'op.get_bind().dialect.name.replace("mariadb", "mysql")]:\n'
        "        op.execute(statement)"
    )
    down = up.replace(repr(objects), repr(undo))
    root = chain(tmp_path / "p", 2, ups={"0001": up}, downs={"0001": down, "0002": "    raise NotImplementedError"})

    result, report = verify(cli, any_url, cwd=root, env={"MIGRATION_VERIFY_IRREVERSIBLE": "0002"})

    assert result.code == 0, result.stdout + result.stderr
    # The stairway's rebuild below 0002, then backward_compatible's: 0002 cannot go down to the released state.
    assert [(r["at"], r["after"].split(":")[0]) for r in report["rebuilds"]] == [
        ("0001", "the downgrade of 0002"),
        ("0001", "backward_compatible"),
    ]
    assert {key: c["status"] for key, c in stairway(report).items() if key[0] == "0001"} == {
        ("0001", "down"): "passed",
        ("0001", "up"): "passed",
    }


@pytest.mark.parametrize("name", ['odd"name', "per%cent", "back`tick", "sp ace", "ünï", "colon:name"])
def test_drop_everything_takes_any_name_and_leaves_nothing(any_url: str, name: str) -> None:
    """The rebuild's drop quotes every name the server holds: nothing is left, and the kept schema stays."""
    engine = sqlalchemy.create_engine(any_url.replace("mysql://", "mysql+pymysql://"))
    quote = engine.dialect.identifier_preparer.quote_identifier
    try:
        with engine.connect() as connection:
            kept = catalog.baseline(connection)
            for statement in (
                f"CREATE TABLE {quote(name)} (id integer PRIMARY KEY)",
                f"CREATE TABLE {quote(name + '2')} (id integer REFERENCES {quote(name)} (id))",
                f"CREATE VIEW {quote(name + 'v')} AS SELECT id FROM {quote(name)}",
            ):
                database.execute_statement(connection, statement)
            connection.commit()

            dropped = catalog.drop_everything(connection, kept)

            assert dropped >= 3
            assert catalog.application_objects(connection, ()) == []
            assert catalog.baseline(connection) == kept
    finally:
        engine.dispose()


def test_no_rebuild_on_a_database_that_held_something_and_its_data_stays(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """--allow-nonempty: verify never drops everything; the cases below a failed step say why they were not run."""
    query(pg_url, "CREATE TABLE customer_notes (body text); INSERT INTO customer_notes VALUES ('keep me')")
    root = chain(tmp_path / "p", 3, downs={"0002": '    op.drop_table("no_such_table")'})

    result, report = verify(cli, pg_url, "--allow-nonempty", cwd=root)

    assert result.code == 1
    cases = stairway(report)
    assert cases[("0001", "down")]["status"] == "skipped"
    assert "--allow-nonempty" in cases[("0001", "down")]["message"]
    assert report["rebuilds"] == []
    assert query(pg_url, "SELECT body FROM customer_notes") == [("keep me",)]


@pytest.mark.parametrize(
    "setting",
    [
        ("MIGRATION_VERIFY_IRREVERSIBLE", "0002,0003", "MIGRATION_VERIFY_IRREVERSIBLE names 0003"),
        ("MIGRATION_VERIFY_HEADS", "0002,02b", "MIGRATION_VERIFY_HEADS names 02b"),
        ("MIGRATION_VERIFY_HEADS", "", "MIGRATION_VERIFY_HEADS is empty"),
    ],
)
def test_a_revision_the_verify_settings_name_must_exist(
    cli: Cli, pg_url: str, tmp_path: Path, setting: tuple[str, str, str]
) -> None:
    """A typo would make the exception list silently useless: 78 before anything runs."""
    variable, value, said = setting
    root = project(tmp_path / "p")

    result, report = verify(cli, pg_url, cwd=root, env={variable: value})

    assert (result.code, report) == (78, {}), result.stdout + result.stderr
    assert said in result.one("config.invalid")["error"]
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_a_downgrade_that_drops_the_wrong_table_fails_the_stairway_naming_it(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """A downgrade that drops the wrong table fails up_down_consistency, naming the table."""
    root = project(tmp_path / "p", orders_down='    op.drop_table("items")')
    junit = tmp_path / "verify.xml"

    result, report = verify(cli, pg_url, "--junit-xml", str(junit), cwd=root)

    assert result.code == 1
    check_junit(junit, report)
    failed = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed[0]["name"] == "up_down_consistency[0002 down]"
    assert (failed[0]["revision"], failed[0]["direction"]) == ("0002", "down")
    assert "items" in failed[0]["message"]


def test_a_downgrade_that_forgets_an_index_is_named(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A downgrade that leaves an index behind fails downgrade_leaves_no_trace, naming it."""
    root = project(tmp_path / "p", orders_down='    op.drop_table("orders")')

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1
    trace = case_named(report, "downgrade_leaves_no_trace")
    assert trace["status"] == "failed"
    assert trace["details"] == ["0002: index ix_items_name on items is left behind"]
    assert "ix_items_name" in trace["message"] and "0002" in trace["message"]


def packaged_models(root: Path, *, env_imports: str) -> Path:
    """A project whose models live in package `shop`: `shop.models` holds the declarative base, `items` and
    `audit` one model each; env.py imports `env_imports` after the base. The revisions create `items` only."""
    project(root, models=False)
    (root / "migrations" / "versions" / "0002_r.py").unlink()
    models = root / "shop" / "models"
    models.mkdir(parents=True)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "__main__.py").write_text("open('main-ran', 'w').close()\n")
    (root / "shop" / "broken.py").write_text("raise RuntimeError('needs a running server')\n")
    (models / "__init__.py").write_text(
        "from sqlalchemy.orm import DeclarativeBase\n\n\nclass Base(DeclarativeBase):\n    pass\n"
    )
    (models / "items.py").write_text(
        "import sqlalchemy as sa\nfrom sqlalchemy.orm import Mapped, mapped_column\n\n"
        "from shop.models import Base\n\n\n"
        "class Item(Base):\n    __tablename__ = 'items'\n    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    name: Mapped[str] = mapped_column(sa.String(100))\n"
    )
    (models / "audit.py").write_text(
        "from sqlalchemy.orm import Mapped, mapped_column\n\nfrom shop.models import Base\n\n\n"
        "class AuditLog(Base):\n    __tablename__ = 'audit_log'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
    )
    env_py = root / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "target_metadata = None",
            "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))\n"
            f"from shop.models import Base\n{env_imports}\ntarget_metadata = Base.metadata",
        )
    )
    return root


def test_a_model_env_py_never_imports_fails_models_match_naming_its_module(
    cli: Cli, any_url: str, tmp_path: Path
) -> None:
    """pytest-alembic's test_all_models_register_on_metadata: `audit` defines a table env.py never loads.

    Autogenerate cannot see it, so `alembic check` passes and models_match passed before. Now every module of
    the package is imported: the table that appears only then fails models_match, naming its module. A module
    that fails to import is passed over; `__main__` is never run.
    """
    root = packaged_models(tmp_path / "p", env_imports="import shop.models.items")

    result, report = verify(cli, any_url, cwd=root)

    assert result.code == 1, result.stdout + result.stderr
    models = case_named(report, "models_match")
    assert models["status"] == "failed"
    assert models["details"] == ["not on target_metadata when env.py runs: table audit_log (shop.models.audit)"]
    assert models["message"].startswith("a model is not on target_metadata when env.py runs: table audit_log")
    assert not (root / "main-ran").exists()


def test_models_env_py_imports_all_pass_and_a_single_file_says_why_it_was_not_walked(
    cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path
) -> None:
    """Every model module imported by env.py: models_match passes. Models in one file beside alembic.ini: there
    is no package to walk, and the passed case says so in its details."""
    root = packaged_models(tmp_path / "p", env_imports="import shop.models.items, shop.models.audit")
    add_revision(
        root, "0002", "0001", '    op.create_table("audit_log", sa.Column("id", sa.Integer, primary_key=True))', ""
    )
    (root / "migrations" / "versions" / "0002_r.py").write_text(
        (root / "migrations" / "versions" / "0002_r.py")
        .read_text()
        .replace("def downgrade():\n", 'def downgrade():\n    op.drop_table("audit_log")\n')
    )
    single = project(tmp_path / "single")

    packaged, packaged_report = verify(cli, pg_url, cwd=root)
    alone, alone_report = verify(cli, mysql_url, cwd=single)

    assert packaged.code == 0, packaged.stdout + packaged.stderr
    assert case_named(packaged_report, "models_match")["details"] == []
    assert alone.code == 0, alone.stdout + alone.stderr
    (said,) = case_named(alone_report, "models_match")["details"]
    assert said.startswith("model registration not checked: target_metadata comes from no package")


UNIQUE_NAMES = '    op.create_index("ux_items_name", "items", ["name"], unique=True)'
UNIQUE_NAMES_DOWN = '    op.drop_index("ux_items_name", table_name="items")'


def test_revision_data_meets_a_unique_revision_with_real_rows(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """pytest-alembic's revision data: rows put in place just before 0003 make its unique index fail, as production
    would; on the empty scratch database it passed. A .py file's seed(connection) does the same."""
    root = project(tmp_path / "p", models=False)
    add_revision(root, "0003", "0002", UNIQUE_NAMES, UNIQUE_NAMES_DOWN)
    sql_dir, py_dir = tmp_path / "sql-data", tmp_path / "py-data"
    sql_dir.mkdir()
    py_dir.mkdir()
    (sql_dir / "0003.sql").write_text(
        "-- two products of one name, as production has them\n"
        "INSERT INTO items (id, name) VALUES (1, 'shirt; blue');\n"
        "INSERT INTO items (id, name) VALUES (2, 'shirt; blue');\n"
    )
    (sql_dir / "README.md").write_text("not data\n")
    (py_dir / "0003.py").write_text(
        "import sqlalchemy as sa\n\n\ndef seed(connection):\n"
        "    connection.execute(sa.text(\"INSERT INTO items (id, name) VALUES (1, '50%'), (2, '50%')\"))\n"
    )

    empty, _ = verify(cli, any_url, cwd=root)
    reset(any_url)
    seeded_sql, sql_report = verify(cli, any_url, "--data-dir", str(sql_dir), cwd=root)
    reset(any_url)
    seeded_py, py_report = verify(cli, any_url, cwd=root, env={"MIGRATION_VERIFY_DATA_DIR": str(py_dir)})

    assert empty.code == 0, empty.stdout + empty.stderr
    for result, report in ((seeded_sql, sql_report), (seeded_py, py_report)):
        assert result.code == 1, result.stdout + result.stderr
        upgrade = case_named(report, "upgrade")
        assert upgrade["status"] == "failed" and upgrade["message"].startswith("revision 0003 failed on the way up")
        assert [e["revision"] for e in result.named("verify.data_put_in_place")] == ["0003"]


def reset(url: str) -> None:
    """Empty the test's database again (PostgreSQL, MariaDB or the SQLite file) for a second verify."""
    engine = sqlalchemy.create_engine(url.replace("mysql://", "mysql+pymysql://"))
    try:
        with engine.connect() as connection:
            catalog.drop_everything(connection, catalog.baseline(connection))
    finally:
        engine.dispose()


def test_revision_data_goes_into_the_stairway_and_a_rebuild(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Rows put in place before 0002 stay through the upgrade; a rebuild puts them in place again before 0002."""
    root = chain(tmp_path / "p", 3, downs={"0003": '    raise NotImplementedError("kept")'})
    data = tmp_path / "data"
    data.mkdir()
    (data / "0002.sql").write_text("INSERT INTO t1 (id) VALUES (1), (2), (3);")

    result, report = verify(
        cli, pg_url, "--data-dir", str(data), cwd=root, env={"MIGRATION_VERIFY_IRREVERSIBLE": "0003"}
    )

    assert result.code == 0, result.stdout + result.stderr
    assert [r["at"] for r in report["rebuilds"] if not r["after"].startswith("backward_compatible")] == ["0002"]
    # The upgrade, the stairway's rebuild below 0003, and backward_compatible's (0003 cannot go down).
    assert [e["revision"] for e in result.named("verify.data_put_in_place")] == ["0002", "0002", "0002"]


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"0009.sql": "SELECT 1"}, "holds 0009.sql, and this project has no revision 0009"),
        ({"0002.sql": "SELECT 1", "0002.py": "def seed(connection): pass"}, "both 0002.py and 0002.sql"),
        ({"0002.py": "ROWS = []"}, "0002.py defines no seed(connection) function"),
        (None, "cannot be read"),
    ],
    ids=["unknown-revision", "two-files", "no-seed", "missing-directory"],
)
def test_a_bad_data_directory_is_78_before_anything_runs(
    cli: Cli, pg_url: str, tmp_path: Path, files: dict[str, str] | None, said: str
) -> None:
    """A typo in the data directory would seed nothing in silence: 78, naming the file, and nothing changed."""
    root = project(tmp_path / "p")
    data = tmp_path / "data"
    if files is not None:
        data.mkdir()
        for name, body in files.items():
            (data / name).write_text(body)

    result, _ = verify(cli, pg_url, "--data-dir", str(data), cwd=root)

    assert result.code == 78, result.stdout + result.stderr
    assert said in result.one("config.invalid")["error"]
    assert query(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=12), max_size=4))
def test_any_file_name_in_a_data_directory_is_read_or_refused_in_one_line(names: list[str]) -> None:
    """Whatever a data directory holds, reading it gives a mapping or one ConfigError line, never another error."""
    with tempfile.TemporaryDirectory() as directory:
        for name in names:
            with contextlib.suppress(OSError, ValueError):  # a name the file system refuses is no input
                (Path(directory) / f"{name}.sql").write_text("SELECT 1")
        try:
            found = seed_data.read_directory(Path(directory), {"0001", "0002", "shop.0001_initial"})
        except ConfigError as error:
            assert "\n" not in str(error)
        else:
            assert set(found) <= {"0001", "0002", "shop.0001_initial"}


def test_env_py_without_target_metadata_skips_models_match_and_passes(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Without target_metadata, models_match is skipped and verify passes."""
    root = project(tmp_path / "p", models=False)

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 0, result.stdout
    models = case_named(report, "models_match")
    assert models["status"] == "skipped" and "target_metadata" in models["message"]
    assert {c["status"] for c in report["cases"] if c["name"] != "models_match"} == {"passed"}


def test_a_nonempty_database_is_78_and_nothing_changes(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """verify on a database with tables is 78 naming them; --allow-nonempty runs it; production refuses."""
    root = project(tmp_path / "p")
    query(pg_url, "CREATE TABLE customers (id integer)")

    result, report = verify(cli, pg_url, cwd=root)
    untouched = query(pg_url, "SELECT to_regclass('alembic_version'), to_regclass('migration_runner_history')")
    allowed, allowed_report = verify(cli, pg_url, "--allow-nonempty", cwd=root)

    assert result.code == 78 and report == {}
    assert "customers" in result.one("config.invalid")["error"]
    assert untouched == [(None, None)]  # nothing ran
    # --allow-nonempty runs the checks, and the table no model describes is named.
    assert allowed.code == 1, allowed.stdout
    assert {c["name"]: c["details"] for c in allowed_report["cases"]}["models_match"] == ["remove_table customers"]
    assert query(pg_url, "SELECT count(*) FROM customers") == [(0,)]
    # Never in production, where a database with tables holds data and the stairway would revert it.
    production, _ = verify(cli, pg_url, "--allow-nonempty", cwd=root, env={"MIGRATION_ENVIRONMENT": "production"})
    assert production.code == 78
    assert "refused in the production environment" in production.one("config.invalid")["error"]


def test_the_guard_sees_every_schema_and_every_kind_of_object(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Tables with data in schema app, and a type, a function, a view and a sequence in public: 78 naming them.

    The guard once read the version table's schema only, so an application kept elsewhere passed it.
    """
    root = project(tmp_path / "p")
    query(pg_url, "CREATE SCHEMA app; CREATE TABLE app.orders (id int); INSERT INTO app.orders VALUES (1)")

    in_app = cli("verify", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)
    query(pg_url, "DROP SCHEMA app CASCADE")
    kinds = {}
    for kind, sql in (
        ("enum type", "CREATE TYPE mood AS ENUM ('ok')"),
        ("function", "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'"),
        ("view", "CREATE VIEW v AS SELECT 1 AS one"),
        ("sequence", "CREATE SEQUENCE counter"),
    ):
        query(pg_url, sql)
        kinds[kind] = cli("verify", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)
        query(
            pg_url,
            "DROP TYPE IF EXISTS mood; DROP FUNCTION IF EXISTS answer(); DROP VIEW IF EXISTS v; "
            "DROP SEQUENCE IF EXISTS counter",
        )
    query(pg_url, "; ".join(f"CREATE TABLE t{n} (id int)" for n in range(12)))
    many = cli("verify", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)

    assert in_app.code == 78, in_app.stdout
    assert "app.orders (table)" in in_app.one("config.invalid")["error"]
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]  # nothing ran
    named = {"enum type": "public.mood", "function": "public.answer", "view": "public.v", "sequence": "public.counter"}
    for kind, result in kinds.items():
        assert result.code == 78, (kind, result.stdout)
        assert f"{named[kind]} ({kind})" in result.one("config.invalid")["error"]
    error = many.one("config.invalid")["error"]
    assert many.code == 78 and error.count("(table)") == 10 and ", and more" in error


@pytest.mark.parametrize("database", ["mariadb", "sqlite"])
def test_the_guard_sees_views_and_routines_on_mariadb_and_sqlite(
    cli: Cli, database: str, mysql_url: str, tmp_path: Path
) -> None:
    """A view (and on MariaDB a procedure) makes a database no scratch database there too: 78 naming it."""
    root = project(tmp_path / "p")
    url = mysql_url if database == "mariadb" else f"sqlite:///{tmp_path / 'scratch.db'}"
    if database == "mariadb":
        mysql_query(mysql_url, "CREATE VIEW v AS SELECT 1 AS one")
        mysql_query(mysql_url, "CREATE PROCEDURE p() SELECT 1")
    else:
        with sqlite3.connect(tmp_path / "scratch.db") as connection:
            connection.execute("CREATE VIEW v AS SELECT 1 AS one")

    result = cli("verify", env={"MIGRATION_DATABASE_URL": url}, cwd=root)

    assert result.code == 78, result.stdout
    error = result.one("config.invalid")["error"]
    assert "v (view)" in error
    if database == "mariadb":
        assert "p (procedure)" in error


def test_the_tools_own_tables_are_no_objection(cli: Cli, any_url: str, tmp_path: Path) -> None:
    """After an upgrade and a downgrade to base only the version table and the ledger remain: verify runs."""
    root = project(tmp_path / "p")
    env = {"MIGRATION_DATABASE_URL": any_url}
    assert cli("upgrade", env=env, cwd=root).code == 0
    assert cli("downgrade", "base", env=env, cwd=root).code == 0

    result, report = verify(cli, any_url, cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    assert statuses(report) == HEALTHY


@pytest.mark.timeout(60)
def test_an_unreachable_database_is_69_and_a_held_lock_75(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """The usual codes: no report is printed, nothing ran, and no JUnit file claims a result."""
    root = project(tmp_path / "p")
    junit = tmp_path / "verify.xml"
    unreachable = "postgresql://postgres@127.0.0.1:9/nowhere"

    down, down_report = verify(
        cli, unreachable, "--junit-xml", str(junit), cwd=root, env={"MIGRATION_CONNECT_TIMEOUT": "1"}
    )
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))
        locked, locked_report = verify(
            cli, pg_url, "--junit-xml", str(junit), cwd=root, env={"MIGRATION_LOCK_TIMEOUT": "1"}
        )

    assert (down.code, down_report) == (69, {}), down.stdout + down.stderr
    assert (locked.code, locked_report) == (75, {}), locked.stdout + locked.stderr
    assert not junit.exists()
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


@pytest.mark.parametrize("flag", ["--all", "--allow", "--allow-non"])
def test_an_abbreviation_never_means_allow_nonempty(cli: Cli, pg_url: str, tmp_path: Path, flag: str) -> None:
    """argparse took `verify --all` (meant as upgrade's --all) for --allow-nonempty, and ran on a full database."""
    root = project(tmp_path / "p")
    query(pg_url, "CREATE TABLE customers (id integer)")

    result = cli("verify", flag, env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)

    assert result.code == 2, result.stdout + result.stderr
    assert f"unrecognized arguments: {flag}" in result.stderr
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


@pytest.mark.parametrize("output", ["json", "markdown", "text"])
def test_a_password_in_a_revision_error_is_never_in_the_report(
    cli: Cli, pg_url: str, tmp_path: Path, output: str
) -> None:
    """The report and the JUnit file are redacted like the logs: a revision's error may carry the URL."""
    make_project(
        tmp_path / "p",
        2,
        bodies={2: 'raise RuntimeError("cannot copy from " + op.get_bind().engine.url.render_as_string(False))'},
    )
    secret = "Sup3r-S3cret-pw"  # noqa: S105  (trust authentication takes any password)
    url = sqlalchemy.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    junit = tmp_path / "verify.xml"

    result = cli(
        "verify", "--output", output, "--junit-xml", str(junit), env={"MIGRATION_DATABASE_URL": url}, cwd=tmp_path / "p"
    )

    assert result.code == 1, result.stdout + result.stderr
    assert "cannot copy from" in result.stdout  # the error is reported,
    assert secret not in result.stdout + result.stderr + junit.read_text()  # its password is not


def test_markdown_for_a_pull_request(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """verify --output markdown is a pull-request comment naming the failed check."""
    root = project(tmp_path / "p", orders_down='    op.drop_table("orders")')

    result = cli("verify", "--output", "markdown", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)

    assert result.code == 1
    assert result.stdout.startswith("### migration-runner verify: failed\n")
    assert "| ❌ | `downgrade_leaves_no_trace` | after the downgrade of 0002, index ix_items_name" in result.stdout


def django_verify(cli: Cli, url: str, project: Path) -> tuple[Any, dict[str, Any]]:
    return verify(cli, url, cwd=project, env={"DJANGO_SETTINGS_MODULE": "mysite.settings"}, timeout=180)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", ["postgresql", "mariadb", "sqlite"])
def test_the_django_example_passes(cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path, database: str) -> None:
    """17 migrations of three apps: one leaf per app, the stairway through all of them, no trace."""
    url = {"postgresql": pg_url, "mariadb": mysql_url, "sqlite": f"sqlite:///{tmp_path / 'scratch.db'}"}[database]
    junit = tmp_path / "verify.xml"

    result, report = verify(
        cli,
        url,
        "--junit-xml",
        str(junit),
        cwd=copy_django_example(tmp_path / "django"),
        env={"DJANGO_SETTINGS_MODULE": "mysite.settings"},
        timeout=170,
    )

    assert result.code == 0, result.stdout + result.stderr
    assert (report["passed"], report["failed"], report["skipped"]) == (39, 0, 0)  # backward_compatible among them
    names = [c["name"] for c in report["cases"]]
    assert "up_down_consistency[shop.0002_product_slug down]" in names
    assert "up_down_consistency[shop.0002_product_slug up]" in names
    check_junit(junit, report)
    at_head = "SELECT count(*) FROM django_migrations WHERE app = 'shop'"
    if database == "postgresql":
        assert query(pg_url, at_head) == [(3,)]
    elif database == "mariadb":
        assert mysql_query(mysql_url, at_head) == [(3,)]
    else:
        with sqlite3.connect(tmp_path / "scratch.db") as scratch:
            assert scratch.execute(at_head).fetchall() == [(3,)]


ONE_WAY = """from django.db import migrations


def fill(apps, schema_editor):
    pass


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [migrations.RunPython(fill)]
"""


@pytest.mark.timeout(180)
def test_a_django_runpython_without_reverse_fails_unless_listed_in_its_id_form(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """A RunPython without reverse_code fails the stairway unless listed as app.migration."""
    project = copy_django_example(tmp_path / "django")
    (project / "shop" / "migrations" / "0004_fill.py").write_text(ONE_WAY)
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}

    failed, report = verify(cli, pg_url, cwd=project, env=env, timeout=170)
    query(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    listed, listed_report = verify(
        cli, pg_url, cwd=project, env={**env, "MIGRATION_VERIFY_IRREVERSIBLE": "shop.0004_fill"}, timeout=170
    )

    assert failed.code == 1, failed.stdout + failed.stderr
    case = case_named(report, "up_down_consistency[shop.0004_fill down]")
    assert case["status"] == "failed" and "no reverse" in case["message"]
    assert listed.code == 0, listed.stdout + listed.stderr
    assert statuses(listed_report)["up_down_consistency[shop.0004_fill down]"] == "skipped"
    # The stairway went on below it (before, it stopped there): the app's earlier migrations have their cases.
    assert statuses(listed_report)["up_down_consistency[shop.0003_product_name_index down]"] == "passed"
    assert statuses(listed_report)["up_down_consistency[shop.0001_initial up]"] == "passed"
    # The stairway's rebuild; backward_compatible may add its own (the newest migration cannot go down).
    assert [r["at"] for r in listed_report["rebuilds"] if not r["after"].startswith("backward_compatible")] == [
        "shop.0003_product_name_index"
    ]


UNIQUE_NAME = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [
        migrations.RunSQL(
            "CREATE UNIQUE INDEX shop_product_name_once ON shop_product (name)",
            "DROP INDEX shop_product_name_once",
        )
    ]
"""


@pytest.mark.timeout(180)
def test_django_revision_data_is_keyed_by_the_migration_id(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """shop.0004's unique index meets the duplicate rows shop.0004_name_once.sql puts in place just before it."""
    project = copy_django_example(tmp_path / "django")
    (project / "shop" / "migrations" / "0004_name_once.py").write_text(UNIQUE_NAME)
    data = tmp_path / "data"
    data.mkdir()
    (data / "shop.0004_name_once.sql").write_text(
        "INSERT INTO shop_product (name, slug, created) VALUES ('shirt', 'shirt', now()), ('shirt', 'shirt-2', now())"
    )
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings", "MIGRATION_VERIFY_DATA_DIR": str(data)}

    result, report = verify(cli, pg_url, cwd=project, env=env, timeout=170)

    assert result.code == 1, result.stdout + result.stderr
    upgrade = case_named(report, "upgrade")
    assert upgrade["status"] == "failed"
    assert upgrade["message"].startswith("revision shop.0004_name_once failed on the way up")
    assert [e["revision"] for e in result.named("verify.data_put_in_place")] == ["shop.0004_name_once"]


BRANCH = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [migrations.RunSQL("CREATE TABLE shop_{name} (id integer)", "DROP TABLE shop_{name}")]
"""


@pytest.mark.timeout(180)
def test_a_django_merge_migration_and_both_sides_of_its_branch_each_get_their_cases(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """Two branches joined by `makemigrations --merge`: every migration gets its own down and up cases.

    Migrating shop back to 0003 alone would unapply both sides (Django reverts a target's children), so one side
    cannot be reverted by itself; before, its case was skipped and the stairway stopped there. Django's own plan
    reverts both sides, and everything below, in exactly the reverse of the order they were applied, so the
    stairway reverts them in one run and compares the schema after each step with the one before it.
    """
    project = copy_django_example(tmp_path / "django")
    migrations = project / "shop" / "migrations"
    for name in ("audit_a", "audit_b"):
        (migrations / f"0004_{name}.py").write_text(BRANCH.format(name=name))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "MIGRATION_DATABASE_URL": pg_url}
    merge = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--merge", "--noinput", "shop"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert merge.returncode == 0, merge.stdout + merge.stderr
    (merged,) = [path.stem for path in migrations.glob("0005_merge_*.py")]

    result, report = django_verify(cli, pg_url, project)

    assert result.code == 0, result.stdout + result.stderr
    cases = {c["name"]: c for c in report["cases"]}
    assert cases[f"up_down_consistency[shop.{merged} down]"]["status"] == "passed"
    assert cases[f"up_down_consistency[shop.{merged} up]"]["status"] == "passed"
    stairway = [c for c in report["cases"] if c["check"] == "up_down_consistency"]
    assert len(stairway) == 2 * 20 and {c["status"] for c in stairway} == {"passed"}
    assert {c["revision"] for c in stairway} >= {"shop.0004_audit_a", "shop.0004_audit_b"}
    assert report["rebuilds"] == []
    assert query(pg_url, "SELECT count(*) FROM django_migrations WHERE app = 'shop'") == [(6,)]  # at head again


@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_a_django_model_field_without_a_migration_fails_models_match(
    cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path, database: str
) -> None:
    """A Django model field without a migration fails models_match on PostgreSQL and MariaDB."""
    project = copy_django_example(tmp_path / "django")
    models = project / "shop" / "models.py"
    models.write_text(
        models.read_text().replace("    created =", "    price = models.IntegerField(default=0)\n    created =")
    )

    result, report = django_verify(cli, pg_url if database == "postgresql" else mysql_url, project)

    assert result.code == 1
    case = case_named(report, "models_match")
    assert case["status"] == "failed"
    assert case["details"] == ["shop: Add field price to product"]


DIVERGING = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE shop_product ADD COLUMN sku varchar(20) NOT NULL DEFAULT ''",
            "ALTER TABLE shop_product DROP COLUMN sku",
            state_operations=[
                migrations.AddField("product", "sku", models.CharField(max_length=20, null=True)),
                migrations.AddField("product", "weight", models.IntegerField(null=True)),
            ],
        ),
    ]
"""


@pytest.mark.timeout(180)
def test_a_django_runsql_that_diverges_from_its_state_fails_models_match(
    cli: Cli, any_url: str, tmp_path: Path
) -> None:
    """RunSQL made sku NOT NULL and no weight, while its state_operations say null=True and a weight column.

    makemigrations --check compares the models with the state, which agree, so models_match passed before. The
    database's own introspection sees both.
    """
    project = copy_django_example(tmp_path / "django")
    (project / "shop" / "migrations" / "0004_sku.py").write_text(DIVERGING)
    models = project / "shop" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    created =",
            "    sku = models.CharField(max_length=20, null=True)\n    weight = models.IntegerField(null=True)\n"
            "    created =",
        )
    )

    result, report = django_verify(cli, any_url, project)

    assert result.code == 1, result.stdout + result.stderr
    case = case_named(report, "models_match")
    assert case["status"] == "failed"
    assert case["details"] == [
        "the database differs from the models: column shop_product.sku (shop.Product.sku) is NOT NULL, "
        "and the model says null=True",
        "the database differs from the models: column shop_product.weight (shop.Product.weight) is missing",
    ]
    assert "a RunSQL" in case["message"]


def test_the_junit_schema_rejects_what_the_readers_do_not_take_and_control_characters_stay_valid() -> None:
    """docs/junit.xsd is not vacuous; a message with control characters still gives a valid file."""
    bad = (
        b'<testsuites><testsuite name="s" tests="1"><testcase><failure/><skipped/></testcase></testsuite></testsuites>'
    )
    assert not JUNIT_SCHEMA.is_valid(bad)  # a testcase without a name, with both failure and skipped
    assert not JUNIT_SCHEMA.is_valid(b'<testsuites><testsuite name="s" tests="-1"/></testsuites>')
    case = checks.Case("upgrade", "upgrade")
    case.fail("revision 0002 failed on the way up: ERROR:  bad byte \x00 and \x1b[31m escape", ["line\x07one"])
    report = checks.document(tool="alembic", database="scratch", cases=[case], exit_code=1)

    xml = checks.junit(report)

    JUNIT_SCHEMA.validate(xml.decode())
    failure = ElementTree.fromstring(xml).find("testsuite/testcase/failure")  # noqa: S314  (our own bytes)
    assert failure is not None and "bad byte \ufffd and \ufffd[31m escape" in failure.get("message", "")


@pytest.mark.timeout(60)
def test_the_ci_recipes_in_readme_are_valid_github_and_gitlab_ci(tmp_path: Path) -> None:
    """docs/ci.md "Verify in CI": the GitHub job is a valid workflow job and the GitLab job valid .gitlab-ci.yml,
    both against check-jsonschema's vendored schemas; each reports the JUnit file verify writes."""
    readme = (REPO / "docs" / "ci.md").read_text()
    section = readme.split("## Verify in CI", 1)[1].split("\n## ", 1)[0]
    github, gitlab = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S))
    workflow = tmp_path / "verify.yml"
    workflow.write_text(yaml.safe_dump({"name": "verify", "on": "pull_request", "jobs": github}))
    pipeline = tmp_path / ".gitlab-ci.yml"
    pipeline.write_text(yaml.safe_dump(gitlab))

    for path, schema in ((workflow, "vendor.github-workflows"), (pipeline, "vendor.gitlab-ci")):
        checked = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    steps = github["verify-migrations"]["steps"]
    assert any("migration-runner verify --junit-xml verify.xml" in step.get("run", "") for step in steps)
    assert any(step.get("with", {}).get("report_paths") == "verify.xml" for step in steps)
    job = gitlab["verify-migrations"]
    assert any("migration-runner verify --junit-xml verify.xml" in line for line in job["script"])
    assert job["artifacts"]["reports"]["junit"] == "verify.xml"


SCHEMA_DDL = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, code VARCHAR(10) NOT NULL)",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL, qty INTEGER, "
    "CONSTRAINT uq_child_qty UNIQUE (qty), CONSTRAINT ck_child_qty CHECK (qty > 0), "
    "CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES parent (id))",
    "CREATE INDEX ix_parent_code ON parent (code)",
]


@pytest.mark.parametrize("database", ["postgresql", "mariadb", "sqlite"])
def test_a_snapshot_sees_each_kind_of_object_on_each_database(
    pg_url: str, mysql_url: str, tmp_path: Path, database: str
) -> None:
    """Columns, primary keys, indexes, unique and check constraints and foreign keys, as the stairway compares them."""
    url = {"postgresql": pg_url, "mariadb": mysql_url, "sqlite": f"sqlite:///{tmp_path / 's.db'}"}[database]
    engine = sqlalchemy.create_engine(
        url.replace("mysql://", "mysql+pymysql://").replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with engine.connect() as connection:
            empty = checks.snapshot(connection, None, ())
            for statement in SCHEMA_DDL:
                connection.exec_driver_sql(statement)
            connection.commit()
            found = checks.snapshot(connection, None, ("parent",))
            both = checks.snapshot(connection, None, ())
    finally:
        engine.dispose()

    objects = checks.DATABASE_OBJECTS
    assert set(empty) == {objects} and not any(empty[objects].values())  # the objects beside tables: none
    assert set(found) == {"child", objects}
    child = both["child"]
    assert [c[0] for c in child["columns"]] == ["id", "parent_id", "qty"]
    assert child["primary_key"] == (("id",),)
    assert ("uq_child_qty", ("qty",)) in child["unique_constraints"]
    assert [(f[1], f[2]) for f in child["foreign_keys"]] == [(("parent_id",), "parent")]
    assert [c[0] for c in child["check_constraints"]] == ["ck_child_qty"]
    assert ("ix_parent_code", ("code",), False) in both["parent"]["indexes"]
    lines = checks.differences({}, both) + checks.differences(both, {"child": both["child"]})
    assert "table parent is missing" in lines
