"""Report figures are valid PNGs; the HTML report is self-contained and escaped."""

from __future__ import annotations

import re

import numpy as np
import pytest

from spottune.ml.readout import PolicyRecord
from spottune.ml.report import (
    overlay_png,
    policy_chart_png,
    render_report_html,
    training_curve_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def record() -> PolicyRecord:
    stages = ["init", "down1", "down2", "bottleneck", "up2", "up1", "out"]
    names = [f"{s}.block0" for s in stages] + ["skip.top", "skip.down1", "skip.down2"]
    gate_stages = stages + ["skip"] * 3
    rng = np.random.default_rng(0)
    return PolicyRecord(
        gate_names=names,
        gate_stages=gate_stages,
        frequency=rng.random(len(names)).tolist(),
        probability=rng.random(len(names)).tolist(),
        policy="instance",
        lambda_reg=0.005,
        method="spottune",
    )


def test_figures_are_png(record: PolicyRecord) -> None:
    image = np.random.default_rng(0).random((32, 40))
    mask = np.zeros((32, 40), bool)
    mask[8:20, 10:30] = True
    figures = [
        policy_chart_png(record),
        training_curve_png([{"step": i, "loss": 1.0 / (i + 1)} for i in range(50)]),
        training_curve_png([]),
        overlay_png(image, mask, np.roll(mask, 2, axis=0)),
        overlay_png(image, np.zeros_like(mask)),
    ]
    for png in figures:
        assert png.startswith(PNG_MAGIC) and len(png) > 500


def test_html_is_self_contained_and_escaped(record: PolicyRecord) -> None:
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    page = render_report_html(
        title="<script>alert(1)</script> site B",
        policy=record,
        history=[{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}],
        metrics_table=[{"scan": "<b>x</b>", "dice": 0.91234, "sdice": float("nan")}],
        overlays=[overlay_png(np.ones((16, 16)), mask)],
    )
    assert "<script>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in record.gate_names:
        assert name in page
    assert "0.9123" in page and "n/a" in page


def test_the_report_says_what_each_policy_kind_shows_of_the_scanner(record: PolicyRecord) -> None:
    def page(policy: str) -> str:
        record.policy = policy
        return render_report_html(title="site B", policy=record, history=[], metrics_table=None,
                                  overlays=[])

    instance, global_ = page("instance"), page("global")
    assert "instance policy&#x27;s per-gate ranking barely follows the scanner" in instance
    assert "global policy&#x27;s ranking follows the scanner" in global_
    assert "global policy&#x27;s ranking follows" not in instance
    # no policy (a plain fine-tuning job): nothing is said about one
    plain = render_report_html(title="site B", policy=None, history=[], metrics_table=None,
                               overlays=[])
    assert "follows the scanner" not in plain
