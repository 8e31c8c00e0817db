"""A segmentation job run by a real worker process: masks on the scan's grid, metrics, result."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
from sqlalchemy import select

from spottune.app.tasks import send_run_job
from spottune.core.blobs import read_blob
from spottune.core.models import JobKind, JobStatus, Mask, Metric
from tests.worker.helpers import SHAPE, add_clinic, add_job, add_model, add_scan, wait_job


def test_segmentation_job_stores_one_mask_per_scan(factory, worker) -> None:
    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scans = [add_scan(session, clinic, seed=1), add_scan(session, clinic, seed=2,
                                                             with_mask=False)]
        job_id = add_job(session, clinic, JobKind.SEGMENTATION,
                         {"model_id": str(model), "scan_ids": [str(s) for s in scans]})
    assert send_run_job(job_id)
    job = wait_job(factory, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result is not None and job.result["model_id"] == str(model)
    assert job.attempts == 1 and job.finished_at is not None
    with factory() as session:
        masks = session.scalars(select(Mask).where(Mask.job_id == job_id)).all()
        assert sorted(m.scan_id for m in masks) == sorted(scans)
        assert sorted(job.result["mask_ids"]) == sorted(str(m.id) for m in masks)
        image = nib.Nifti1Image.from_bytes(gzip.decompress(read_blob(session, masks[0].blob_id)))
        assert image.shape == SHAPE and np.allclose(image.affine, np.eye(4))
        assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {0, 1}
        metrics = session.scalars(select(Metric).where(Metric.job_id == job_id)).all()
        assert [m.scan_id for m in metrics] == [scans[0]]  # only the scan with a mask
