"""staged blobs: a job's result is written before the job is marked succeeded

Revision ID: 0005_staged_blobs
Revises: 0004_reliability
Create Date: 2026-12-01 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005_staged_blobs'
down_revision: str | None = '0004_reliability'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Set while a worker writes a job's result blobs, cleared when the result is committed; no
    # foreign key, so blobs staged for a job that was deleted are still found and swept.
    op.add_column('blobs', sa.Column('staged_job_id', sa.Uuid(), nullable=True))
    op.create_index(op.f('ix_blobs_staged_job_id'), 'blobs', ['staged_job_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_blobs_staged_job_id'), table_name='blobs')
    op.drop_column('blobs', 'staged_job_id')
