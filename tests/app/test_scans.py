"""POST/GET/DELETE /v1/scans: metadata, downloads, filters, and refused uploads."""

from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.app.helpers import ClinicCtx, counts, nifti_bytes, phantom_bytes, upload_scan

# LIA-oriented 1.5 x 1.0 x 2.0 mm grid (voxel axes: x -> -R, y -> -S, z -> +A)
LIA = np.array([[-1.5, 0, 0, 10], [0, 0, 2.0, -5], [0, -1.0, 0, 7], [0, 0, 0, 1]])


def test_metadata_and_downloads(client: TestClient, clinic_a: ClinicCtx) -> None:
    image, mask = phantom_bytes(shape=(32, 28, 24), affine=LIA)
    scan = upload_scan(
        client, clinic_a, image, mask, site="siemens", subject="s01", annotated_slices="[3, 1, 3]"
    )
    assert scan["shape"] == [32, 28, 24]
    assert scan["spacing"] == pytest.approx([1.5, 1.0, 2.0])
    assert scan["orientation"] == "LIA"
    assert scan["site"] == "siemens" and scan["subject"] == "s01" and scan["has_mask"]
    assert scan["annotated_slices"] == [1, 3]
    import hashlib

    assert scan["sha256"] == hashlib.sha256(image).hexdigest()
    r = client.get(f"/v1/scans/{scan['id']}/image", headers=clinic_a.headers)
    assert r.content == image and r.headers["content-disposition"].endswith('.nii.gz"')
    assert client.get(f"/v1/scans/{scan['id']}/mask", headers=clinic_a.headers).content == mask
    assert client.get(f"/v1/scans/{scan['id']}", headers=clinic_a.headers).json() == scan


def test_plain_nii_4d_single_volume_and_no_mask(client: TestClient, clinic_a: ClinicCtx) -> None:
    data = np.random.default_rng(0).random((16, 16, 8, 1)).astype(np.float32)
    raw = nifti_bytes(data, gz=False)
    r = client.post("/v1/scans", headers=clinic_a.headers, files={"image": ("x.nii", raw)})
    assert r.status_code == 201, r.text
    assert r.json()["shape"] == [16, 16, 8] and not r.json()["has_mask"]
    r = client.get(f"/v1/scans/{r.json()['id']}/mask", headers=clinic_a.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_mask"


def test_comma_slices_and_filters(
    client: TestClient, clinic_a: ClinicCtx, phantom: tuple[bytes, bytes]
) -> None:
    image, mask = phantom
    upload_scan(client, clinic_a, image, mask, site="a", annotated_slices="2, 5")
    upload_scan(client, clinic_a, image, site="a")
    upload_scan(client, clinic_a, image, site="b")
    get = lambda q: client.get(f"/v1/scans{q}", headers=clinic_a.headers).json()  # noqa: E731
    assert get("")["total"] == 3
    assert get("?site=a")["total"] == 2
    annotated = get("?annotated=true")
    assert annotated["total"] == 1 and annotated["items"][0]["annotated_slices"] == [2, 5]
    assert get("?annotated=false&site=a")["total"] == 1


def test_delete_scan(
    client: TestClient,
    clinic_a: ClinicCtx,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
) -> None:
    before = counts(session_factory)
    scan = upload_scan(client, clinic_a, *phantom)
    assert client.delete(f"/v1/scans/{scan['id']}", headers=clinic_a.headers).status_code == 204
    assert client.get(f"/v1/scans/{scan['id']}", headers=clinic_a.headers).status_code == 404
    assert counts(session_factory) == before


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def _cases() -> list[tuple[str, dict[str, tuple[str, bytes]], dict[str, str], int, str]]:
    image, mask = phantom_bytes()
    other_grid = phantom_bytes(affine=np.diag([2.0, 2.0, 2.0, 1.0]))[1]
    nan = np.ones((16, 16, 8), np.float32)
    nan[3, 3, 3] = np.nan
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    non_binary = nifti_bytes((np.arange(32 * 32 * 24).reshape(32, 32, 24) % 3).astype(np.uint8))
    big = nifti_bytes(np.zeros((80, 80, 48), np.float32))  # 307200 voxels > 64**3 limit
    return [
        (
            "truncated-gzip",
            {"image": ("x.nii.gz", image[: len(image) // 2])},
            {},
            422,
            "invalid_image",
        ),
        (
            "2d",
            {"image": ("x.nii.gz", nifti_bytes(np.ones((16, 16), np.float32)))},
            {},
            422,
            "invalid_image",
        ),
        (
            "5d",
            {"image": ("x.nii.gz", nifti_bytes(np.ones((4, 4, 4, 1, 2), np.float32)))},
            {},
            422,
            "invalid_image",
        ),
        (
            "4d-two-volumes",
            {"image": ("x.nii.gz", nifti_bytes(np.ones((4, 4, 4, 2), np.float32)))},
            {},
            422,
            "invalid_image",
        ),
        ("nan", {"image": ("x.nii.gz", nifti_bytes(nan))}, {}, 422, "invalid_image"),
        ("png-named-png", {"image": ("x.png", png)}, {}, 422, "unsupported_file_type"),
        ("png-named-nii", {"image": ("x.nii.gz", png)}, {}, 422, "invalid_image"),
        ("zip", {"image": ("x.nii", _zip())}, {}, 422, "invalid_image"),
        ("empty", {"image": ("x.nii.gz", b"")}, {}, 422, "empty_file"),
        (
            "gzip-of-text",
            {"image": ("x.nii.gz", gzip.compress(b"hello" * 100))},
            {},
            422,
            "invalid_image",
        ),
        (
            "path-traversal-name",
            {"image": ("../../etc/passwd", image)},
            {},
            422,
            "unsupported_file_type",
        ),
        (
            "mask-other-grid",
            {"image": ("x.nii.gz", image), "mask": ("m.nii.gz", other_grid)},
            {},
            422,
            "invalid_mask",
        ),
        (
            "mask-other-shape",
            {
                "image": ("x.nii.gz", image),
                "mask": ("m.nii.gz", nifti_bytes(np.ones((8, 8, 8), np.uint8))),
            },
            {},
            422,
            "invalid_mask",
        ),
        (
            "mask-non-binary",
            {"image": ("x.nii.gz", image), "mask": ("m.nii.gz", non_binary)},
            {},
            422,
            "invalid_mask",
        ),
        (
            "slices-without-mask",
            {"image": ("x.nii.gz", image)},
            {"annotated_slices": "[1]"},
            422,
            "invalid_annotated_slices",
        ),
        (
            "slices-out-of-range",
            {"image": ("x.nii.gz", image), "mask": ("m.nii.gz", mask)},
            {"annotated_slices": "[1, 32]"},
            422,
            "invalid_annotated_slices",
        ),
        (
            "slices-negative",
            {"image": ("x.nii.gz", image), "mask": ("m.nii.gz", mask)},
            {"annotated_slices": "-1"},
            422,
            "invalid_annotated_slices",
        ),
        (
            "slices-garbage",
            {"image": ("x.nii.gz", image), "mask": ("m.nii.gz", mask)},
            {"annotated_slices": '[1, "a"]'},
            422,
            "invalid_annotated_slices",
        ),
        ("too-many-voxels", {"image": ("x.nii.gz", big)}, {}, 422, "invalid_image"),
        ("oversize", {"image": ("x.nii", b"\0" * (3 * 1024 * 1024))}, {}, 413, "too_large"),
        ("no-image", {}, {"site": "a"}, 422, "validation_error"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_refused_scans_store_nothing(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    case: tuple[str, dict[str, tuple[str, bytes]], dict[str, str], int, str],
) -> None:
    _, files, data, status, code = case
    before = counts(session_factory)
    r = client.post("/v1/scans", headers=clinic_a.headers, files=files or None, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert "/tmp" not in r.text and "spottune-upload" not in r.text
    assert counts(session_factory) == before


def test_storage_quota_is_413(
    client: TestClient, clinic_a: ClinicCtx, settings: object, phantom: tuple[bytes, bytes]
) -> None:
    from spottune.app.main import create_app

    small = settings.model_copy(update={"clinic_max_stored_bytes": 2 * len(phantom[0])})  # type: ignore[attr-defined]
    with TestClient(create_app(small, client.app.state.session_factory)) as c:  # type: ignore[attr-defined]
        upload_scan(c, clinic_a, phantom[0])
        r = c.post(
            "/v1/scans",
            headers=clinic_a.headers,
            files={"image": ("x.nii.gz", phantom[0]), "mask": ("m.nii.gz", phantom[1])},
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
