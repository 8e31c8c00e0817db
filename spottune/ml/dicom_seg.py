"""Brain masks <-> DICOM Segmentation objects on the frames of their source MR series.

Masks live on the internal volume of a series ([columns, rows, slices], see
:mod:`spottune.ml.dicom`), so frame ``k`` of the SEG is ``mask[:, :, k].T`` and references the
series' ``k``-th image. highdicom builds and reads the SEG (plane positions, references,
bit-packing); this module only chooses the frame order and the segment's description.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spottune.ml.dicom import DicomError, DicomSeries
from spottune.ml.labels import LabelError, LabelSet, binarize
from spottune.ml.volumes import Volume

SEGMENT_LABEL = "Brain"
SOFTWARE = "spottune"
MAX_SEGMENTS = 256  # bounds the frames a SEG upload may hold per source slice


def uid_from_uuid(value: uuid.UUID) -> str:
    """A DICOM UID derived from a UUID (the standard's 2.25 root): stable for one mask."""
    return f"2.25.{value.int}"


def _description() -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Brain,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=SOFTWARE,
            version="1",
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )


def mask_to_seg(
    mask: np.ndarray,
    headers: Sequence[Dataset],
    *,
    instance_id: uuid.UUID,
    created: datetime | None = None,
) -> bytes:
    """Encode a mask on a series' volume as a binary DICOM SEG (one segment, "Brain").

    Args:
        mask: [columns, rows, slices] on the series' internal volume; non-zero is brain.
        headers: the series' datasets in volume slice order (``DicomSeries.headers``).
        instance_id: derives the SEG's Series and SOP Instance UIDs, so the same mask always
            gets the same identity.
        created: content date and time to record (default: now); fixed for reproducible bytes.

    Returns:
        The SEG as DICOM Part 10 file bytes (every frame kept, even empty ones, so frame ``k``
        is always source image ``k``).
    """
    frames = np.ascontiguousarray(np.transpose(np.asarray(mask) != 0, (2, 1, 0)), dtype=np.uint8)
    first = headers[0]
    if frames.shape != (len(headers), int(first.Rows), int(first.Columns)):
        raise DicomError(
            f"mask of shape {mask.shape} does not lie on the series' grid "
            f"({int(first.Columns)}x{int(first.Rows)}x{len(headers)})"
        )
    seg = hd.seg.Segmentation(
        source_images=list(headers),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description()],
        series_instance_uid=uid_from_uuid(instance_id),
        series_number=9001,
        sop_instance_uid=uid_from_uuid(uuid.UUID(int=instance_id.int ^ 1)),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=SOFTWARE,
        device_serial_number="none",
        series_description="Brain mask",
        omit_empty_frames=False,
    )
    if created is not None:
        _pin(seg, instance_id, created)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pin(seg: Dataset, instance_id: uuid.UUID, created: datetime) -> None:
    """Replace what highdicom stamps with "now" or a fresh UID, so one mask gives one file."""
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    for prefix in ("Content", "Series", "InstanceCreation"):
        setattr(seg, f"{prefix}Date", date)
        setattr(seg, f"{prefix}Time", time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    organization = uid_from_uuid(uuid.UUID(int=instance_id.int ^ 2))
    for item in (*seg.get("DimensionOrganizationSequence", []),
                 *seg.get("DimensionIndexSequence", [])):
        item.DimensionOrganizationUID = organization


def read_seg(data: bytes) -> hd.seg.Segmentation:
    """Parse DICOM SEG bytes (DicomError when they are not a Segmentation)."""
    try:
        return hd.seg.segread(io.BytesIO(data))
    except Exception as exc:  # pydicom/highdicom raise many types
        raise DicomError(
            f"not a readable DICOM Segmentation ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None


def seg_to_labelmap(seg: hd.seg.Segmentation, series: DicomSeries) -> np.ndarray:
    """The SEG's segments on the series' volume: int [columns, rows, slices], segment numbers.

    The SEG must reference this series and share its frame of reference; segments must not
    overlap (a label map has one label per voxel).
    """
    if str(seg.FrameOfReferenceUID) != series.frame_of_reference_uid:
        raise DicomError(
            "the SEG's Frame of Reference differs from the image series'; upload the SEG made "
            "on this series"
        )
    rows, columns = int(series.headers[0].Rows), int(series.headers[0].Columns)
    if (int(seg.get("Rows", 0)), int(seg.get("Columns", 0))) != (rows, columns):
        raise DicomError(
            f"the SEG's frames are {seg.get('Rows')}x{seg.get('Columns')} pixels, the series' "
            f"{rows}x{columns}; upload the SEG made on this series"
        )
    frames = int(seg.get("NumberOfFrames", 1))
    if frames > len(series.headers) * MAX_SEGMENTS:
        raise DicomError(
            f"the SEG holds {frames} frames for a series of {len(series.headers)} slices; at most "
            f"{MAX_SEGMENTS} segments per slice are accepted"
        )
    referenced = {
        str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])
    }
    if series.series_instance_uid not in referenced:
        raise DicomError("the SEG does not reference the uploaded series; upload its own SEG")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=series.sop_instance_uids,
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:  # highdicom raises ValueError/RuntimeError with details
        raise DicomError(f"the SEG's frames cannot be placed on the series ({exc})") from None
    return np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))


def seg_to_mask(
    data: bytes, series: DicomSeries, labels: LabelSet | None = None
) -> np.ndarray:
    """SEG bytes -> bool [columns, rows, slices] on ``series``; ``labels`` picks segments."""
    seg = read_seg(data)
    try:
        return binarize(seg_to_labelmap(seg, series), labels, "mask (DICOM SEG segments)")
    except LabelError as exc:
        raise DicomError(str(exc)) from None


def align_to_grid(image: nib.spatialimages.SpatialImage, like: Volume) -> np.ndarray:
    """Voxel data of ``image`` reordered onto ``like``'s grid (axis flips/permutations only).

    A NIfTI mask made from a DICOM series by another converter (dcm2niix flips rows) lies on the
    same voxel centres in another array order; that is accepted, any other grid is refused.
    """
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DicomError(f"the mask must be 3D; it has shape {list(data.shape)}")
    affine = np.asarray(image.affine, dtype=float)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(like.affine)
    )
    moved = nib.orientations.apply_orientation(data, ornt)
    moved_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if moved.shape != like.data.shape or not np.allclose(moved_affine, like.affine, atol=1e-3):
        raise DicomError(
            f"the mask (shape {list(data.shape)}) is not on the series' grid (shape "
            f"{list(like.data.shape)}); save it with the series' geometry"
        )
    return np.ascontiguousarray(moved)
