"""Several listener processes on one host (`listener.processes`): each association row names the process that
served it (`host:pid`).

Revision ID: 0303_association_listener
Revises: 0302_quiet_from
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0303_association_listener'
down_revision: str | Sequence[str] | None = '0302_quiet_from'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listener', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.drop_column('listener')
