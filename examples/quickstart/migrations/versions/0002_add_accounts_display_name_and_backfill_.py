"""add accounts.display_name and backfill it

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:40:15.385719

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("accounts", sa.Column("display_name", sa.String(255), nullable=True))
    # Backfill: the part of the address before the @.
    accounts = sa.table("accounts", sa.column("email", sa.String), sa.column("display_name", sa.String))
    op.execute(
        accounts.update().values(
            display_name=sa.func.substr(accounts.c.email, 1, sa.func.instr(accounts.c.email, "@") - 1)
        )
        if op.get_bind().dialect.name == "sqlite"
        else accounts.update().values(display_name=sa.func.split_part(accounts.c.email, "@", 1))
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("display_name")
