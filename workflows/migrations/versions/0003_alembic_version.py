"""Alembic's `alembic_version` records the schema: the releases before it kept a
`schema_version` table, gone now.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS schema_version")
