"""Report figures (paper Figs. 3-6) drawn with matplotlib's Agg backend into PNG bytes.

Every function takes plain arrays / small dicts and returns PNG ``bytes``; the
report embeds them as base64 ``data:`` URIs so the HTML stays self-contained.
Figures use modest DPI so a 1,000-study report stays well under 50 MB.
"""
from __future__ import annotations

import base64
import io
import zlib
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; safe in worker threads and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

__all__ = ["CONTOUR_COLOURS", "MipPanel", "png_bytes", "to_data_uri", "mip_row", "agreement_scatter",
           "roc_figure", "RocSeries", "trajectories", "histogram"]

DPI = 80
#: One colour per segmentation source, the same in every figure: manual (ground truth) green,
#: the networks red/blue, the threshold baselines orange/purple/brown; others by name hash.
CONTOUR_COLOURS = {"manual": "#1a9850", "nnunet_bl": "#d73027", "nnunet_fu": "#4575b4",
                   "threshold_41pct": "#f46d43", "threshold_suv25": "#984ea3", "threshold_percist": "#a65628"}
_OTHER_COLOURS = ("#e7298a", "#66a61e", "#e6ab02", "#1b9e77")


def colour_for(source: str) -> str:
    """Stable contour colour of a segmentation ``source``."""
    if source in CONTOUR_COLOURS:
        return CONTOUR_COLOURS[source]
    return _OTHER_COLOURS[zlib.crc32(source.encode()) % len(_OTHER_COLOURS)]


_ROC_COLOURS = ("#d73027", "#4575b4", "#f46d43", "#984ea3", "#1a9850", "#a65628")


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes and close it (figures are never kept open)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def to_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass(frozen=True)
class MipPanel:
    """One coronal MIP with its contours.

    Attributes
    ----------
    title : str
        Caption above the image (study key, timepoint, biomarkers).
    pet : (Z, X) ndarray of uint8
        ``qc/mip_pet`` (SUV 0-10 mapped to 0-255, head up).
    masks : dict of str -> (Z, X) ndarray of uint8
        ``qc/mip_<source>`` projections.
    aspect : float
        Pixel aspect ``sz / sx`` (mm per row / mm per column).
    """

    title: str
    pet: np.ndarray
    masks: dict
    aspect: float = 1.0


def mip_row(panels: Sequence[MipPanel], *, height_in: float = 3.2) -> bytes:
    """Side-by-side MIPs (baseline then follow-ups) with manual/automatic contours and a legend.

    Grey scale is inverted (dark = hot), as in the paper's Fig. 3.
    """
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n + 0.6, height_in), squeeze=False)
    used: list[str] = []
    for ax, panel in zip(axes[0], panels):
        ax.imshow(panel.pet, cmap="gray_r", vmin=0, vmax=255, aspect=panel.aspect, interpolation="nearest")
        # the ground truth last, so it stays visible where the contours coincide
        for source, mask in sorted(panel.masks.items(), key=lambda kv: kv[0] == "manual"):
            if mask is None or not np.any(mask):
                continue
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour_for(source)], linewidths=1.2)
            if source not in used:
                used.append(source)
        ax.set_title(panel.title, fontsize=6)
        ax.set_axis_off()
    for ax in axes[0][len(panels):]:
        ax.set_axis_off()
    handles = [Line2D([0], [0], color=colour_for(s), lw=1.5,
                      label="manual (ground truth)" if s == "manual" else f"automatic: {s}")
               for s in sorted(set(used), key=lambda s: (s != "manual", s))]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=6, frameon=False)
    return png_bytes(fig)


def agreement_scatter(panels: Sequence[dict]) -> bytes:
    """Automatic vs manual biomarker scatter plots with the identity line (paper Fig. 4).

    Parameters
    ----------
    panels : sequence of dict
        Each with ``label`` (axis name), ``x`` (manual), ``y`` (automatic),
        ``title`` (already holding Lin's CCC and Spearman's rho).
    """
    n = max(1, len(panels))
    cols = min(2, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        x, y = np.asarray(panel["x"], float), np.asarray(panel["y"], float)
        ax.scatter(x, y, s=8, alpha=0.6, color="#4575b4", edgecolors="none")
        both = np.concatenate([x, y]) if x.size else np.array([0.0, 1.0])
        lo, hi = float(np.min(both)), float(np.max(both))
        if hi <= lo:
            hi = lo + 1.0
        ax.plot([lo, hi], [lo, hi], color="#d73027", lw=1, label="identity")
        ax.set_xlabel(f"{panel['label']} (manual)", fontsize=7)
        ax.set_ylabel(f"{panel['label']} (automatic)", fontsize=7)
        ax.set_title(panel["title"], fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    return png_bytes(fig)


@dataclass(frozen=True)
class RocSeries:
    """One ROC curve: ``fpr``/``tpr`` arrays, the Youden point and the legend text."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    youden_fpr: float
    youden_tpr: float


def roc_figure(series: Sequence[RocSeries]) -> bytes:
    """ROC curves of the delta biomarkers, each with its Youden cutoff marked (paper Fig. 5)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for i, s in enumerate(series):
        colour = _ROC_COLOURS[i % len(_ROC_COLOURS)]
        ax.step(s.fpr, s.tpr, where="post", color=colour, lw=1.2, label=s.label)
        ax.plot([s.youden_fpr], [s.youden_tpr], marker="o", color=colour, ms=5)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls="--")
    ax.set_xlabel("1 - specificity", fontsize=7)
    ax.set_ylabel("sensitivity", fontsize=7)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5.5, loc="lower right")
    ax.set_title("Responders (CR/PR) vs non-responders (SD/PD); dot = Youden cutoff", fontsize=7)
    return png_bytes(fig)


def trajectories(panels: Sequence[dict]) -> bytes:
    """Per-patient biomarker trajectories in % of baseline (paper Fig. 6b).

    Parameters
    ----------
    panels : sequence of dict
        Each with ``label`` and ``lines``: list of ``(x, y)`` arrays, x = days
        since baseline, y = % of the baseline value (baseline = 100).
    """
    n = max(1, len(panels))
    cols = min(2, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        for x, y in panel["lines"]:
            ax.plot(x, y, marker="o", ms=2, lw=0.8, alpha=0.6)
        ax.axhline(100.0, color="grey", lw=0.6, ls="--")
        ax.set_title(panel["label"], fontsize=7)
        ax.set_xlabel("days since baseline", fontsize=7)
        ax.set_ylabel("% of baseline", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    return png_bytes(fig)


def histogram(values: np.ndarray, *, label: str, bins: int = 30) -> bytes:
    """A small histogram (used for biomarker distributions)."""
    fig, ax = plt.subplots(figsize=(3.0, 2.2))
    ax.hist(np.asarray(values, float), bins=bins, color="#4575b4")
    ax.set_title(label, fontsize=7)
    ax.tick_params(labelsize=6)
    return png_bytes(fig)
