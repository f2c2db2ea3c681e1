"""A study's restarted quiet period is in its row (`studies.quiet_from`), so every monitor and every worker, on any
host, counts it: a receiving study counts as quiet from max(last_received_at, quiet_from).

Revision ID: 0302_quiet_from
Revises: 0301_several_nodes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0302_quiet_from'
down_revision: str | Sequence[str] | None = '0301_several_nodes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quiet_from', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('quiet_from')
