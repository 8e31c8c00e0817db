"""A clinic's whole flow through the API with a real worker: pretrain, adapt with each method,
segment, then download masks (valid NIfTI on the scan's grid), the policy and the report."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spottune.contract import METHODS
from tests.worker.helpers import (
    SHAPE,
    TINY_ADAPT,
    TINY_SOURCE,
    phantom_files,
    submit_job,
    wait_succeeded,
)


@pytest.fixture(scope="module")
def client(worker) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from spottune.app.admin import create_clinic
    from spottune.app.main import create_app

    key = create_clinic(f"flow-{time.monotonic_ns()}").key
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client


def _upload(client: TestClient, seed: int, site: str, *, mask: bool = True,
            annotated: str | None = None) -> str:
    image, reference = phantom_files(seed, site)
    files: dict[str, Any] = {"image": ("head.nii.gz", image)}
    if mask:
        files["mask"] = ("brain.nii.gz", reference)
    data = {"site": site, "subject": f"s{seed}"}
    if annotated is not None:
        data["annotated_slices"] = annotated
    response = client.post("/v1/scans", files=files, data=data)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _check_mask(client: TestClient, mask_id: str) -> None:
    response = client.get(f"/v1/masks/{mask_id}")
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert image.shape == SHAPE and np.allclose(image.affine, np.eye(4))
    assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {0, 1}


def test_pretrain_adapt_with_each_method_and_segment(client: TestClient) -> None:
    source_scans = [_upload(client, seed, "a") for seed in (10, 11)]
    # one number for an isotropic in-plane spacing, as a clinic would write it
    pretrain = submit_job(client, "/v1/pretrainings", {
        "train_scan_ids": source_scans, "options": {**TINY_SOURCE, "spacing_mm": 1.0}})
    source = wait_succeeded(client, pretrain)["result"]["model_id"]
    source_model = client.get(f"/v1/models/{source}").json()
    assert source_model["job_id"] == pretrain
    assert source_model["config"]["preprocessing"]["spacing_mm"] == [1.0, 1.0]

    train = [_upload(client, 20, "b"), _upload(client, 21, "b", annotated="[4, 8]")]
    targets = [_upload(client, 22, "b"), _upload(client, 23, "b", mask=False)]
    validation = [_upload(client, 24, "b")]
    runs = [(method, {}) for method in METHODS] + [("spottune", {"policy": "global"}),
                                                   ("spottune", {"replicates": 2})]
    jobs = {
        submit_job(client, "/v1/adaptations", {
            "model_id": source, "train_scan_ids": train, "target_scan_ids": targets,
            "validation_scan_ids": validation, "method": method,
            "options": {**TINY_ADAPT, **extra}}): method
        for method, extra in runs
    }
    results = {job_id: wait_succeeded(client, job_id)["result"] for job_id in jobs}
    params = client.get(f"/v1/jobs/{next(iter(jobs))}").json()["params"]
    assert params["validation_scan_ids"] == validation
    assert params["options"]["iterations"] == TINY_ADAPT["iterations"]
    assert params["options"]["policy_weight_decay"] == 1e-3  # the contract's default, stored

    for job_id, result in results.items():
        adapted = client.get(f"/v1/models/{result['model_id']}").json()
        assert adapted["parent_model_id"] == source and adapted["job_id"] == job_id
        masks = client.get(f"/v1/jobs/{job_id}/masks").json()["items"]
        assert sorted(m["scan_id"] for m in masks) == sorted(targets)
        _check_mask(client, masks[0]["id"])
        # the first target has a mask: Dice before (base model) and after (adapted); so has
        # the validation scan, which no replicate trained on
        assert set(result["metrics"]["mean"]) == {"before", "after"}
        scored = {(m["scan_id"], m["phase"]) for m in result["metrics"]["per_scan"]}
        assert {(validation[0], "before"), (validation[0], "after")} <= scored
        report = client.get(f"/v1/jobs/{job_id}/report")
        assert report.status_code == 200 and "<html" in report.text.lower()
        assert "Validation scans" in report.text
        assert client.get(f"/v1/jobs/{job_id}/report.png").content[:4] == b"\x89PNG"

    replicated = list(jobs)[-1]
    policy = client.get(f"/v1/jobs/{replicated}/policy").json()
    assert policy["replicates"]["seeds"] == [0, 1]
    assert policy["replicates"]["delivered_seed"] in (0, 1)
    assert "validation" in policy["replicates"]["reason"]
    assert len(policy["replicates"]["validation_sdice"]) == 2
    assert "Replicates" in client.get(f"/v1/jobs/{replicated}/report").text

    spottune_job = next(j for j, m in jobs.items() if m == "spottune")
    policy = client.get(f"/v1/jobs/{spottune_job}/policy").json()
    assert len(policy["gates"]) > 0 and policy["gates"][0]["name"] == "init.conv"
    assert all(0.0 <= g["finetune_probability"] <= 1.0 for g in policy["gates"])
    assert {s["stage"] for s in policy["stages"]} == {g["stage"] for g in policy["gates"]}
    assert (policy["method"], policy["policy"]) == ("spottune", "instance")
    assert policy["shift"].startswith(("The shift lives", "The policy kept"))
    assert policy["replicates"] is None

    segment = submit_job(client, "/v1/segmentations", {
        "model_id": results[spottune_job]["model_id"], "scan_ids": targets})
    assert len(wait_succeeded(client, segment)["result"]["mask_ids"]) == 2
