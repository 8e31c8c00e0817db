"""`spottune client ...`: the Python client from a shell, against a running service.

Reads SPOTTUNE_URL and SPOTTUNE_API_KEY. Ids go to stdout (one per line) so a script can carry
them: ``SCAN=$(spottune client upload t1.nii.gz --mask t1_brain.nii.gz)``; progress and messages
go to stderr. Exit status: 0 done (job succeeded), 1 refused by the API or unreachable,
3 job failed, 4 job cancelled, 5 still running when ``--timeout`` ran out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

client_app = typer.Typer(no_args_is_help=True)

EXIT_ERROR, EXIT_FAILED, EXIT_CANCELLED, EXIT_TIMEOUT = 1, 3, 4, 5
T = TypeVar("T")

OptionList = typer.Option(
    None, "--option", "-o", help="Job option KEY=VALUE (VALUE parsed as JSON), repeatable."
)
WaitFlag = typer.Option(False, "--wait", "-w", help="Wait for the job and show its progress.")
TimeoutOpt = typer.Option(None, help="Give up waiting after this many seconds (exit 5).")
DeviceOpt = typer.Option("gpu", help="Run on the gpu (default) or cpu workers.")


def _options(pairs: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: write options as KEY=VALUE", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _call(action: Callable[[], T]) -> T:
    """Run a client call; API and connection errors become a message and exit status 1."""
    from spottune.client import JobFailed, SpottuneError, WaitTimeout

    try:
        return action()
    except JobFailed as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_CANCELLED if exc.job.status == "cancelled" else EXIT_FAILED) from exc
    except WaitTimeout as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_TIMEOUT) from exc
    except (SpottuneError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from exc


def _client() -> Any:
    from spottune.client import Client

    return _call(Client)


def _submitted(job: Any, wait: bool, timeout: float | None) -> None:
    typer.echo(str(job.id))
    if wait:
        final = _call(lambda: job.wait(timeout=timeout))
        if final.model_id is not None:
            typer.echo(f"model {final.model_id}", err=True)


@client_app.command("upload")
def upload(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Scan (.nii.gz, ...)."),
    mask: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Its brain mask."),
    site: str | None = typer.Option(None), subject: str | None = typer.Option(None),
    annotated_slices: str | None = typer.Option(
        None, help="Annotated slice indices of the mask, e.g. 40,48,56."),
    mask_labels: str | None = typer.Option(
        None, help="Foreground values of a label-map mask: 255, 1-255 or 2,3,41,42."),
) -> None:
    """Upload a scan (and mask); prints its id."""
    slices = None
    if annotated_slices:
        try:
            slices = [int(s) for s in annotated_slices.split(",") if s.strip()]
        except ValueError:
            raise typer.BadParameter("give comma-separated integers, e.g. 40,48,56") from None
    with _client() as client:
        scan = _call(lambda: client.upload_scan(image, mask=mask, site=site, subject=subject,
                                                annotated_slices=slices, mask_labels=mask_labels))
    typer.echo(str(scan.id))


@client_app.command("upload-model")
def upload_model(
    weights: Path = typer.Argument(..., exists=True, dir_okay=False, help=".safetensors file"),
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON config file"),
    name: str | None = typer.Option(None),
) -> None:
    """Upload a model (weights + config); prints its id."""
    with _client() as client:
        model = _call(lambda: client.upload_model(weights, config, name=name))
    typer.echo(str(model.id))


@client_app.command("pretrain")
def pretrain(
    train: list[str] = typer.Argument(..., help="Annotated scan ids."),
    option: list[str] | None = OptionList, device: str = DeviceOpt,
    wait: bool = WaitFlag, timeout: float | None = TimeoutOpt,
) -> None:
    """Train a source model from annotated scans; prints the job id."""
    with _client() as client:
        job = _call(lambda: client.pretrain(train, device=device, **_options(option)))
        _submitted(job, wait, timeout)


@client_app.command("adapt")
def adapt(
    model: str = typer.Argument(..., help="Model id to adapt."),
    train: list[str] = typer.Option(..., "--train", help="Annotated scan id (repeatable)."),
    target: list[str] | None = typer.Option(None, "--target", help="Scan id to segment."),
    method: str = typer.Option("spottune", help="spottune, finetune-all|first|last, none"),
    option: list[str] | None = OptionList, device: str = DeviceOpt,
    wait: bool = WaitFlag, timeout: float | None = TimeoutOpt,
) -> None:
    """Adapt a model to the clinic's scanner; prints the job id."""
    with _client() as client:
        job = _call(lambda: client.adapt(model, train, target or [], method=method,
                                         device=device, **_options(option)))
        _submitted(job, wait, timeout)


@client_app.command("segment")
def segment(
    model: str = typer.Argument(..., help="Model id."),
    scans: list[str] = typer.Argument(..., help="Scan ids."),
    device: str = DeviceOpt, wait: bool = WaitFlag, timeout: float | None = TimeoutOpt,
) -> None:
    """Segment scans with a model; prints the job id."""
    with _client() as client:
        job = _call(lambda: client.segment(model, scans, device=device))
        _submitted(job, wait, timeout)


@client_app.command("jobs")
def jobs(
    status: str | None = typer.Option(None), kind: str | None = typer.Option(None),
    model: str | None = typer.Option(None, help="Jobs that used or produced this model."),
    created_after: str | None = typer.Option(None, help="ISO time, e.g. 2026-11-30T12:00Z"),
    limit: int = typer.Option(20, min=1, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List the clinic's jobs."""
    with _client() as client:
        def listing() -> list[Any]:
            found = []
            for job in client.jobs(status=status, kind=kind, model_id=model,
                                   created_after=created_after):
                found.append(job)
                if len(found) >= limit:
                    break
            return found

        for job in _call(listing):
            if as_json:
                typer.echo(job.model_dump_json())
            else:
                p = job.progress
                typer.echo(f"{job.id}  {job.kind:<12} {job.status:<9} {p.step}/{p.total}  "
                           f"{job.created_at:%Y-%m-%d %H:%M}  {job.error or ''}".rstrip())


@client_app.command("wait")
def wait(
    job_id: str = typer.Argument(...), timeout: float | None = TimeoutOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Wait for a job (progress bar on stderr); the exit status says how it ended."""
    with _client() as client:
        job = _call(lambda: client.wait(job_id, timeout=timeout, progress=not quiet))
    typer.echo(job.status)


def _save_policy(policy: Any, path: Path) -> Path:
    path.write_text(policy.model_dump_json(indent=2))
    return path


@client_app.command("download")
def download(
    job_id: str = typer.Argument(...),
    out: Path = typer.Option(Path("."), "--out", help="Folder for masks, report and policy."),
    mask_format: str | None = typer.Option(
        None, "--format", help="nifti or dicom-seg (default: as the scan was uploaded)"),
) -> None:
    """Download a finished job's masks, report (if any) and policy (if any); prints the paths."""
    from spottune.client import ApiError

    with _client() as client:
        job = _call(lambda: client.job(job_id))
        paths = _call(lambda: client.download_masks(job, out, format=mask_format))
        if job.kind == "adaptation":  # a report always; a policy for spottune only
            for fetch in (
                lambda: client.download_report(job, out / f"report-{job.id}.html"),
                lambda: _save_policy(client.policy(job), out / f"policy-{job.id}.json"),
            ):
                try:
                    paths.append(fetch())
                except ApiError as exc:
                    if exc.status_code != 404:
                        typer.echo(f"error: {exc}", err=True)
                        raise typer.Exit(EXIT_ERROR) from exc
    for path in paths:
        typer.echo(str(path))
