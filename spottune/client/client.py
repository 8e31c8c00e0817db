"""``Client``: a clinic's whole session in a few lines.

    from spottune.client import Client

    client = Client()  # SPOTTUNE_URL, SPOTTUNE_API_KEY
    source = client.pretrain([client.upload_scan("a.nii.gz", mask="a_brain.nii.gz").id],
                             iterations=300).wait().model_id
    train = client.upload_scan("t1.nii.gz", mask="t1_brain.nii.gz", annotated_slices=[40, 60])
    target = client.upload_scan("t2.nii.gz")
    job = client.adapt(source, [train.id], [target.id], iterations=200).wait()
    client.download_masks(job, "masks/")
    client.download_report(job, "report.html")
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from spottune.client.errors import JobFailed, WaitTimeout
from spottune.client.transport import Transport
from spottune.client.types import (
    Delivery,
    Job,
    Mask,
    Model,
    Policy,
    Resource,
    Scan,
    Webhook,
)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE, KEY_VARIABLE = "SPOTTUNE_URL", "SPOTTUNE_API_KEY"
PAGE_SIZE = 100
DOWNLOAD_CHUNK = 1024 * 1024

R = TypeVar("R", bound=Resource)
Ref = str | uuid.UUID | Resource  # an id, or an object that has one


def _id(ref: Ref) -> str:
    return str(getattr(ref, "id", ref))


def _ids(refs: Iterable[Ref]) -> list[str]:
    return [_id(r) for r in refs]


class Client:
    """A typed client of the spottune REST API (``/v1``).

    Args:
        url: the service, e.g. ``https://spottune.example.org`` (default ``$SPOTTUNE_URL``, else
            ``http://127.0.0.1:8000``).
        api_key: the clinic's key from ``spottune admin create-clinic`` (default
            ``$SPOTTUNE_API_KEY``).
        timeout: seconds per HTTP request.
        retries: how often a request is retried after a connection error or a 503.
        backoff_s: first retry delay; it doubles with each retry (at most 30 s).
        page_size: items fetched per request by the listings (which walk every page).
        http: an ``httpx.Client`` to send through (proxies, certificates, transports).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        page_size: int = PAGE_SIZE,
        http: httpx.Client | None = None,
    ) -> None:
        url = url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
        api_key = api_key or os.environ.get(KEY_VARIABLE)
        if not api_key:
            raise ValueError(
                f"no API key: pass api_key= or set {KEY_VARIABLE} "
                "(an operator creates one with `spottune admin create-clinic NAME`)"
            )
        self.url = url.rstrip("/")
        self.page_size = page_size
        self._t = Transport(self.url, api_key, timeout=timeout, retries=retries,
                            backoff_s=backoff_s, http=http)

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _job(self, data: Any) -> Job:
        job = Job.model_validate(data)
        job._client = self
        return job

    def _pages(self, path: str, kind: type[R], params: dict[str, Any] | None = None
               ) -> Iterator[R]:
        """Every item of a paginated listing, fetching ``page_size`` at a time."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        offset = 0
        while True:
            window = {"limit": self.page_size, "offset": offset}
            page = self._t.request("GET", path, params={**query, **window}).json()
            for item in page["items"]:
                yield kind.model_validate(item)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def _download(
        self,
        path: str,
        dest: Path,
        params: dict[str, Any] | None = None,
        name: Callable[[httpx.Response], str] | None = None,
    ) -> Path:
        """Stream ``path`` into ``dest`` (or into the folder ``dest`` under ``name(response)``),
        written whole or not at all."""
        with self._t.stream("GET", path, params=params) as response:
            target = dest / name(response) if name is not None else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    out.write(chunk)
        partial.replace(target)
        return target

    # -- uploads -----------------------------------------------------------------------------
    def upload_scan(
        self,
        path: str | Path,
        mask: str | Path | None = None,
        site: str | None = None,
        subject: str | None = None,
        annotated_slices: Sequence[int] | None = None,
        mask_labels: str | Sequence[int] | None = None,
    ) -> Scan:
        """Upload a scan (.nii, .nii.gz, .mgz, or a .zip DICOM series) and optionally its mask;
        ``annotated_slices``: the indices of the mask's annotated slices (partial annotation);
        ``mask_labels``: the foreground values of a label-map mask (``[2, 3, 41]``, ``"1-255"``)."""
        image_path, mask_path = Path(path), None if mask is None else Path(mask)

        def files(stack: contextlib.ExitStack) -> dict[str, Any]:
            out = {"image": (image_path.name, stack.enter_context(image_path.open("rb")))}
            if mask_path is not None:
                out["mask"] = (mask_path.name, stack.enter_context(mask_path.open("rb")))
            return out

        labels = mask_labels
        if labels is not None and not isinstance(labels, str):
            labels = ",".join(str(int(v)) for v in labels)
        data: dict[str, Any] = {"site": site, "subject": subject, "mask_labels": labels}
        if annotated_slices is not None:
            data["annotated_slices"] = json.dumps([int(i) for i in annotated_slices])
        data = {k: v for k, v in data.items() if v is not None}
        response = self._t.request("POST", "/v1/scans", data=data, files=files)
        return Scan.model_validate(response.json())

    def upload_model(
        self, weights: str | Path, config: str | Path | dict[str, Any], name: str | None = None
    ) -> Model:
        """Upload a model: ``weights`` (.safetensors) and ``config`` (a .json file, JSON text or
        a dict)."""
        weights_path = Path(weights)
        if isinstance(config, dict):
            config_text = json.dumps(config)
        elif isinstance(config, str) and config.lstrip().startswith("{"):
            config_text = config  # JSON text
        else:
            config_text = Path(config).read_text()

        def files(stack: contextlib.ExitStack) -> dict[str, Any]:
            return {"weights": (weights_path.name, stack.enter_context(weights_path.open("rb")))}

        data = {"config": config_text, "name": name or weights_path.stem}
        response = self._t.request("POST", "/v1/models", data=data, files=files)
        return Model.model_validate(response.json())

    # -- jobs --------------------------------------------------------------------------------
    def pretrain(self, train_scan_ids: Iterable[Ref], device: str = "gpu", **options: Any) -> Job:
        """Train a source model from annotated scans (options: width, depth, iterations, ...)."""
        body = {"train_scan_ids": _ids(train_scan_ids), "options": options, "device": device}
        return self._job(self._t.request("POST", "/v1/pretrainings", json=body).json())

    def adapt(
        self,
        model_id: Ref,
        train_scan_ids: Iterable[Ref],
        target_scan_ids: Iterable[Ref] = (),
        method: str = "spottune",
        device: str = "gpu",
        **options: Any,
    ) -> Job:
        """Adapt a model to the clinic's scanner; masks are made for ``target_scan_ids``.

        ``method``: spottune, finetune-all, finetune-first, finetune-last or none; ``options``:
        iterations, batch_size, learning_rate, lambda_reg, policy, adabn, seed, ...
        """
        body = {"model_id": _id(model_id), "train_scan_ids": _ids(train_scan_ids),
                "target_scan_ids": _ids(target_scan_ids), "method": method, "options": options,
                "device": device}
        return self._job(self._t.request("POST", "/v1/adaptations", json=body).json())

    def segment(self, model_id: Ref, scan_ids: Iterable[Ref], device: str = "gpu") -> Job:
        """Segment scans with a model (inference only)."""
        body = {"model_id": _id(model_id), "scan_ids": _ids(scan_ids), "device": device}
        return self._job(self._t.request("POST", "/v1/segmentations", json=body).json())

    def job(self, job_id: Ref) -> Job:
        return self._job(self._t.request("GET", f"/v1/jobs/{_id(job_id)}").json())

    def jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        model_id: Ref | None = None,
        created_after: datetime | str | None = None,
    ) -> Iterator[Job]:
        """The clinic's jobs, newest first, every page."""
        after = created_after.isoformat() if isinstance(created_after, datetime) else created_after
        params = {"status": status, "kind": kind, "created_after": after,
                  "model_id": None if model_id is None else _id(model_id)}
        for job in self._pages("/v1/jobs", Job, params):
            job._client = self
            yield job

    def cancel(self, job: Ref) -> Job:
        return self._job(self._t.request("POST", f"/v1/jobs/{_id(job)}/cancel").json())

    def wait(
        self,
        job: Ref,
        timeout: float | None = None,
        progress: bool = True,
        raise_on_failure: bool = True,
        poll_s: float = 1.0,
    ) -> Job:
        """Poll the job until it ends, showing a progress bar on stderr when ``progress``.

        Returns the final job; raises :class:`JobFailed` if it failed or was cancelled (unless
        ``raise_on_failure`` is false) and :class:`WaitTimeout` after ``timeout`` seconds.
        Polls are conditional (``If-None-Match``): an unchanged job costs a bodiless 304.
        """
        path = f"/v1/jobs/{_id(job)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        etag: str | None = None
        current: Job | None = None
        bar = _ProgressBar(enabled=progress)
        try:
            while True:
                headers = {"If-None-Match": etag} if etag else {}
                response = self._t.request("GET", path, headers=headers, ok=(200, 304))
                if response.status_code == 200 or current is None:
                    current, etag = self._job(response.json()), response.headers.get("etag")
                    bar.show(current)
                if current.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(current, float(timeout or 0))
                time.sleep(poll_s)
        finally:
            bar.close()
        if raise_on_failure and not current.succeeded:
            raise JobFailed(current)
        return current

    # -- results -----------------------------------------------------------------------------
    def masks(self, job: Ref) -> list[Mask]:
        return list(self._pages(f"/v1/jobs/{_id(job)}/masks", Mask))

    def download_masks(
        self, job: Ref, out_dir: str | Path, format: str | None = None
    ) -> list[Path]:
        """Download every mask of the job into ``out_dir`` as ``<scan id>_mask.nii.gz`` (or
        ``.dcm`` for a DICOM SEG), each on its scan's own grid. ``format``: ``"nifti"`` or
        ``"dicom-seg"``; by default the format the scan was uploaded in."""
        folder = Path(out_dir)
        params = None if format is None else {"format": format}
        paths = []
        for mask in self.masks(job):
            def name(response: httpx.Response, scan_id: uuid.UUID = mask.scan_id) -> str:
                media = response.headers.get("content-type", "")
                return f"{scan_id}_mask{'.dcm' if 'dicom' in media else '.nii.gz'}"

            paths.append(self._download(f"/v1/masks/{mask.id}", folder, params, name=name))
        return paths
    def download_report(self, job: Ref, path: str | Path) -> Path:
        """The job's self-contained HTML report (policy chart, curve, before/after, overlays)."""
        return self._download(f"/v1/jobs/{_id(job)}/report", Path(path))

    def download_model(self, model: Ref, path: str | Path) -> Path:
        return self._download(f"/v1/models/{_id(model)}/weights", Path(path))

    def policy(self, job: Ref) -> Policy:
        return Policy.model_validate(self._t.request("GET", f"/v1/jobs/{_id(job)}/policy").json())

    # -- listings ----------------------------------------------------------------------------
    def scans(self, site: str | None = None, annotated: bool | None = None) -> Iterator[Scan]:
        yield from self._pages("/v1/scans", Scan, {"site": site, "annotated": annotated})

    def scan(self, scan_id: Ref) -> Scan:
        return Scan.model_validate(self._t.request("GET", f"/v1/scans/{_id(scan_id)}").json())

    def models(self) -> Iterator[Model]:
        yield from self._pages("/v1/models", Model)

    def model(self, model_id: Ref) -> Model:
        return Model.model_validate(self._t.request("GET", f"/v1/models/{_id(model_id)}").json())

    def delete_scan(self, scan: Ref) -> None:
        self._t.request("DELETE", f"/v1/scans/{_id(scan)}")

    def delete_model(self, model: Ref) -> None:
        self._t.request("DELETE", f"/v1/models/{_id(model)}")

    # -- webhooks ----------------------------------------------------------------------------
    def add_webhook(self, url: str, secret: str, description: str | None = None) -> Webhook:
        """Receive a signed POST at ``url`` whenever a job ends (verify it with
        :func:`spottune.client.verify_signature`)."""
        body = {"url": url, "secret": secret, "description": description}
        return Webhook.model_validate(self._t.request("POST", "/v1/webhooks", json=body).json())

    def webhooks(self) -> Iterator[Webhook]:
        yield from self._pages("/v1/webhooks", Webhook)

    def delete_webhook(self, webhook: Ref) -> None:
        self._t.request("DELETE", f"/v1/webhooks/{_id(webhook)}")

    def deliveries(self, webhook: Ref) -> Iterator[Delivery]:
        yield from self._pages(f"/v1/webhooks/{_id(webhook)}/deliveries", Delivery)


class _ProgressBar:
    """A tqdm bar over the job's steps (only created once the job reports a total)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr is not None
        self._bar: Any = None

    def show(self, job: Job) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=job.progress.total or None, unit="step", file=sys.stderr,
                             desc=f"{job.kind} {str(job.id)[:8]}", leave=True)
        if job.progress.total and self._bar.total != job.progress.total:
            self._bar.total = job.progress.total
        self._bar.n = job.progress.step
        postfix = {"status": job.status}
        if job.progress.loss is not None:
            postfix["loss"] = f"{job.progress.loss:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
