"""DICOM MR series -> a :class:`Volume` in RAS, keeping the series' identity for DICOM SEG output.

A series is validated before any pixel is decoded (one series, MR, consistent geometry, sane
sizes), then its slices are ordered and stacked by highdicom, which also derives the affine in
DICOM's LPS patient space. The internal volume keeps the usual NIfTI voxel order (column, row,
slice) and an RAS affine, so everything downstream treats it like an uploaded NIfTI file, and a
mask on that grid maps back onto the series' own frames (see :mod:`spottune.ml.dicom_seg`).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import MRImageStorage

from spottune.ml.volumes import Volume

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_IN_PLANE = 4096  # rows or columns of one slice
MAX_SLICES = 4096
GEOMETRY_TOLERANCE = 1e-4  # relative, for spacing and direction cosines read from text fields
REQUIRED = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
)
# Type 2 attributes a SEG copies from its source; an absent one is stored empty, as DICOM allows.
PATIENT_STUDY_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class DicomError(ValueError):
    """A DICOM input that cannot be used; the message says what is wrong and what to do."""


@dataclass
class DicomSeries:
    """A validated MR series as a volume plus what a DICOM SEG on its frames needs.

    Attributes:
        volume: float32 [columns, rows, slices] with an RAS affine (mm).
        headers: the series' datasets without pixel data, in the volume's slice order
            (``headers[k]`` is the frame of ``volume.data[:, :, k]``).
    """

    volume: Volume
    headers: list[Dataset]

    @property
    def study_instance_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.headers[0].FrameOfReferenceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.headers]


def read_datasets(paths: Sequence[Path], names: Sequence[str] | None = None) -> list[Dataset]:
    """Parse each file as DICOM (pixel data kept, not decoded); ``names`` label them in errors."""
    labels = list(names) if names is not None else [p.name for p in paths]
    datasets: list[Dataset] = []
    for path, label in zip(paths, labels, strict=True):
        try:
            datasets.append(pydicom.dcmread(str(path)))
        except InvalidDicomError:
            raise DicomError(
                f"{_short(label)} is not a DICOM file (no DICM preamble); the series must hold "
                "only the DICOM files of one MR series"
            ) from None
        except Exception as exc:  # pydicom raises many types for damaged files
            raise DicomError(
                f"{_short(label)} cannot be read as DICOM ({type(exc).__name__}: "
                f"{_short(str(exc), 120)}); it may be truncated: export the series again"
            ) from None
    if not datasets:
        raise DicomError("no DICOM file found; upload the files of one MR series")
    return datasets


def _short(text: str, limit: int = 60) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _check_headers(datasets: Sequence[Dataset], max_voxels: int | None) -> None:
    """Everything that can be checked without decoding pixels, in the order a user fixes it."""
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["MR"]:
        raise DicomError(
            f"the series' modality is {', '.join(m or 'missing' for m in modalities)}, not MR; "
            "spottune segments brain MRI: upload an MR series"
        )
    classes = sorted({str(ds.get("SOPClassUID", "")) for ds in datasets})
    if classes != [MRImageStorage]:
        names = ", ".join(pydicom.uid.UID(c).name if c else "missing" for c in classes)
        raise DicomError(
            f"SOP class {names} is not supported; upload a classic MR Image Storage series "
            "(one file per slice; export enhanced multi-frame MR as classic images)"
        )
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) != 1:
        raise DicomError(
            f"the files belong to {len(series)} series ({', '.join(series[:4])}); upload the "
            "files of one series per scan"
        )
    for keyword in REQUIRED:
        missing = sum(keyword not in ds or ds[keyword].value in (None, "") for ds in datasets)
        if missing:
            raise DicomError(
                f"{missing} file(s) lack {keyword}; the series cannot be placed in space"
            )
    if any("PixelData" not in ds for ds in datasets):
        raise DicomError("some files hold no pixel data; upload image files only")
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    if len(set(uids)) != len(uids):
        raise DicomError("the same SOP Instance UID occurs twice; remove the duplicate files")
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        values = {str(ds[keyword].value) for ds in datasets}
        if len(values) != 1:
            shown = ", ".join(sorted(values)[:4])
            raise DicomError(f"{keyword} differs between the files ({shown})")
    if any(int(ds.get("SamplesPerPixel", 1)) != 1 for ds in datasets):
        raise DicomError("colour images are not supported; upload a greyscale MR series")
    rows, columns, n = int(datasets[0].Rows), int(datasets[0].Columns), len(datasets)
    if not (1 <= rows <= MAX_IN_PLANE and 1 <= columns <= MAX_IN_PLANE and n <= MAX_SLICES):
        raise DicomError(
            f"{rows}x{columns} pixels x {n} slices is outside the supported sizes "
            f"(at most {MAX_IN_PLANE}x{MAX_IN_PLANE} pixels, {MAX_SLICES} slices)"
        )
    if max_voxels is not None and rows * columns * n > max_voxels:
        raise DicomError(
            f"{rows}x{columns} pixels x {n} slices = {rows * columns * n} voxels exceeds the "
            f"limit of {max_voxels}; crop or downsample the series"
        )
    _check_same(datasets, "PixelSpacing", positive=True)
    _check_same(datasets, "ImageOrientationPatient", positive=False)
    row, col = (np.asarray(datasets[0].ImageOrientationPatient, float).reshape(2, 3))
    if not (
        abs(np.linalg.norm(row) - 1) < 1e-3
        and abs(np.linalg.norm(col) - 1) < 1e-3
        and abs(row @ col) < 1e-3
    ):
        raise DicomError("ImageOrientationPatient is not two orthogonal unit vectors")


def _check_same(datasets: Sequence[Dataset], keyword: str, positive: bool) -> None:
    try:
        values = np.array([[float(v) for v in ds[keyword].value] for ds in datasets])
    except (TypeError, ValueError):
        raise DicomError(f"{keyword} is not a list of numbers in every file") from None
    expected = 2 if keyword == "PixelSpacing" else 6
    if values.shape[1] != expected or not np.isfinite(values).all():
        raise DicomError(f"{keyword} must hold {expected} finite numbers")
    if positive and (values <= 0).any():
        raise DicomError(f"{keyword} must be positive")
    if not np.allclose(values, values[0], rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE):
        raise DicomError(
            f"{keyword} differs between slices; upload one consistently acquired series"
        )


def _slice_order(datasets: list[Dataset]) -> list[int]:
    """Volume position of each dataset; refuses series that are not one regular stack of slices.

    A failure is diagnosed by retrying with one constraint relaxed at a time, so the message
    names the actual problem (gap, duplicate, tilt or irregular spacing).
    """
    if len(datasets) == 1:
        return [0]
    _, order = hd.spatial.get_series_volume_positions(datasets)
    if order is not None:
        return order
    if hd.spatial.get_series_volume_positions(datasets, allow_duplicate_positions=True)[1]:
        problem = "two slices share one position (repeated or mixed acquisitions)"
    elif hd.spatial.get_series_volume_positions(datasets, allow_missing_positions=True)[1]:
        problem = "slices are missing: the positions have gaps; upload the complete series"
    elif hd.spatial.get_series_volume_positions(datasets, perpendicular_tol=2.0)[1]:
        problem = (
            "slices are not stacked along their normal (gantry tilt or shear); resample the "
            "series to an untilted grid before uploading"
        )
    else:
        problem = "slice spacing is not uniform; upload a series with equally spaced slices"
    raise DicomError(f"the series is not a regular 3D volume: {problem}")


def _decode(datasets: Sequence[Dataset]) -> None:
    """Decode every frame now, so a damaged or unsupported one is named (pydicom caches it)."""
    for index, ds in enumerate(datasets):
        try:
            frame = ds.pixel_array
        except Exception as exc:  # decoders raise many types
            syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if ds.file_meta else "?"
            name = getattr(syntax, "name", str(syntax))
            raise DicomError(
                f"slice {index + 1} (SOP Instance {ds.SOPInstanceUID}): pixel data cannot be "
                f"decoded ({name}; {_short(str(exc), 120)}); the file may be truncated, or "
                "export the series uncompressed"
            ) from None
        if frame.shape != (int(ds.Rows), int(ds.Columns)):
            raise DicomError(
                f"slice {index + 1}: pixel data holds {frame.shape}, not the declared "
                f"{int(ds.Rows)}x{int(ds.Columns)}"
            )


def series_from_datasets(datasets: list[Dataset], max_voxels: int | None = None) -> DicomSeries:
    """Validate one MR series and build its volume (float32 [columns, rows, slices], RAS affine)."""
    _check_headers(datasets, max_voxels)
    order = _slice_order(datasets)
    ordered = [datasets[order.index(i)] for i in range(len(datasets))]
    _decode(ordered)
    if len(ordered) == 1 and "SpacingBetweenSlices" not in ordered[0]:
        # One slice has no spacing to measure; its thickness is the honest voxel depth.
        ordered[0].SpacingBetweenSlices = float(ordered[0].get("SliceThickness") or 1.0)
    try:
        stacked = hd.get_volume_from_series(ordered, dtype=np.float32)
    except Exception as exc:  # highdicom raises ValueError and others for odd series
        raise DicomError(f"the series cannot be stacked into a volume ({exc})") from None
    # highdicom's array is [slice, row, column] with an LPS affine over those indices. Slices
    # are put in the order of the row x column normal (as NIfTI converters do), so the index
    # axes (column, row, slice) are right-handed and slice k is the k-th along the normal.
    row, col = np.asarray(ordered[0].ImageOrientationPatient, float).reshape(2, 3)
    if len(ordered) > 1 and stacked.affine[:3, 0] @ np.cross(row, col) < 0:
        stacked = stacked.flip_spatial(0)
        ordered.reverse()
    first = np.asarray(ordered[0].ImagePositionPatient, float)
    if not np.allclose(stacked.affine[:3, 3], first, atol=1e-3):
        raise DicomError("the series' slice order could not be established consistently")
    stacked = stacked.permute_spatial_axes([2, 1, 0])
    data = np.ascontiguousarray(stacked.array, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DicomError("the pixel values hold NaN or infinity after rescaling")
    affine = LPS_TO_RAS @ stacked.affine
    headers = [_header_only(ds) for ds in ordered]
    logger.debug("DICOM series read: %s voxels", data.shape)
    return DicomSeries(volume=Volume(data=data, affine=affine), headers=headers)


def read_series(
    paths: Sequence[Path], names: Sequence[str] | None = None, max_voxels: int | None = None
) -> DicomSeries:
    """Read and validate the files of one MR series (see :func:`series_from_datasets`)."""
    return series_from_datasets(read_datasets(paths, names), max_voxels)


def _header_only(ds: Dataset) -> Dataset:
    """A copy without pixel data or private tags: what a SEG needs to reference the frame."""
    out = Dataset()
    for element in ds:
        if element.keyword == "PixelData" or element.tag.is_private:
            continue
        out.add(element)
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def headers_to_json(headers: Sequence[Dataset]) -> bytes:
    """The headers as DICOM JSON (PS3.18 F): safe to store and parse, no pickling."""
    return json.dumps([ds.to_json_dict(bulk_data_threshold=2**20) for ds in headers]).encode()


def headers_from_json(data: bytes) -> list[Dataset]:
    return [Dataset.from_json(item) for item in json.loads(data)]


def volume_to_nifti_bytes(volume: Volume) -> bytes:
    """The volume as gzipped NIfTI bytes; integer-valued data (most MR) is kept as int16/int32."""
    data = volume.data
    dtype: type = np.float32
    if np.array_equal(data, np.round(data)):
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if low >= -(2**15) and high < 2**15:
            dtype = np.int16
        elif low >= -(2**31) and high < 2**31:
            dtype = np.int32
    image = nib.Nifti1Image(data.astype(dtype), volume.affine)
    image.header.set_data_dtype(dtype)
    return gzip.compress(image.to_bytes(), compresslevel=6)


def is_series_path(path: Path) -> bool:
    """A folder or a .zip: where a DICOM series is given (a volume is a single .nii/.mgz file)."""
    return path.is_dir() or path.name.lower().endswith(".zip")


def _series_members(path: Path) -> tuple[list[Dataset], int]:
    """Datasets of a folder (recursively) or a zip (read in memory, never extracted)."""
    datasets: list[Dataset] = []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _skipped(p.name))
        return read_datasets(files, [str(p.relative_to(path)) for p in files]), len(files)
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if not i.is_dir() and not _skipped(i.filename)]
        for info in members:
            try:
                datasets.append(pydicom.dcmread(io.BytesIO(archive.read(info))))
            except Exception as exc:  # pydicom raises many types for damaged files
                name = _short(info.filename)
                raise DicomError(f"{name} cannot be read as DICOM ({exc})") from None
    return datasets, len(members)


def _skipped(name: str) -> bool:
    """Files exports put next to the images (DICOMDIR, notes, OS litter)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base in ("DICOMDIR", ".DS_Store", "Thumbs.db") or base.startswith(".") or (
        "__MACOSX" in name
    )


def load_series(path: Path, max_voxels: int | None = None) -> DicomSeries:
    """Read one MR series from a folder of DICOM files or a .zip of them (command line use)."""
    path = Path(path)
    try:
        datasets, n = _series_members(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DicomError(f"{path.name}: cannot be read as a DICOM folder or zip ({exc})") from None
    if n == 0:
        raise DicomError(f"{path.name}: holds no DICOM files")
    return series_from_datasets(datasets, max_voxels)
