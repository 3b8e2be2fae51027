"""The revision checksum: formatting is not a change, an operation is."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import checksum, drift

REVISION = '''"""add orders

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"


def upgrade():
    # the orders table
    op.create_table("orders", sa.Column("id", sa.Integer), sa.Column("total", sa.Numeric(12, 2)))


def downgrade():
    op.drop_table("orders")
'''

SAME = {
    "comments and blank lines": REVISION.replace("    # the orders table\n", "").replace(
        "\n\n\ndef", "\n\n\n\n# x\ndef"
    ),
    "quote style": REVISION.replace('"orders"', "'orders'").replace('"0004"', "'0004'"),
    "CRLF line endings": REVISION.replace("\n", "\r\n"),
    "re-indented arguments": REVISION.replace(
        'op.create_table("orders", sa.Column("id", sa.Integer), sa.Column("total", sa.Numeric(12, 2)))',
        'op.create_table(\n        "orders",\n        sa.Column("id", sa.Integer),\n'
        '        sa.Column("total", sa.Numeric(12, 2)),\n    )',
    ),
    "another docstring": REVISION.replace("add orders", "Add the orders table").replace("10:00:00", "11:00:00"),
    "a function docstring": REVISION.replace("def downgrade():\n", 'def downgrade():\n    """Drop it."""\n'),
    "tabs for indentation": REVISION.replace("    op.", "\top.").replace("    # the", "\t# the"),
}
CHANGED = {
    "a column type": REVISION.replace("sa.Numeric(12, 2)", "sa.Numeric(14, 2)"),
    "a table name": REVISION.replace('op.create_table("orders"', 'op.create_table("order"'),
    "an operation": REVISION.replace('op.drop_table("orders")', "pass"),
    "the down_revision": REVISION.replace('down_revision = "0003"', 'down_revision = "0002"'),
}


@pytest.mark.parametrize("name", list(SAME))
def test_formatting_is_not_a_change(name: str) -> None:
    """A revision file reformatted (spacing, comments, quotes) keeps its checksum."""
    assert checksum.of_python(SAME[name]) == checksum.of_python(REVISION)


@pytest.mark.parametrize("name", list(CHANGED))
def test_a_changed_operation_is(name: str) -> None:
    """A revision file whose operations changed gets a new checksum."""
    assert checksum.of_python(CHANGED[name]) != checksum.of_python(REVISION)


def test_bytes_and_text_agree_and_the_form_is_stable() -> None:
    """The checksum of bytes equals that of the text, is 64 hex digits, and is pinned for one input."""
    value = checksum.of_python(REVISION.encode())

    assert value == checksum.of_python(REVISION)
    assert len(value) == 64
    # Pinned: a change to the canonical form must come with a new checksum.VERSION.
    assert checksum.of_python("x = 1\n") == "6a36587e0c3fa5d1c5108cbbf426f029a4999c94fcb4055300c376d492b83487"


def test_sql_is_normalised_but_literals_are_kept() -> None:
    """SQL loses comments and spacing in its canonical form, but string literals and quoted names stay exact."""
    sql = (
        "-- the table\nCREATE   TABLE  t (\n    id int, /* key */\n    name text DEFAULT 'a  -- b'\n);\n"
        'CREATE FUNCTION f() RETURNS int AS $body$ select   1 $body$ LANGUAGE sql;\nSELECT "Odd  Name" FROM t'
    )

    assert checksum.normalise_sql(sql) == (
        "CREATE TABLE t(id int,name text DEFAULT 'a  -- b');"
        'CREATE FUNCTION f()RETURNS int AS $body$ select   1 $body$ LANGUAGE sql;SELECT "Odd  Name" FROM t'
    )


def test_a_loaded_sql_file_is_in_the_version_2_checksum(tmp_path: Path) -> None:
    """An SQL file a revision reads is part of its checksum: reformatting it is no change, editing it is."""
    revision = tmp_path / "versions" / "0002_r.py"
    revision.parent.mkdir()
    revision.write_text(REVISION.replace('op.drop_table("orders")', 'op.execute(open("views.sql").read())'))
    plain = tmp_path / "versions" / "0001_r.py"
    plain.write_text(REVISION)
    sql = tmp_path / "sql" / "views.sql"
    sql.parent.mkdir()
    sql.write_text("CREATE VIEW v AS SELECT 1;\n")

    first = checksum.of_file(revision)
    sql.write_text("-- a view\nCREATE VIEW v AS\n    SELECT 1;\n")
    reformatted = checksum.of_file(revision)
    sql.write_text("CREATE VIEW v AS SELECT 2;\n")
    changed = checksum.of_file(revision)

    assert first == reformatted != changed
    assert checksum.of_file(revision, version=1) == checksum.of_python(revision.read_bytes())  # v1: no SQL
    assert checksum.of_file(plain) == checksum.of_file(plain, version=1) == checksum.of_python(REVISION)
    with pytest.raises(ValueError, match="unknown checksum version"):
        checksum.of_file(plain, version=99)


def test_the_latest_recording_row_counts_and_a_revert_forgets_it() -> None:
    """drift.recorded takes each revision's latest recording row; a revert or a failure records none."""

    def row(revision: str, direction: str, outcome: str, value: str | None, resolution: str | None = None) -> tuple:
        return (revision, direction, outcome, True, resolution, value, 2, None, "2026-12-01", "run")

    known = drift.recorded(
        [
            row("a", "up", "applied", "1"),
            row("a", "up", "accepted", "2"),
            row("b", "up", "applied", "3"),
            row("b", "down", "reverted", "3"),
            row("c", "up", "started", "4", resolution="applied"),
            row("d", "up", "failed", "5"),
        ]
    )

    assert {revision: r.checksum for revision, r in known.items()} == {"a": "2", "c": "4"}
    assert drift.any_unfinished([row("e", "up", "started", None)])
    assert not drift.any_unfinished([row("e", "up", "started", None, resolution="not-applied")])
