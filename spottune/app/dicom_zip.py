"""Unpacking an uploaded .zip of one DICOM series, safely.

The archive is checked from its central directory before anything is extracted: entry count,
entry names (no absolute paths, drive letters or ``..``), and the total uncompressed size
against a bound (a zip bomb is refused without inflating it). Entries are then written under
names we choose (never the archive's), counting the inflated bytes, so an archive whose
directory understates its sizes is stopped as soon as it exceeds what it declared.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spottune.app.errors import Invalid, TooLarge

MAX_ENTRIES = 10_000
COPY_CHUNK = 1024 * 1024
# Files that exports put next to the images and that are not part of the series.
_SKIPPED_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db", "desktop.ini"}
_SKIPPED_SUFFIXES = (".txt", ".htm", ".html", ".xml", ".json", ".inf", ".ini", ".pdf")


def _refuse(problem: str) -> Invalid:
    return Invalid(f"image: {problem}", code="invalid_dicom")


@dataclass
class Unpacked:
    """The extracted files (our names) and the archive names to quote in error messages."""

    paths: list[Path]
    names: list[str]


def _safe_name(name: str) -> PurePosixPath:
    if "\\" in name or "\0" in name:
        raise _refuse("an entry name holds a backslash or NUL; zip the files with a standard tool")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise _refuse(
            "an entry has an absolute path or '..' in its name; zip the series folder with "
            "relative names"
        )
    return path


def _skipped(path: PurePosixPath) -> bool:
    return (
        path.name in _SKIPPED_NAMES
        or path.name.startswith("._")
        or "__MACOSX" in path.parts
        or path.suffix.lower() in _SKIPPED_SUFFIXES
    )


def unpack_series_zip(archive_path: Path, dest: Path, max_unpacked_bytes: int) -> Unpacked:
    """Extract the series' files from ``archive_path`` into ``dest`` (a fresh private folder).

    Raises Invalid (422) for a damaged archive or unsafe names, TooLarge (413) when the
    uncompressed size exceeds ``max_unpacked_bytes``.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError):
        raise _refuse(
            "not a readable .zip archive; zip the series' files and upload again"
        ) from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if len(entries) > MAX_ENTRIES:
            raise _refuse(f"the archive holds {len(entries)} files, more than {MAX_ENTRIES}")
        chosen = []
        for info in entries:
            if info.flag_bits & 0x1:
                raise _refuse("the archive is encrypted; upload an unencrypted zip")
            if not _skipped(_safe_name(info.filename)):
                chosen.append(info)
        declared = sum(info.file_size for info in entries)
        if declared > max_unpacked_bytes:
            raise TooLarge(
                f"image: the archive unpacks to {declared} bytes, more than the limit of "
                f"{max_unpacked_bytes}; upload one series, or a smaller one"
            )
        if not chosen:
            raise _refuse("the archive holds no files; zip the files of one DICOM series")
        paths, written = [], 0
        for n, info in enumerate(chosen):
            target = dest / f"{n:06d}.dcm"
            try:
                with archive.open(info) as source, target.open("wb") as out:
                    while chunk := source.read(COPY_CHUNK):
                        written += len(chunk)
                        if written > max_unpacked_bytes:
                            raise TooLarge(
                                "image: the archive unpacks to more than it declares and more "
                                f"than the limit of {max_unpacked_bytes} bytes; refused"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                problem = f"the archive is damaged ({type(exc).__name__}); zip it again"
                raise _refuse(problem) from None
            paths.append(target)
    return Unpacked(paths=paths, names=[info.filename for info in chosen])
