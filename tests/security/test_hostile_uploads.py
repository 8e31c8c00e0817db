"""Hostile and broken uploads: a clear 4xx, nothing stored, the service still answering.

Extends tests/app (which already covers truncated gzip, 2D/5D, NaN, PNG, ZIP, empty files,
masks on another grid or non-binary, plain pickles, wrong keys/shapes and the body limit) with
the cases an attacker would try: decompression bombs, lying headers, code-running pickles,
safetensors headers that lie about their tensors, absurd configs and path-traversal names.
"""

from __future__ import annotations

import json
import pickle
import resource
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.app.helpers import TINY_CONFIG, ClinicCtx, counts, tiny_weights
from tests.security import hostile

Files = dict[str, tuple[str, bytes]]


def _refused(
    client: TestClient,
    clinic: ClinicCtx,
    factory: sessionmaker[Session],
    path: str,
    files: Files,
    data: dict[str, str],
    status: int,
    code: str,
    words: tuple[str, ...] = (),
) -> str:
    """Post, check the refusal, that nothing was stored and that the service answers."""
    before = counts(factory)
    r = client.post(path, headers=clinic.headers, files=files, data=data)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, r.text
    message = error["message"]
    for word in words:
        assert word in message, message
    assert "Traceback" not in r.text and "spottune-upload" not in r.text
    assert counts(factory) == before
    assert client.get("/healthz").json() == {"status": "ok"}
    return str(message)


def _scan_cases() -> list[tuple[str, Files, int, str, tuple[str, ...]]]:
    ones = np.ones((8, 8, 8), np.float32)
    inf = ones.copy()
    inf[1, 2, 3] = np.inf
    float_mask = np.zeros((8, 8, 8), np.float32)
    float_mask[0, 0, 0] = np.nan
    good = hostile.volume_bytes(ones)
    return [
        ("short-data-gz", {"image": ("x.nii.gz", hostile.short_data())}, 422, "invalid_image",
         ("truncated", "[64, 64, 64]")),
        ("short-data-nii", {"image": ("x.nii", hostile.short_data(gz=False))}, 422,
         "invalid_image", ("truncated",)),
        ("enormous-dims", {"image": ("x.nii.gz", hostile.short_data((32767, 32767, 32767)))},
         422, "invalid_image", ("limit",)),
        ("zero-dim", {"image": ("x.nii.gz", hostile.raw_header_with_dims([3, 0, 4, 4]))}, 422,
         "invalid_image", ()),
        ("negative-dim", {"image": ("x.nii", hostile.raw_header_with_dims([3, -4, 4, 4]))},
         422, "invalid_image", ()),
        ("complex-voxels", {"image": ("x.nii.gz", hostile.volume_bytes(ones.astype(np.complex64)))},
         422, "invalid_image", ("complex64",)),
        ("inf-voxels", {"image": ("x.nii.gz", hostile.volume_bytes(inf))}, 422, "invalid_image",
         ("infinite",)),
        ("not-gzip-named-gz", {"image": ("x.nii.gz", hostile.volume_bytes(ones, gz=False))}, 422,
         "invalid_image", ("gzip",)),
        ("zip-named-nii-gz", {"image": ("x.nii.gz", hostile.zip_bytes())}, 422, "invalid_image",
         ()),
        ("png-named-nii", {"image": ("x.nii", hostile.png_bytes())}, 422, "invalid_image", ()),
        ("pickle-named-nii", {"image": ("x.nii", pickle.dumps({"a": np.ones(3)}))}, 422,
         "invalid_image", ()),
        ("pickle-named-mgz", {"image": ("x.mgz", pickle.dumps([1, 2]))}, 422, "invalid_image", ()),
        ("truncated-mgz", {"image": ("x.mgz", hostile.mgz_bytes(ones)[:-40])}, 422,
         "invalid_image", ()),
        ("mask-nan", {"image": ("x.nii.gz", good),
                      "mask": ("m.nii.gz", hostile.volume_bytes(float_mask))}, 422,
         "invalid_mask", ()),
        ("mask-bomb", {"image": ("x.nii.gz", good), "mask": ("m.nii.gz", hostile.gzip_bomb(
            (8, 8, 8), 256 * hostile.MIB))}, 422, "invalid_mask", ("bomb",)),
        ("mask-short", {"image": ("x.nii.gz", good),
                        "mask": ("m.nii.gz", hostile.short_data((8, 8, 8)))}, 422,
         "invalid_mask", ("truncated",)),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _scan_cases(), ids=lambda c: c[0])
def test_hostile_scans_are_refused(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    case: tuple[str, Files, int, str, tuple[str, ...]],
) -> None:
    _, files, status, code, words = case
    _refused(client, clinic_a, session_factory, "/v1/scans", files, {}, status, code, words)


def test_gzip_bomb_refused_without_inflating(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session]
) -> None:
    bomb = hostile.gzip_bomb((64, 64, 64), 2 * 1024**3)  # 2 MB on the wire, 2 GiB inflated
    assert len(bomb) < 4 * hostile.MIB
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    message = _refused(
        client, clinic_a, session_factory, "/v1/scans", {"image": ("b.nii.gz", bomb)}, {},
        422, "invalid_image", ("bomb",),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert elapsed < 3.0, f"took {elapsed:.1f} s: the bomb was inflated ({message})"
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_valid_mgz_and_plain_nii_still_accepted(client: TestClient, clinic_a: ClinicCtx) -> None:
    volume = np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)
    for name, data in (
        ("x.mgz", hostile.mgz_bytes(volume)),
        ("x.nii", hostile.volume_bytes(volume, gz=False)),
        ("x.nii.gz", hostile.volume_bytes(volume.astype(np.int16))),
    ):
        r = client.post("/v1/scans", headers=clinic_a.headers, files={"image": (name, data)})
        assert r.status_code == 201, r.text
        assert r.json()["shape"] == [8, 8, 6], name


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The upload temp area, made private to the test so its contents can be checked."""
    import tempfile

    area = tmp_path / "uploads" / "a" / "b"
    area.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(area))
    yield area


def test_path_traversal_names_are_never_paths(
    client: TestClient,
    clinic_a: ClinicCtx,
    phantom: tuple[bytes, bytes],
    private_tmp: Path,
    tmp_path: Path,
) -> None:
    marker = f"pwn-{uuid.uuid4().hex[:8]}"
    names = [
        f"../../{marker}.nii.gz",
        f"../../../../../../../../tmp/{marker}.nii.gz",
        f"/tmp/{marker}-abs.nii.gz",
        f"..\\..\\{marker}-win.nii.gz",
        "../../etc/passwd.nii.gz",
    ]
    for name in names:
        r = client.post(
            "/v1/scans",
            headers=clinic_a.headers,
            files={"image": (name, phantom[0]), "mask": (name, phantom[1])},
        )
        assert r.status_code == 201, r.text
        assert marker not in r.text and "passwd" not in r.text
        image = client.get(f"/v1/scans/{r.json()['id']}/image", headers=clinic_a.headers)
        assert marker not in image.headers["content-disposition"]
    assert list(private_tmp.iterdir()) == [], "upload temp files were left behind"
    written = [p for p in tmp_path.rglob(f"*{marker}*")]
    written += [p for p in (Path("/tmp"), Path.cwd()) for p in p.glob(f"{marker}*")]
    assert written == [], f"a client file name was used as a path: {written}"
    assert not Path("/etc/passwd.nii.gz").exists()


def test_chunked_body_over_limit_is_413(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session]
) -> None:
    """No Content-Length (chunked): the limit is enforced while the body streams in."""
    boundary = "spottuneboundary"
    limit = client.app.state.settings.max_upload_bytes  # type: ignore[attr-defined]

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            'filename="x.nii"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for _ in range(3 * limit // hostile.MIB + 2):
            yield b"\0" * hostile.MIB
        yield f"\r\n--{boundary}--\r\n".encode()

    before = counts(session_factory)
    r = client.post(
        "/v1/scans",
        headers={**clinic_a.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    assert "limit" in r.json()["error"]["message"]
    assert counts(session_factory) == before
    assert client.get("/healthz").status_code == 200


def test_code_running_weights_never_run(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    for label, payload in hostile.malicious_pickles(tmp_path / "x").items():
        target = tmp_path / f"pwned-{label}"
        payload = payload.replace(str(tmp_path / "x").encode(), str(target).encode())
        for name in ("w.pt", "w.safetensors", "w.pkl"):
            _refused(
                client, clinic_a, session_factory, "/v1/models",
                {"weights": (name, payload)}, {"config": json.dumps(TINY_CONFIG)},
                422, "invalid_weights", ("weights",),
            )  # fmt: skip
        assert not target.exists(), f"{label}: unpickling ran code"


def test_app_never_unpickles() -> None:
    """Static guard: no pickle or torch.load anywhere in the API package."""
    root = Path(__file__).resolve().parents[2] / "spottune" / "app"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for needle in ("torch.load", "pickle.load", "import pickle", "weights_only"):
            assert needle not in text, f"{path}: {needle}"


def _weights_cases() -> list[tuple[str, bytes, tuple[str, ...]]]:
    good = tiny_weights()
    header, data = hostile.split_safetensors(good)
    key = hostile.first_tensor(header)
    return [
        ("absurd-shape", hostile.absurd_shape(good), (key,)),
        ("int64-for-float", hostile.int64_weights(good), ("dtype",)),
        ("data-cut-short", good[:-64], ("bytes",)),
        ("data-extra", good + b"\0" * 64, ("bytes",)),
        ("negative-shape", hostile.safetensors_bytes(
            {key: {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), (key,)),
        ("unknown-dtype", hostile.safetensors_bytes(
            {key: {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), ("Q99",)),
        ("huge-header-len", b"\xff" * 8 + b"{}", ("header",)),
        ("header-not-object", hostile.safetensors_bytes([1, 2], b""), ("header",)),  # type: ignore[arg-type]
        ("overlapping", hostile.safetensors_bytes(
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
             "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         ("overlap",)),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _weights_cases(), ids=lambda c: c[0])
def test_lying_safetensors_are_refused(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    case: tuple[str, bytes, tuple[str, ...]],
) -> None:
    _, weights, words = case
    start = time.monotonic()
    _refused(
        client, clinic_a, session_factory, "/v1/models",
        {"weights": ("w.safetensors", weights)}, {"config": json.dumps(TINY_CONFIG)},
        422, "invalid_weights", words,
    )  # fmt: skip
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "config,status,words",
    [
        ({**TINY_CONFIG, "depth": 100}, 422, ("depth",)),
        ({**TINY_CONFIG, "blocks_per_stage": 10**9}, 422, ("blocks_per_stage",)),
        ({**TINY_CONFIG, "gating": {"temperature": 0}}, 422, ("temperature",)),
        ({**TINY_CONFIG, "preprocessing": {"spacing_mm": [-1, 1]}}, 422, ("spacing_mm",)),
        ({**TINY_CONFIG, "preprocessing": {"slice_axis": 7}}, 422, ("slice_axis",)),
        ({**TINY_CONFIG, "architecture": "transformer"}, 422, ("architecture",)),
        ('{"width": NaN}', 422, ()),
        ('{"width": 1e999}', 422, ()),
        ("[" * 20000 + "]" * 20000, 422, ()),
        ("null", 422, ()),
        ('{"width": 4, "width": 4, "x": "' + "a" * 70_000 + '"}', 413, ()),
    ],
    ids=lambda v: str(v)[:30],
)
def test_absurd_configs_are_refused(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    config: object,
    status: int,
    words: tuple[str, ...],
) -> None:
    text = config if isinstance(config, str) else json.dumps(config)
    for as_file in (False, True):
        files: Files = {"weights": ("w.safetensors", tiny_weights())}
        data = {} if as_file else {"config": text}
        if as_file:
            files["config"] = ("config.json", text.encode())
        code = "invalid_config" if status == 422 else "too_large"
        _refused(client, clinic_a, session_factory, "/v1/models", files, data, status, code, words)
