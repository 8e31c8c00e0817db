"""Build the multi-site benchmark: heads -> subjects (deformations) -> sites -> files + manifest.

Everything is seeded. Each scan draws from its own random stream, keyed by (seed, site, head,
subject), so the files do not depend on worker count or order, and the same seed gives
byte-identical files (gzip written with mtime 0).
"""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from spottune.data.deform import make_subject
from spottune.data.fetch import HEADS, fetch_heads
from spottune.data.grid import FOV_MM, Grid
from spottune.data.heads import Head, load_registry_head, make_phantom_head
from spottune.data.sites import SITE_NAMES, acquire, get_site

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 2  # 2: scans carry "reference_mask" (common grid)
FULL_SPACING_MM = 1.0
QUICK_SPACING_MM = 3.0
N_PHANTOMS = 3
_STREAM_SUBJECT, _STREAM_SITE = 0, 1  # separate random streams: anatomy vs acquisition

Source = Literal["registry", "synthetic"]


@dataclass(frozen=True)
class PrepareOptions:
    """What to build. spacing_mm: isotropic base grid (1 mm; 3 mm in quick mode)."""

    out: Path
    seed: int = 0
    subjects_per_head: int = 4
    sites: tuple[str, ...] = SITE_NAMES
    spacing_mm: float = FULL_SPACING_MM
    source: Source = "registry"
    cache_dir: Path | None = None
    workers: int = 1
    gzip_level: int = 1  # noisy images barely compress better at 6, and take 3x longer


@dataclass(frozen=True)
class ScanJob:
    site: str
    site_index: int  # position in SITE_NAMES: stable when only some sites are built
    head_index: int
    subject_index: int  # unique per head across sites: each site scans different people
    scan_id: str
    subject: str
    image: str  # paths relative to the output directory
    mask: str
    reference_mask: str  # the subject's mask on the common grid, before acquisition


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray, level: int = 6) -> bytes:
    """A .nii.gz file as bytes, reproducible: nibabel writes the NIfTI, gzip gets mtime 0."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=level, mtime=0)


def load_heads(options: PrepareOptions) -> list[Head]:
    grid = Grid.covering(FOV_MM, (options.spacing_mm,) * 3)
    if options.source == "synthetic":
        return [make_phantom_head(index, grid, seed=0) for index in range(N_PHANTOMS)]
    return [load_registry_head(files, grid) for files in fetch_heads(options.cache_dir)]


def plan_jobs(options: PrepareOptions, heads: Sequence[Head]) -> list[ScanJob]:
    jobs = []
    for site in options.sites:
        site_index = SITE_NAMES.index(get_site(site).name)
        for head_index, head in enumerate(heads):
            for k in range(options.subjects_per_head):
                subject_index = site_index * options.subjects_per_head + k
                subject = f"{head.name}-s{subject_index:02d}"
                scan_id = f"{site}-{subject}"
                jobs.append(
                    ScanJob(
                        site,
                        site_index,
                        head_index,
                        subject_index,
                        scan_id,
                        subject,
                        image=f"{site}/{scan_id}.nii.gz",
                        mask=f"{site}/{scan_id}_mask.nii.gz",
                        reference_mask=f"{site}/{scan_id}_reference.nii.gz",
                    )
                )
    return jobs


_HEADS: list[Head] = []  # per worker process, filled by _init_worker (fork) or directly


def _init_worker(heads: list[Head]) -> None:
    _HEADS[:] = heads


def build_scan(job: ScanJob, seed: int, out: Path, gzip_level: int) -> str:
    """Generate and write one scan (image + mask); returns its id."""
    head = _HEADS[job.head_index]
    subject_rng = np.random.default_rng([seed, _STREAM_SUBJECT, job.head_index, job.subject_index])
    image, mask = make_subject(head, subject_rng)
    site_rng = np.random.default_rng(
        [seed, _STREAM_SITE, job.site_index, job.head_index, job.subject_index]
    )
    scan = acquire(get_site(job.site), image, mask, head.grid, site_rng)
    # The reference mask stays on the common grid: every site's predictions can be scored on one
    # grid, whatever the site's voxels and orientation.
    for relative, data, affine in (
        (job.image, scan.image, scan.affine),
        (job.mask, scan.mask, scan.affine),
        (job.reference_mask, np.asarray(mask, dtype=np.uint8), head.grid.affine),
    ):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(nifti_gz_bytes(data, affine, gzip_level))
    return job.scan_id


def manifest_dict(options: PrepareOptions, jobs: Sequence[ScanJob], heads: Sequence[Head]) -> dict:
    """The manifest (format in CONTRACT.md), plus "source", "fov_mm" and the head checksums."""
    manifest: dict = {
        "version": MANIFEST_VERSION,
        "seed": options.seed,
        "spacing_mm": [options.spacing_mm] * 3,
        "sites": {name: get_site(name).description for name in options.sites},
        "source": options.source,
        "fov_mm": list(FOV_MM),
        "heads": {head.name: {} for head in heads},
        "scans": [
            {
                "id": j.scan_id,
                "site": j.site,
                "head": heads[j.head_index].name,
                "subject": j.subject,
                "image": j.image,
                "mask": j.mask,
                "reference_mask": j.reference_mask,
            }
            for j in jobs
        ],
    }
    if options.source == "registry":
        for source in HEADS:
            if source.head in manifest["heads"]:
                manifest["heads"][source.head] = {
                    "package": source.requirement,
                    "image": source.image_member,
                    "image_sha256": source.image_sha256,
                    "mask": source.mask_member,
                    "mask_sha256": source.mask_sha256,
                }
    return manifest


def prepare(options: PrepareOptions, progress: Callable[[int, int], None] | None = None) -> Path:
    """Build the dataset under ``options.out``; returns the manifest path."""
    for site in options.sites:
        get_site(site)  # unknown names fail before any work
    start = time.perf_counter()
    heads = load_heads(options)
    logger.info("loaded %d heads in %.1f s", len(heads), time.perf_counter() - start)
    jobs = plan_jobs(options, heads)
    options.out.mkdir(parents=True, exist_ok=True)
    done = 0
    if options.workers <= 1:
        _init_worker(heads)
        for job in jobs:
            build_scan(job, options.seed, options.out, options.gzip_level)
            done += 1
            if progress:
                progress(done, len(jobs))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            options.workers, mp_context=context, initializer=_init_worker, initargs=(heads,)
        ) as pool:
            futures = [
                pool.submit(build_scan, job, options.seed, options.out, options.gzip_level)
                for job in jobs
            ]
            for future in futures:
                future.result()
                done += 1
                if progress:
                    progress(done, len(jobs))
    manifest_path = options.out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest_dict(options, jobs, heads), indent=2) + "\n")
    logger.info(
        "wrote %d scans to %s in %.1f s", len(jobs), options.out, time.perf_counter() - start
    )
    return manifest_path
