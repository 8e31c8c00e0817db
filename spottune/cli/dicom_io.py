"""Command-line inputs and outputs for DICOM: a series folder or zip in, a DICOM SEG out."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from spottune.ml.volumes import Volume, load_volume, save_mask

if TYPE_CHECKING:
    from spottune.ml.dicom import DicomSeries

OutFormat = Literal["nifti", "dicom-seg"]


def read_input(path: Path, out_format: OutFormat) -> tuple[Volume, DicomSeries | None]:
    """The volume of ``path`` and, for a DICOM folder or zip, its series (ValueError if not)."""
    from spottune.ml.dicom import is_series_path, load_series

    if is_series_path(path):
        series = load_series(path)
        return series.volume, series
    if out_format == "dicom-seg":
        raise ValueError(
            f"{path.name}: --out-format dicom-seg needs a DICOM series (a folder or .zip) to "
            "reference; use --out-format nifti for NIfTI/MGH inputs"
        )
    return load_volume(path), None


def write_output(mask: np.ndarray, volume: Volume, series: DicomSeries | None,
                 out_format: OutFormat, out_dir: Path, stem: str) -> Path:
    """Write ``mask`` as STEM_seg.dcm (a SEG on the series' frames) or STEM_mask.nii.gz."""
    if series is None or out_format == "nifti":
        target = out_dir / f"{stem}_mask.nii.gz"
        save_mask(mask, volume.affine, target)
        return target
    from spottune.ml.dicom_seg import mask_to_seg

    target = out_dir / f"{stem}_seg.dcm"
    target.write_bytes(mask_to_seg(mask, series.headers, instance_id=uuid.uuid4()))
    return target
