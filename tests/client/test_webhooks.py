"""Webhooks end to end: a real HTTP receiver on 127.0.0.1 gets a signed POST for every job that
ends, and a delivery the receiver refused once is retried."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from spottune.client import Client, SignatureError, verify_signature
from tests.client.conftest import Files, Service
from tests.receiver import Receiver

SECRET = "clinic-webhook-secret-0123"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


def test_job_end_is_delivered_signed_and_retried_after_a_failure(
    service: Service, files: Files, receiver: Receiver
) -> None:
    client = Client(service.url, service.new_clinic("webhook-clinic"))
    hook = client.add_webhook(receiver.url, SECRET, description="PACS bridge")
    model = client.pretrain([client.upload_scan(files.source_image, mask=files.source_mask)],
                            width=4, depth=2, blocks_per_stage=1, spacing_mm=[1.0, 1.0],
                            patch_size=32, iterations=2, batch_size=2).wait(timeout=120)
    receiver.wait_for(2)  # refused once (500), then acknowledged (204)
    (first_headers, first_body, first_status), (headers, body, status) = receiver.received[:2]
    assert (first_status, status) == (500, 204)
    assert first_headers["Spottune-Delivery"] == headers["Spottune-Delivery"]  # the same event
    verify_signature(SECRET, headers["Spottune-Signature"], body)
    verify_signature(SECRET, first_headers["Spottune-Signature"], first_body)
    event = json.loads(body)
    assert headers["Spottune-Event"] == event["event"] == "job.succeeded"
    assert event["job"]["id"] == str(model.id) and event["job"]["result"]["model_id"]
    assert event["webhook_id"] == str(hook.id)
    with pytest.raises(SignatureError):
        verify_signature("another-secret-entirely", headers["Spottune-Signature"], body)
    with pytest.raises(SignatureError):
        altered = body.replace(b"succeeded", b"failed")
        verify_signature(SECRET, headers["Spottune-Signature"], altered)
    deadline = time.monotonic() + 30
    while (deliveries := list(client.deliveries(hook)))[0].status != "delivered":
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.2)
    assert len(deliveries) == 1
    assert (deliveries[0].attempts, deliveries[0].response_status) == (2, 204)
    assert deliveries[0].job_id == model.id


def test_a_cancelled_job_is_delivered_too_and_old_jobs_are_not(
    service: Service, files: Files
) -> None:
    client = Client(service.url, service.new_clinic("webhook-cancel-clinic"))
    scan = client.upload_scan(files.source_image, mask=files.source_mask)
    before = client.pretrain([scan], iterations=2, width=4, depth=2, blocks_per_stage=1,
                             spacing_mm=[1.0, 1.0], patch_size=32, batch_size=2)
    before.wait(timeout=120)  # ended before the webhook existed: never sent
    receiver = Receiver(fail_first=0)
    try:
        client.add_webhook(receiver.url, SECRET)
        job = client.pretrain([scan], iterations=100_000, width=4, depth=2,
                              blocks_per_stage=1, spacing_mm=[1.0, 1.0], patch_size=32)
        client.cancel(job)
        receiver.wait_for(1)
        time.sleep(1.5)  # a few more dispatcher passes: nothing else arrives
        assert len(receiver.received) == 1
        headers, body, _ = receiver.received[0]
        verify_signature(SECRET, headers["Spottune-Signature"], body)
        event = json.loads(body)
        assert event["event"] == "job.cancelled" and event["job"]["id"] == str(job.id)
    finally:
        receiver.close()
