"""A clinic's whole session through the Python client alone, against the embedded service:
pretrain, upload, adapt from two annotated slices, wait, download masks and report."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib

from spottune.client import Client
from tests.client.conftest import Files, Service
from tests.worker.helpers import SHAPE, TINY_ADAPT, TINY_SOURCE


def test_a_whole_session(service: Service, files: Files, tmp_path: Path) -> None:
    client = Client(service.url, service.new_clinic("session-clinic"))
    source = client.upload_scan(files.source_image, mask=files.source_mask, site="a")
    model_id = client.pretrain([source], **TINY_SOURCE).wait(timeout=120).model_id
    train = client.upload_scan(files.target_image, mask=files.target_mask, annotated_slices=[4, 8])
    target = client.upload_scan(files.other_image, site="b")
    job = client.adapt(model_id, [train], [target], **TINY_ADAPT).wait(timeout=120)
    masks = client.download_masks(job, tmp_path / "masks")
    report = client.download_report(job, tmp_path / "report.html")
    assert job.succeeded and [m.name for m in masks] == [f"{target.id}_mask.nii.gz"]
    assert nib.load(masks[0]).shape == SHAPE and "<html" in report.read_text().lower()
    policy = client.policy(job)
    assert policy.gates and policy.gates[0].name == "init.conv" and job.model_id != model_id
    assert {s.stage for s in policy.stages} == {g.stage for g in policy.gates}
