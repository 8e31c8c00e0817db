"""Reading the benchmark's manifest.json (written by ``spottune data prepare``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ManifestError(ValueError):
    """The manifest is missing, not JSON or not of the expected shape."""


class ManifestScan(BaseModel):
    """One scan: image and brain mask (paths relative to the manifest's folder), and from
    version 2 on the subject's mask on the common grid (``reference_mask``)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    site: str
    head: str
    subject: str
    image: str
    mask: str
    reference_mask: str | None = None


class Manifest(BaseModel):
    """The benchmark: sites (name -> acquisition profile) and their scans.

    ``root`` is the folder the manifest lies in; scan paths are resolved against it. Fields the
    reader does not need (checksums, field of view) are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    version: int
    seed: int
    spacing_mm: list[float]
    sites: dict[str, str]
    scans: list[ManifestScan]
    root: Path = Field(default=Path("."), exclude=True)

    @property
    def scan_by_id(self) -> dict[str, ManifestScan]:
        return {scan.id: scan for scan in self.scans}

    def scans_of(self, site: str) -> list[ManifestScan]:
        """The scans of `site`; ValueError naming the known sites if there are none."""
        scans = [s for s in self.scans if s.site == site]
        if not scans:
            known = ", ".join(sorted({s.site for s in self.scans}))
            raise ValueError(f"no scans of site {site!r} in {self.root / 'manifest.json'}; "
                             f"sites: {known}")
        return scans

    def image_path(self, scan: ManifestScan) -> Path:
        return self.root / scan.image

    def mask_path(self, scan: ManifestScan) -> Path:
        return self.root / scan.mask

    def reference_mask_path(self, scan: ManifestScan) -> Path:
        """The scan's mask on the common grid; ValueError for a version-1 manifest."""
        if scan.reference_mask is None:
            raise ValueError(f"{self.root / 'manifest.json'} (version {self.version}) has no "
                             "reference masks; prepare the data again")
        return self.root / scan.reference_mask


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path` (the file, or the folder holding manifest.json)."""
    file = path / "manifest.json" if path.is_dir() else path
    try:
        manifest = Manifest.model_validate_json(file.read_bytes())
    except OSError as exc:
        raise ManifestError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise ManifestError(f"{file} is not a benchmark manifest: {exc}") from None
    manifest.root = file.parent
    return manifest
