"""DICOM identity of scans uploaded as a DICOM series

Revision ID: 0002_dicom
Revises: 0001
Create Date: 2026-11-30 17:05:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002_dicom'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('scan_dicom',
    sa.Column('scan_id', sa.Uuid(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('frame_of_reference_uid', sa.String(length=64), nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('headers_blob_id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['headers_blob_id'], ['blobs.id'], ),
    sa.PrimaryKeyConstraint('scan_id')
    )
    op.create_index(op.f('ix_scan_dicom_series_instance_uid'), 'scan_dicom',
                    ['series_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_scan_dicom_series_instance_uid'), table_name='scan_dicom')
    op.drop_table('scan_dicom')
