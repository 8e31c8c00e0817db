"""End-to-end runs of the ML commands on tiny synthetic phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from spottune.cli.ml_commands import register
from spottune.ml.synthetic import write_phantom

SHAPE = (32, 32, 16)
app = typer.Typer()
register(app)
runner = CliRunner()
# Site "b" scans are stored L-I-A with anisotropic voxels: axial slices run along voxel axis 1.
SITE_B_AFFINE = np.array(
    [[-1.0, 0, 0, 10], [0, 0, 1.5, -20], [0, -1.2, 0, 30], [0, 0, 0, 1]], dtype=float
)


def _run(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    scans = []
    sites: tuple[Literal["a", "b"], ...] = ("a", "b")
    for site in sites:
        for seed in (0, 1):
            image, mask = f"{site}{seed}.nii.gz", f"{site}{seed}_mask.nii.gz"
            affine = SITE_B_AFFINE if site == "b" else None
            write_phantom(
                root / image, root / mask, shape=SHAPE, seed=seed, site=site, affine=affine
            )
            scans.append(
                {
                    "id": f"{site}{seed}",
                    "site": site,
                    "head": "phantom",
                    "subject": f"s{seed}",
                    "image": image,
                    "mask": mask,
                }
            )
    manifest = {
        "version": 1,
        "seed": 0,
        "spacing_mm": [1, 1, 1],
        "sites": {"a": "", "b": ""},
        "scans": scans,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def source(data: Path) -> Path:
    out = data / "source.safetensors"
    _run(
        "train-source",
        "--manifest",
        data / "manifest.json",
        "--site",
        "a",
        "--out",
        out,
        "--width",
        "4",
        "--blocks-per-stage",
        "1",
        "--patch-size",
        "32",
        "--iterations",
        "4",
        "--batch-size",
        "4",
    )
    return out


def test_help_lists_commands() -> None:
    output = _run("--help")
    for name in ("train-source", "adapt", "segment", "evaluate", "policy-report"):
        assert name in output
    assert "--every-k" in _run("adapt", "--help")


def test_train_source_writes_weights_and_config(data: Path, source: Path) -> None:
    assert source.is_file() and source.with_suffix(".json").is_file()
    assert json.loads(source.with_suffix(".json").read_text())["width"] == 4
    out = data / "pairs.safetensors"
    _run(
        "train-source",
        "--image",
        data / "a0.nii.gz",
        "--mask",
        data / "a0_mask.nii.gz",
        "--out",
        out,
        "--width",
        "4",
        "--blocks-per-stage",
        "1",
        "--depth",
        "2",
        "--patch-size",
        "16",
        "--iterations",
        "2",
        "--batch-size",
        "2",
    )
    assert out.is_file()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("spottune", ["--annotated-slices", "2,8,12"]),
        ("spottune", ["--every-k", "4", "--policy", "global", "--lambda-reg", "0.01"]),
        ("finetune-first", ["--every-k", "5", "--adabn", "--unlabelled", "b1.nii.gz"]),
        ("none", []),
    ],
)
def test_adapt_then_segment_and_evaluate(
    data: Path, source: Path, method: str, extra: list[str]
) -> None:
    out = data / f"adapted-{method}-{len(extra)}.safetensors"
    pairs: list[str | Path] = (
        []
        if method == "none"
        else ["--image", data / "b0.nii.gz", "--mask", data / "b0_mask.nii.gz"]
    )
    extra = [str(data / e) if e.endswith(".nii.gz") else e for e in extra]
    _run(
        "adapt",
        "--model",
        source,
        "--out",
        out,
        "--method",
        method,
        *pairs,
        *extra,
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--patch-size",
        "16",
    )
    summary = json.loads(out.with_suffix(".policy.json").read_text())
    assert summary["method"] == method
    if method == "spottune":
        assert summary["policy"]["gate_names"]
        assert summary["annotated_slices"] == (3 if "--annotated-slices" in extra else 32 // 4)
        _run("policy-report", out.with_suffix(".policy.json"))
        png = out.with_suffix(".policy.png")
        assert png.read_bytes().startswith(b"\x89PNG")
        assert "finetuned_gates" in json.loads(
            png.with_name(png.stem + ".summary.json").read_text()
        )

    masks = data / f"masks-{out.stem}"
    _run("segment", data / "b1.nii.gz", "--model", out, "--out-dir", masks, "--batch-size", "8")
    written: Any = nib.load(str(masks / "b1_mask.nii.gz"))
    assert written.shape == SHAPE and np.allclose(written.affine, SITE_B_AFFINE)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1}
    # the engine: an instance-policy model runs in torch only; a plain U-Net's FP32 mask is the
    # same from OpenVINO (the default, auto) and torch
    in_torch = data / f"masks-{out.stem}-torch"
    if "--policy" not in extra and method == "spottune":
        result = runner.invoke(app, ["segment", str(data / "b1.nii.gz"), "--model", str(out),
                                     "--out-dir", str(in_torch), "--engine", "openvino"])
        assert result.exit_code == 2 and "plain U-Nets" in result.output
        assert not in_torch.exists()  # refused before anything was written
    else:
        _run("segment", data / "b1.nii.gz", "--model", out, "--out-dir", in_torch, "--engine",
             "torch")
        again: Any = nib.load(str(in_torch / "b1_mask.nii.gz"))
        assert np.array_equal(np.asarray(again.dataobj), np.asarray(written.dataobj))

    report = data / f"metrics-{out.stem}.json"
    _run(
        "evaluate",
        "--mask",
        masks / "b1_mask.nii.gz",
        "--reference",
        data / "b1_mask.nii.gz",
        "--out",
        report,
    )
    metrics = json.loads(report.read_text())
    assert len(metrics["scans"]) == 1 and set(metrics["mean"]) == {"dice", "sdice", "hd95"}


def test_evaluate_perfect_match(data: Path) -> None:
    output = _run(
        "evaluate", "--mask", data / "a0_mask.nii.gz", "--reference", data / "a0_mask.nii.gz"
    )
    assert "1.0000" in output


def test_user_errors_are_one_line(data: Path, source: Path) -> None:
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--mask",
            str(data / "a0_mask.nii.gz"),
            "--reference",
            str(data / "a0_mask.nii.gz"),
            "--reference",
            str(data / "a1_mask.nii.gz"),
        ],
    )
    assert result.exit_code == 2 and "one mask per image" in result.output
    result = runner.invoke(
        app,
        [
            "adapt",
            "--model",
            str(source),
            "--out",
            str(data / "x.safetensors"),
            "--method",
            "bogus",
        ],
    )
    assert result.exit_code == 2 and "--method" in result.output
    result = runner.invoke(
        app,
        [
            "segment",
            str(data / "manifest.json"),
            "--model",
            str(source),
            "--out-dir",
            str(data / "bad"),
        ],
    )
    assert result.exit_code == 2 and "unsupported" in result.output


@pytest.mark.parametrize("as_zip", [False, True])
def test_segment_a_dicom_series_to_dicom_seg(source: Path, tmp_path: Path, as_zip: bool) -> None:
    import io

    import highdicom as hd
    import pydicom

    from tests.dicom_series import GEOMETRIES, phantom, series_datasets, write_series, zip_bytes

    image, _ = phantom(seed=3)
    datasets = series_datasets(image, GEOMETRIES["sagittal"])
    folder = tmp_path / "T1_MPRAGE"
    paths = write_series(folder, datasets)
    target: Path = folder
    if as_zip:
        target = tmp_path / "T1_MPRAGE.zip"
        target.write_bytes(zip_bytes({f"series/{p.name}": p.read_bytes() for p in paths}))
    out = tmp_path / "out"
    _run("segment", target, "--model", source, "--out-dir", out, "--out-format", "dicom-seg")
    _run("segment", target, "--model", source, "--out-dir", out)
    seg = hd.seg.segread(io.BytesIO((out / "T1_MPRAGE_seg.dcm").read_bytes()))
    uids = [ds.SOPInstanceUID for ds in datasets]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    nifti: Any = nib.load(str(out / "T1_MPRAGE_mask.nii.gz"))
    mask = np.asarray(nifti.dataobj)  # [columns, rows, slices] in the series' slice order
    assert np.array_equal(frames[..., 0], np.transpose(mask, (2, 1, 0)))
    raw = pydicom.dcmread(out / "T1_MPRAGE_seg.dcm")
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID

    nifti_input = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(nifti_input))
    result = runner.invoke(app, ["segment", str(nifti_input), "--model", str(source),
                                 "--out-dir", str(out), "--out-format", "dicom-seg"])
    assert result.exit_code == 2 and "needs a DICOM series" in result.output
    result = runner.invoke(app, ["segment", str(tmp_path / "missing"), "--model", str(source),
                                 "--out-dir", str(out)])
    assert result.exit_code == 2


def test_training_flags_are_the_contract_options() -> None:
    """Same names and defaults as the API's options: a flag per option, its default shown."""
    from spottune.cli.contract_options import flag
    from spottune.contract import AdaptationOptions, PretrainingOptions

    for command, model in (("adapt", AdaptationOptions), ("train-source", PretrainingOptions)):
        output = _run(command, "--help")
        for name in model.model_fields:
            assert flag(name)[:18] in output, (command, name)
    assert "default: 6000" in _run("adapt", "--help").replace("\n", " ")
    source_help = " ".join(_run("train-source", "--help").split())
    assert "default: 10000" in source_help and "default: 256" in source_help


def test_out_of_range_flag_is_one_line(data: Path, source: Path) -> None:
    result = runner.invoke(app, ["adapt", "--model", str(source), "--out",
                                 str(data / "x.safetensors"), "--method", "none",
                                 "--iterations", "0"])
    assert result.exit_code == 2 and "--iterations" in result.output
    assert "1..1000000" in result.output
    assert not (data / "x.safetensors").exists()


def test_isotropic_spacing_is_one_number(data: Path) -> None:
    out = data / "iso.safetensors"
    _run("train-source", "--image", data / "a0.nii.gz", "--mask", data / "a0_mask.nii.gz",
         "--out", out, "--width", "4", "--blocks-per-stage", "1", "--depth", "2",
         "--patch-size", "16", "--iterations", "1", "--batch-size", "2", "--spacing-mm", "2")
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["preprocessing"]["spacing_mm"] == [2.0, 2.0]
