"""fair share: index jobs by clinic and start time

Revision ID: 0004_reliability
Revises: 0003_client
Create Date: 2026-11-30 17:20:00
"""
from collections.abc import Sequence

from alembic import op


revision: str = '0004_reliability'
down_revision: str | None = '0003_client'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The scheduler asks, for each clinic with queued jobs, when it last started one.
    op.create_index('ix_jobs_clinic_started', 'jobs', ['clinic_id', 'started_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_clinic_started', table_name='jobs')
