"""`spottune client ...` against the embedded service: ids on stdout, outcome in the exit status."""

from __future__ import annotations

import json
from pathlib import Path

from spottune.client import Client
from tests.client.conftest import Files, Service
from tests.worker.helpers import TINY_SOURCE


def test_upload_segment_wait_jobs_download(service: Service, files: Files, tmp_path: Path) -> None:
    key = service.new_clinic("cli-clinic")
    up = service.cli("client", "upload", str(files.source_image), "--mask",
                     str(files.source_mask), "--site", "a", key=key)
    assert up.returncode == 0, up.stderr
    scan_id = up.stdout.strip()
    options = [a for k, v in TINY_SOURCE.items() for a in ("-o", f"{k}={json.dumps(v)}")]
    pre = service.cli("client", "pretrain", scan_id, *options, "--wait", key=key)
    assert pre.returncode == 0, pre.stderr
    job_id = pre.stdout.strip()
    model_id = Client(service.url, key).job(job_id).model_id
    seg = service.cli("client", "segment", str(model_id), scan_id, key=key)
    assert seg.returncode == 0, seg.stderr
    waited = service.cli("client", "wait", seg.stdout.strip(), "--quiet", key=key)
    assert waited.returncode == 0 and waited.stdout.strip() == "succeeded", waited.stderr
    listed = service.cli("client", "jobs", "--kind", "segmentation", "--json", key=key)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [seg.stdout.strip()]
    got = service.cli("client", "download", seg.stdout.strip(), "--out", str(tmp_path), key=key)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == [str(tmp_path / f"{scan_id}_mask.nii.gz")]
    assert (tmp_path / f"{scan_id}_mask.nii.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_exit_status_says_timeout_and_cancel(service: Service, files: Files) -> None:
    key = service.new_clinic("cli-exit-clinic")
    client = Client(service.url, key)
    scan = client.upload_scan(files.source_image, mask=files.source_mask)
    long = client.pretrain([scan], **{**TINY_SOURCE, "iterations": 100_000})
    timed_out = service.cli("client", "wait", str(long.id), "--timeout", "1", "-q", key=key)
    assert timed_out.returncode == 5, timed_out.stderr
    client.cancel(long)
    cancelled = service.cli("client", "wait", str(long.id), "-q", key=key)
    assert cancelled.returncode == 4 and "cancelled" in cancelled.stderr


def test_refusals_and_a_missing_service_exit_1(service: Service, tmp_path: Path) -> None:
    key = service.new_clinic("cli-refused-clinic")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    refused = service.cli("client", "upload", str(bad), key=key)
    assert refused.returncode == 1 and "invalid_image" in refused.stderr
    no_key = service.cli("client", "jobs")
    assert no_key.returncode == 1 and "SPOTTUNE_API_KEY" in no_key.stderr


def test_admin_create_key_gives_a_second_working_key(service: Service) -> None:
    first = service.new_clinic("two-key-clinic")
    made = service.cli("admin", "create-key", "two-key-clinic")
    assert made.returncode == 0, made.stderr
    second = made.stdout.strip()
    assert second != first and list(Client(service.url, second).jobs()) == []
    unknown = service.cli("admin", "create-key", "no-such-clinic")
    assert unknown.returncode == 1 and "create-clinic" in unknown.stderr
