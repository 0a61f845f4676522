"""The report's figures, drawn on bare `Figure` objects: no pyplot, so no display, no global
state and no backend to configure; `savefig` renders through Agg.

Each function returns None when the study has nothing to draw yet.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mft_search.experiment.results import NOT_CANDIDATES
from mft_search.report.experiment import StudyRecord
from mft_search.report.importance import FLAGGED_BELOW, Importances
from mft_search.report.noise import Reference

MAX_RATIO_COLUMNS = 8  # beyond this many distinct ratios (a continuous range), bin them
STATUS_STYLES = {"completed": ("o", "tab:blue"), "pruned": ("v", "tab:orange"), "running": ("s", "tab:gray"),
                 "no-op": ("D", "tab:purple"), "failed": ("x", "tab:red")}


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def ratio_heatmap(study: StudyRecord, percent: bool, reference: Reference | None) -> Figure | None:
    """Best metric by layer group (rows, shallow to deep) x mask ratio: the paper's Fig. 3.

    With the unmasked model's validation metric, the colours diverge from it (blue above, red
    below) and a cell within noise of it reads "≈"; without it, a sequential map as before."""
    grid = _ratio_grid(study.trials)
    if grid is None:
        return None
    scale = _scale(percent)
    figure = Figure(figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]))
    axes = figure.subplots()
    axes.set_facecolor("0.8")  # where no trial ran: grey, not the white of the diverging map's centre
    raw = grid.to_numpy(dtype=float)
    values = np.ma.masked_invalid(raw * scale)  # masked cells show the axes' grey
    norm = _centred_norm(values, reference, scale) if reference is not None else None
    image = axes.imshow(values, cmap="RdBu" if norm else "viridis", norm=norm, aspect="auto")
    for (i, j), value in np.ndenumerate(raw):
        if np.isfinite(value):
            near = "≈" if reference is not None and reference.within(value) else ""
            axes.text(j, i, near + _number(value * scale, percent), ha="center", va="center",
                      color=_text_colour(image.norm(value * scale), diverging=norm is not None), fontsize=8)
    axes.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    axes.set_yticks(range(grid.shape[0]), grid.index)
    axes.set_xlabel("mask ratio (local mode)")
    axes.set_ylabel("layer group")
    axes.set_title(f"{study.name}: best validation {_unit(percent)}\n{_reference_caption(reference, percent)}",
                   fontsize=9)
    colorbar = figure.colorbar(image, ax=axes)
    if reference is not None:
        _mark_reference(colorbar.ax, reference, scale)
    return figure


def _centred_norm(values: np.ma.MaskedArray, reference: Reference, scale: float) -> TwoSlopeNorm:
    # Symmetric limits: a shade then means the same distance from the unmasked model on either
    # side, and the centre stays inside them when every cell lies on one side of it. Reaching
    # past the noise band keeps the band's cells pale.
    centre = reference.value * scale
    reach = max(float(np.nanmax(np.abs(values.filled(np.nan) - centre))), (reference.half_width or 0.0) * scale)
    reach = reach if reach > 0 else 1.0  # every cell on the centre: any positive reach shows it
    return TwoSlopeNorm(vcenter=centre, vmin=centre - reach, vmax=centre + reach)


def _text_colour(shade: float, diverging: bool) -> str:
    """White on the map's dark ends, black elsewhere."""
    dark = abs(shade - 0.5) > 0.3 if diverging else shade <= 0.6
    return "white" if dark else "black"


def _reference_caption(reference: Reference | None, percent: bool) -> str:
    if reference is None:
        return "unmasked reference not yet available (evaluation pending)"
    scale = _scale(percent)
    centred = f"colours centred on the unmasked model ({_number(reference.value * scale, percent)})"
    if reference.half_width is None:
        return f"{centred}; no per-item validation scores yet, so no noise band"
    band = _number(reference.half_width * scale, percent) + (" pts" if percent else "")
    return (f"{centred}; ≈: within ±{band} of it\n(95% band of a difference of two independent means over its "
            f"{reference.items} validation items;\nconservative: a paired test would be narrower)")


def _mark_reference(colorbar_axes, reference: Reference, scale: float) -> None:
    """The unmasked model's value (solid) and the noise band's edges (dashed) on the colour bar."""
    colorbar_axes.axhline(reference.value * scale, color="black", linewidth=1)
    if reference.half_width:
        for edge in (-reference.half_width, reference.half_width):
            colorbar_axes.axhline((reference.value + edge) * scale, color="black", linewidth=1, linestyle="--")


def history(study: StudyRecord, percent: bool, reference: Reference | None) -> Figure | None:
    """Each trial's best metric in results.parquet's order (stage, then trial id: creation order
    for Ray Tune's ids), the running best of the trials selection may pick, pruned/failed marked,
    each stage named and set apart, the unmasked model's metric and noise band behind."""
    trials = study.trials
    if trials.empty:
        return None
    scale = _scale(percent)
    metric = trials["metric"].astype(float) * scale
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    _mark_stages(axes, trials)
    for status, (marker, color) in STATUS_STYLES.items():
        mine = trials["status"] == status
        if mine.any():
            axes.scatter(trials["order"][mine], metric[mine], marker=marker, color=color, label=status,
                         zorder=3)
    unscored = trials["order"][metric.isna()]  # failed before any report: marked on the x axis
    axes.plot(unscored, np.zeros(len(unscored)), "x", color=STATUS_STYLES["failed"][1],
              transform=axes.get_xaxis_transform(), clip_on=False)
    selectable = metric.where(~trials["status"].isin(NOT_CANDIDATES))  # the sweep never selects these
    axes.step(trials["order"], selectable.cummax().ffill(), where="post", color="black", label="running best")
    if reference is not None:
        axes.axhline(reference.value * scale, color="gray", linestyle="--", label="unmasked")
        if reference.half_width:
            band = reference.half_width * scale
            axes.axhspan(reference.value * scale - band, reference.value * scale + band, color="tab:gray", alpha=0.2,
                         linewidth=0, label="unmasked ± noise (95%, unpaired)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel(f"validation {_unit(percent)}")
    axes.set_title(f"{study.name}: optimisation history")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: hides no trial
    return figure


def _mark_stages(axes, trials: pd.DataFrame) -> None:
    """Each stage named above its span of trials, every other span shaded and a line where one
    starts: refine re-runs the best probe points on all the training data, so a jump there is the
    stage's doing, not the search's."""
    spans = trials.groupby("stage", sort=False)["order"].agg(["min", "max"])
    for k, (_, span) in enumerate(spans.iterrows()):
        if k % 2:
            axes.axvspan(span["min"] - 0.5, span["max"] + 0.5, color="wheat", alpha=0.4, linewidth=0, zorder=0)
        if k:
            axes.axvline(span["min"] - 0.5, color="0.4", linestyle=":", linewidth=1, zorder=1)
    names = axes.secondary_xaxis("top")  # above the plot, where no point or legend can hide a name
    names.set_xticks(((spans["min"] + spans["max"]) / 2).tolist(), [str(s) for s in spans.index], fontsize=8)
    names.tick_params(length=0)


def fft_curve(study: StudyRecord) -> Figure | None:
    """The FFT's (and the LoRA baseline's) selection metric at every evaluation point, each best
    starred (after the fft stage, the FFT's is the backbone MFT masks) and each last ringed
    (Continued FFT / LoRA): the shape of the paper's Fig. 1."""
    summary = study.summary
    curves = [c for c in (summary.fft, summary.lora) if c and c.get("points")] if summary else []
    if not curves:
        return None
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for curve, color in zip(curves, ("tab:blue", "tab:green")):
        _draw_curve(axes, curve, color)
    percent = curves[0]["metric_name"] != "-validation loss"
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{curves[0]['metric_name']}{' (%)' if percent else ''}")
    axes.set_title(f"{study.name}: metric per evaluation point")
    axes.legend(fontsize=8)
    return figure


def _draw_curve(axes, curve: dict, color: str) -> None:
    scale = 100.0 if curve["metric_name"] != "-validation loss" else 1.0
    epochs = [p["epoch"] for p in curve["points"]]
    metric = [p["metric"] * scale for p in curve["points"]]
    best = epochs.index(curve["best_epoch"])
    name = "FFT" if curve["origin"] != "LoRA" else "LoRA"
    axes.plot(epochs, metric, "o-", color=color, label=f"{name} ({curve['origin']})" if name == "FFT" else name)
    axes.plot([epochs[best]], [metric[best]], "*", color=color, markersize=16, markeredgecolor="black", zorder=3,
              label=f"best {name}, epoch {epochs[best]:g}")
    axes.plot([epochs[-1]], [metric[-1]], "o", markersize=12, markerfacecolor="none", color=color,
              label=f"continued {name}, epoch {epochs[-1]:g}")


def importance_bars(study: StudyRecord, importances: Importances) -> Figure | None:
    """The importances as bars, titled with the trials they rest on; grey and flagged when too few."""
    if not importances.values:
        return None
    names = list(importances.values)[::-1]  # largest on top
    figure = Figure(figsize=(6, 1.0 + 0.4 * len(names)))
    axes = figure.subplots()
    axes.barh(names, [importances.values[n] for n in names], color="tab:gray" if importances.flag else "tab:blue")
    axes.set_xlabel("importance (normalised)")
    title = f"{study.name}: parameter importances\nfrom {importances.trials} completed trials"
    flag = f"\nflagged: fewer than {FLAGGED_BELOW}, read as noise (leaderboard.md says why)"
    axes.set_title(title + (flag if importances.flag else ""), fontsize=9)
    return figure


def _ratio_grid(trials: pd.DataFrame) -> pd.DataFrame | None:
    """Layer group x ratio table of best metrics; NaN where no trial ran."""
    if trials.empty or not {"param.layer_group", "param.ratio"} <= set(trials.columns):
        return None
    local = trials.dropna(subset=["metric", "param.ratio"])
    if "param.mode" in local.columns:
        local = local[local["param.mode"] == "local"]
    if local.empty:
        return None
    ratios = local["param.ratio"].astype(float)
    column = ratios.map(lambda r: f"{r:.3g}") if ratios.nunique() <= MAX_RATIO_COLUMNS else _ratio_bins(ratios)
    grid = local.assign(column=column).pivot_table(index="param.layer_group", columns="column",
                                                   values="metric", aggfunc="max")
    columns = sorted(grid.columns, key=lambda c: float(str(c).split("–")[0]))
    rows = sorted(grid.index, key=_first_block)
    return grid.reindex(index=rows, columns=columns)


def _ratio_bins(ratios: pd.Series) -> pd.Series:
    # Ratios are usually searched on a log range, so log-spaced bins keep the small ones apart.
    edges = np.geomspace(ratios.min(), ratios.max(), MAX_RATIO_COLUMNS // 2 + 1)
    for digits in (2, 3, 4, 6):  # the fewest digits that still tell the bins apart
        labels = [f"{lo:.{digits}g}–{hi:.{digits}g}" for lo, hi in zip(edges[:-1], edges[1:])]
        if len(set(labels)) == len(labels):
            break
    return pd.cut(ratios, edges, labels=labels, include_lowest=True).astype(str)


def _first_block(group: str) -> tuple[int, ...]:
    return tuple(int(b) for b in re.findall(r"\d+", str(group)))


def _scale(percent: bool) -> float:
    return 100.0 if percent else 1.0


def _number(value: float, percent: bool) -> str:
    """A metric as the figures print it: points to one decimal, a raw metric to 3 digits."""
    return f"{value:.1f}" if percent else f"{value:.3g}"


def _unit(percent: bool) -> str:
    return "metric (%)" if percent else "metric"
