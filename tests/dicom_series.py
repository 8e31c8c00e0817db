"""Writing real DICOM MR series (MR Image Storage, realistic tags) from a volume, for tests.

A volume [columns, rows, slices] becomes one file per slice: frame ``k`` is ``volume[:, :, k].T``,
its ImagePositionPatient is ``origin + k * spacing * normal``. The geometry (direction cosines in
LPS, spacing, origin) is chosen per test, so the expected RAS affine is known independently of
the code under test (:func:`expected_affine`).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

from spottune.ml.synthetic import make_phantom

SHAPE = (24, 28, 20)  # columns, rows, slices: tiny and non-cubic so axis mix-ups show


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


@dataclass
class Geometry:
    """Direction cosines in LPS: ``row`` along increasing column index, ``col`` down the rows."""

    row: tuple[float, float, float]
    col: tuple[float, float, float]
    pixel_spacing: tuple[float, float] = (1.0, 1.2)  # (between rows, between columns) in mm
    slice_spacing: float = 1.5
    origin: tuple[float, float, float] = (-12.0, -20.0, 7.5)
    reverse_normal: bool = False  # stack slices against the row x col normal

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row, self.col)
        return -n if self.reverse_normal else n


def _oblique() -> Geometry:
    rot = _rotation("x", 17.0) @ _rotation("z", -9.0)
    return Geometry(row=tuple(rot @ [1, 0, 0]), col=tuple(rot @ [0, 1, 0]))  # type: ignore[arg-type]


GEOMETRIES: dict[str, Geometry] = {
    "axial": Geometry(row=(1, 0, 0), col=(0, 1, 0)),
    "sagittal": Geometry(row=(0, 1, 0), col=(0, 0, -1), pixel_spacing=(1.1, 0.9)),
    "coronal-flipped": Geometry(row=(-1, 0, 0), col=(0, 0, -1), reverse_normal=True),
    "oblique": _oblique(),
}


def expected_volume(volume: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """What reading the series must give: (data, RAS affine) of [columns, rows, slices].

    Slices are read in the order of the row x column normal, so a series written against it
    comes back with its slices reversed and its origin at the last written slice.
    """
    normal = np.cross(geometry.row, geometry.col)
    origin = np.asarray(geometry.origin, dtype=float)
    if geometry.reverse_normal:
        volume = volume[:, :, ::-1]
        origin = origin - (volume.shape[2] - 1) * geometry.slice_spacing * normal
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(geometry.row) * geometry.pixel_spacing[1]
    lps[:3, 1] = np.asarray(geometry.col) * geometry.pixel_spacing[0]
    lps[:3, 2] = normal * geometry.slice_spacing
    lps[:3, 3] = origin
    return volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def phantom(seed: int = 0, site: str = "a") -> tuple[np.ndarray, np.ndarray]:
    """(uint16-valued float32 image, uint8 brain mask), both [columns, rows, slices]."""
    image, mask = make_phantom(SHAPE, seed=seed, site=site)  # type: ignore[arg-type]
    return np.round(np.clip(image, 0, 4000)).astype(np.float32), mask


@dataclass
class SeriesIds:
    study: str = field(default_factory=generate_uid)
    series: str = field(default_factory=generate_uid)
    frame_of_reference: str = field(default_factory=generate_uid)


def _slice_dataset(frame: np.ndarray, k: int, geometry: Geometry, ids: SeriesIds,
                   modality: str, n_slices: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = "Test^Phantom", "PHANTOM-001"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", "O", "055Y"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids.study, ids.series
    ds.FrameOfReferenceUID = ids.frame_of_reference
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101500", "1", "A1"
    ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = (
        "20260101", "102000", "20260101", "102000")
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, "Phantom", "Tiny 3T"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 3, n_slices - k, "T1 MPRAGE"
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "3D"
    ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = 3.0, 2300.0, 2.98
    ds.FlipAngle, ds.ImagingFrequency, ds.ImagedNucleus = 9.0, 123.25, "1H"
    ds.BodyPartExamined, ds.PatientPosition = "HEAD", "HFS"
    ds.SliceThickness = geometry.slice_spacing
    ds.SpacingBetweenSlices = geometry.slice_spacing
    ds.PixelSpacing = list(geometry.pixel_spacing)
    ds.ImageOrientationPatient = [round(float(v), 8) for v in (*geometry.row, *geometry.col)]
    position = np.asarray(geometry.origin) + k * geometry.slice_spacing * geometry.normal
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.SliceLocation = round(float(position @ np.cross(geometry.row, geometry.col)), 6)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frame.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    ds.PixelData = np.ascontiguousarray(frame, dtype=np.uint16).tobytes()
    return ds


def series_datasets(volume: np.ndarray, geometry: Geometry, *, ids: SeriesIds | None = None,
                    modality: str = "MR") -> list[Dataset]:
    """One dataset per slice of ``volume`` [columns, rows, slices] (in slice order)."""
    ids = ids or SeriesIds()
    n = volume.shape[2]
    return [_slice_dataset(volume[:, :, k].T, k, geometry, ids, modality, n) for k in range(n)]


def write_series(folder: Path, datasets: list[Dataset], *, rle: bool = False,
                 shuffle_seed: int | None = 0) -> list[Path]:
    """Write datasets as files with uninformative, shuffled names (as PACS exports look)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.arange(len(datasets))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    paths = []
    for n, index in enumerate(order):
        ds = datasets[int(index)]
        if rle:
            ds.compress(RLELossless)
        path = folder / f"IM{n:05d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def series_zip(datasets: list[Dataset], tmp: Path, *, rle: bool = False,
               prefix: str = "DICOM/") -> bytes:
    """The series as a zip of its files (in a sub-folder, as exports are)."""
    paths = write_series(tmp, datasets, rle=rle)
    return zip_bytes({f"{prefix}{p.name}": p.read_bytes() for p in paths})
