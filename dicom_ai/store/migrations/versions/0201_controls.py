"""Operator controls: pause / resume processing and sending, persisted so every process and a restart see them.

A separate branch off the initial schema (owned by the operating surface, dicom_ai/store/controls.py), so it never
conflicts with the other stages' revisions; `Database.migrate()` upgrades every head.

Revision ID: 0201_controls
Revises: 0001_initial
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0201_controls'
down_revision: str | Sequence[str] | None = '0001_initial'
branch_labels: str | Sequence[str] | None = ('controls',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('node_controls',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('changed_by', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_node_controls'))
    )


def downgrade() -> None:
    op.drop_table('node_controls')
