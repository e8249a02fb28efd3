"""experts and workflows: example_input, the JSON the Chat page pre-fills

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    for table in ("experts", "workflows"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("example_input", JSON_TYPE, nullable=True))


def downgrade() -> None:
    for table in ("experts", "workflows"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("example_input")
