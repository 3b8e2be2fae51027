"""The revision checksum: formatting is not a change, an operation is."""

from __future__ import annotations

import pytest

from runner import checksum

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
    assert checksum.of_python(SAME[name]) == checksum.of_python(REVISION)


@pytest.mark.parametrize("name", list(CHANGED))
def test_a_changed_operation_is(name: str) -> None:
    assert checksum.of_python(CHANGED[name]) != checksum.of_python(REVISION)


def test_bytes_and_text_agree_and_the_form_is_stable() -> None:
    value = checksum.of_python(REVISION.encode())

    assert value == checksum.of_python(REVISION)
    assert len(value) == 64
    # Pinned: a change to the canonical form must come with a new checksum.VERSION.
    assert checksum.of_python("x = 1\n") == "6a36587e0c3fa5d1c5108cbbf426f029a4999c94fcb4055300c376d492b83487"
