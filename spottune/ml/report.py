"""Figures and a self-contained HTML report of an adaptation run.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state), so this is
safe in worker processes and threads. The HTML embeds every image as base64 PNG and loads nothing
from outside.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

if TYPE_CHECKING:
    from spottune.ml.readout import PolicyRecord

_DPI = 100
_SKIP_STAGE = "skip"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _stage_order(stages: Iterable[str]) -> list[str]:
    """Main-path stages encoder -> bottleneck -> decoder, whatever the depth."""
    present = set(stages) - {_SKIP_STAGE}
    downs = sorted((s for s in present if s.startswith("down")), key=lambda s: int(s[4:] or 0))
    ups = sorted((s for s in present if s.startswith("up")), key=lambda s: -int(s[2:] or 0))
    known = ["init", *downs, "bottleneck", *ups, "out"]
    return [s for s in known if s in present] + sorted(present - set(known))


def _skip_ends(name: str) -> tuple[str, str]:
    """Encoder and decoder stage of a skip gate: top -> (init, out), downK -> (downK, upK)."""
    level = name.split(".", 1)[-1]
    if level == "top":
        return "init", "out"
    return level, "up" + level.removeprefix("down")


def policy_chart_png(record: PolicyRecord) -> bytes:
    """Bar chart of each gate's probability of choosing its fine-tuned twin, laid out along the
    U-Net (encoder -> bottleneck -> decoder, coloured by stage); skip gates are arcs from encoder
    to decoder stage labelled with their probability. Dots mark the argmax frequency."""
    stages = _stage_order(record.gate_stages)
    colours = colormaps["tab10"]
    main = [i for i, s in enumerate(record.gate_stages) if s != _SKIP_STAGE]
    main.sort(key=lambda i: stages.index(record.gate_stages[i]))
    fig = Figure(figsize=(max(6.0, 0.32 * len(main) + 2), 4.2))
    ax = fig.add_subplot()
    centres: dict[str, float] = {}
    for x, gate in enumerate(main):
        stage = record.gate_stages[gate]
        colour = colours(stages.index(stage) % 10)
        ax.bar(x, record.probability[gate], color=colour, edgecolor="black", linewidth=0.4)
        ax.plot(x, record.frequency[gate], "k.", markersize=4)
        centres.setdefault(stage, 0.0)
    for stage in stages:
        xs = [x for x, g in enumerate(main) if record.gate_stages[g] == stage]
        centres[stage] = float(np.mean(xs)) if xs else 0.0
    skips = [i for i, s in enumerate(record.gate_stages) if s == _SKIP_STAGE]
    cmap = colormaps["viridis"]
    spans = {g: tuple(centres.get(s, 0.0) for s in _skip_ends(record.gate_names[g])) for g in skips}
    for level, gate in enumerate(sorted(skips, key=lambda g: spans[g][1] - spans[g][0])):
        start, end = spans[gate]
        height = 1.12 + 0.1 * level
        p = record.probability[gate]
        ax.plot([start, start, end, end], [1.02, height, height, 1.02], color=cmap(p), linewidth=2)
        ax.text(
            (start + end) / 2,
            height + 0.015,
            f"{record.gate_names[gate]}: {p:.2f}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(range(len(main)), [record.gate_names[g] for g in main], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.2 + 0.1 * max(1, len(skips)))
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("P(fine-tuned twin)")
    lam = "auto" if record.lambda_reg is None else f"{record.lambda_reg:g}"
    ax.set_title(f"{record.method}: {record.policy} policy, lambda={lam}", fontsize=9)
    handles: list[Any] = [Patch(color=colours(i % 10), label=s) for i, s in enumerate(stages)]
    handles += ax.plot([], [], "k.", label="argmax frequency")
    ax.legend(handles=handles, fontsize=7, ncol=len(handles), loc="upper left", frameon=False)
    return _png(fig)


def training_curve_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Training loss per step (and its running mean) from records {"step": int, "loss": float}."""
    points = [(int(h["step"]), float(h["loss"])) for h in history if h.get("loss") is not None]
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.add_subplot()
    if points:
        steps, losses = (np.array(v) for v in zip(*points, strict=True))
        ax.plot(steps, losses, color="0.7", linewidth=0.8, label="loss")
        window = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", label=f"mean of {window}")
        if np.all(losses > 0):
            ax.set_yscale("log")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return _png(fig)


def overlay_png(
    image2d: np.ndarray, mask2d: np.ndarray, reference2d: np.ndarray | None = None
) -> bytes:
    """A slice [H, W] in grey with the mask's contour (red) and the reference's (green, dashed)."""
    image2d = np.asarray(image2d, dtype=np.float32)
    fig = Figure(figsize=(3.2, 3.2 * image2d.shape[0] / max(1, image2d.shape[1])))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image2d, cmap="gray", interpolation="nearest")
    for mask, colour, style in ((mask2d, "red", "solid"), (reference2d, "lime", "dashed")):
        if mask is not None and np.any(mask) and not np.all(mask):
            ax.contour(
                np.asarray(mask, dtype=float),
                levels=[0.5],
                colors=colour,
                linewidths=1.0,
                linestyles=style,
            )
    ax.set_axis_off()
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%;margin:4px}"
)


def render_report_html(
    *,
    title: str,
    policy: PolicyRecord | None,
    history: Sequence[Mapping[str, Any]],
    metrics_table: list[dict] | None,
    overlays: Sequence[bytes],
    validation_table: list[dict] | None = None,
    replicates: Mapping[str, Any] | None = None,
) -> str:
    """A self-contained HTML page: where the shift lives (in words, per stage), the policy chart
    and per-gate table, replicate agreement, training curve, before/after metrics on validation
    and target scans, overlay images; all embedded, every text from the caller escaped."""
    from spottune.ml.readout import stage_summary, where_the_shift_lives
    from spottune.ml.replicates import agreement_verdict, scanner_evidence

    parts = [f"<h1>{html.escape(title)}</h1>"]
    if policy is not None:
        parts += ["<h2>Where the shift lives</h2>",
                  f"<p>{html.escape(where_the_shift_lives(policy))}</p>",
                  _table([{**row, "finetune_probability": float(row["finetune_probability"]),
                           "frequency": float(row["frequency"])}
                          for row in stage_summary(policy)])]
    if replicates:
        agreement = replicates.get("agreement")
        confidence = ("n/a (the policies are constant)" if agreement is None
                      else f"{agreement:.2f} (mean Spearman correlation of per-gate "
                      "probabilities between replicates; 1 = the same ranking every time)")
        parts += ["<h2>Replicates</h2>",
                  f"<p>{len(replicates['seeds'])} replicates (seeds "
                  f"{html.escape(', '.join(str(s) for s in replicates['seeds']))}). Policy "
                  f"agreement: {html.escape(confidence)}. Delivered: seed "
                  f"{html.escape(str(replicates['delivered_seed']))}, "
                  f"{html.escape(str(replicates['reason']))}.</p>",
                  f"<p>{html.escape(agreement_verdict(agreement, len(replicates['seeds'])))}</p>"]
    elif policy is not None:
        parts += [f"<p>{html.escape(agreement_verdict(None, 1))}</p>"]
    if policy is not None:
        parts += [f"<p>{html.escape(scanner_evidence(policy.policy))}</p>"]
    if validation_table:
        parts += ["<h2>Validation scans (annotated, not trained on): before and after</h2>",
                  _table(validation_table)]
    if policy is not None:
        parts += ["<h2>Learned fine-tuning policy</h2>", _img(policy_chart_png(policy), "policy")]
        rows = [
            {"gate": n, "stage": s, "probability": float(p), "frequency": float(f)}
            for n, s, p, f in zip(
                policy.gate_names,
                policy.gate_stages,
                policy.probability,
                policy.frequency,
                strict=True,
            )
        ]
        parts.append(_table(rows))
    if history:
        parts += ["<h2>Training</h2>", _img(training_curve_png(history), "training loss")]
    if metrics_table:
        parts += ["<h2>Metrics</h2>", _table(metrics_table)]
    if overlays:
        parts.append("<h2>Segmentations</h2>")
        parts += [_img(png, f"overlay {i}") for i, png in enumerate(overlays)]
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
