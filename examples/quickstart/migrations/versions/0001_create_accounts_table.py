"""create accounts table

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 05:40:14.483554

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(255), nullable=False),
    )
    op.bulk_insert(
        sa.table("accounts", sa.column("email", sa.String)),
        [{"email": "ada@example.com"}, {"email": "grace@example.com"}],
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("accounts")
