"""Several processes on several hosts: node runs name their roles and can be marked dead; outbox rows are claimed
with a lease by one sender; a study is analysed ahead by one worker per state, recorded in its row.

Revision ID: 0301_several_nodes
Revises: 0101_outbox
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0301_several_nodes'
down_revision: str | Sequence[str] | None = '0101_outbox'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ahead_of', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('ahead_by', sa.String(length=128), nullable=True))
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('roles', sa.String(length=64), nullable=False,
                                      server_default='listener,worker,sender,monitor'))
        batch_op.add_column(sa.Column('dead_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.drop_column('dead_at')
        batch_op.drop_column('roles')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('ahead_by')
        batch_op.drop_column('ahead_of')
