"""Evaluation results on disk: JSON, CSV tables, a markdown summary and PNG plots.

Files written by :func:`write_report` into ``out_dir``:

``results.json``
    ``config``, ``summary``, ``objects`` (one row per mode and GT object, with the IoU after every
    click, the clicks and timings), ``sweeps`` and ``whole_image`` (AR).
``objects.csv``
    One row per mode and object: ``mode, image, object_id, level, level_index, area, granularity,
    n_clicks, iou_1, iou_last, noc_80, noc_85, noc_90, seconds_per_click, ious`` (JSON list).
``summary.csv``
    One row per mode and level (``all`` first): ``n_objects, noc_*, nof_*, fail_strict_*, iou_1,
    mean_clicks, seconds_per_click, mean_g``.
``summary.md``
    The same as markdown tables, plus AR and the sweep's nestedness.
``iou_vs_clicks.png``, ``area_vs_g.png``, ``ar_vs_iou.png``
    Mean IoU against clicks per mode; predicted area / GT area against g at the first click
    (median per level); recall against the IoU threshold. Drawn with matplotlib's Agg canvas
    (no display, the global backend is left alone).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.evaluate.metrics import noc
from unsamv2_engine.evaluate.runner import InteractiveResults

__all__ = ["markdown_summary", "object_rows", "summary_rows", "write_report"]


def object_rows(results: InteractiveResults) -> list[dict[str, Any]]:
    """One flat row per (mode, object) for ``objects.csv``."""
    thresholds = results.summary.get("thresholds") or results.config.get("thresholds") or [0.8, 0.85, 0.9]
    max_clicks = int(results.config.get("max_clicks", 20))
    rows = []
    for r in results.objects:
        row: dict[str, Any] = {"mode": r.mode, "image": r.image, "object_id": r.object_id, "level": r.level,
                               "level_index": r.level_index, "area": r.area, "granularity": r.granularity,
                               "n_clicks": r.n_clicks, "iou_1": r.ious[0] if r.ious else None,
                               "iou_last": r.ious[-1] if r.ious else None}
        for t in thresholds:
            row[f"noc_{round(100 * t)}"] = noc(r.ious, t, max_clicks)
        row["seconds_per_click"] = float(np.mean(r.seconds)) if r.seconds else None
        row["ious"] = [round(v, 6) for v in r.ious]
        rows.append(row)
    return rows


def summary_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (mode, level) of :func:`~unsamv2_engine.evaluate.runner.summarize_objects`' output."""
    rows = []
    for mode, entry in summary.get("modes", {}).items():
        groups = [("all", entry["all"])] + list(entry.get("per_level", {}).items())
        g_by_level = entry.get("granularity", {}).get("mean_by_level", {})
        for level, s in groups:
            row: dict[str, Any] = {"mode": mode, "level": level, "n_objects": s["n_objects"]}
            for key in ("noc", "nof", "fail_strict"):
                for k, v in s[key].items():
                    row[f"{key}_{k}"] = v
            row.update(iou_1=s["iou_1"], mean_clicks=s["mean_clicks"], seconds_per_click=s["seconds_per_click"])
            row["mean_g"] = entry.get("granularity", {}).get("mean") if level == "all" else g_by_level.get(level)
            rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_summary(interactive: InteractiveResults | None = None,
                     whole_image: Mapping[str, Any] | None = None) -> str:
    """Markdown tables: NoC / NoF / 1-IoU per mode (and per level), sweep nestedness, AR."""
    lines: list[str] = ["# Evaluation summary", ""]
    if interactive is not None:
        cfg = interactive.config
        pred = cfg.get("predictor") or {}
        lines += [f"Target IoU {cfg.get('target_iou')}, at most {cfg.get('max_clicks')} clicks, mask threshold "
                  f"{pred.get('mask_threshold', '?')}, model {pred.get('model', pred.get('predictor', '?'))}. "
                  "NoC@k: mean clicks to IoU >= k (max if never); NoF@k: objects with NoC@k = max (RITM); "
                  "1-IoU: mean IoU after the first click (%). The oracle picks g per object with the GT "
                  "(an optimistic upper bound).", ""]
        rows = summary_rows(interactive.summary)
        if rows:
            keys = [k for k in rows[0] if k.startswith("noc_")]
            nof = [k for k in rows[0] if k.startswith("nof_")]
            header = ["mode", "level", "n"] + [k.replace("noc_", "NoC@") for k in keys] + \
                     [k.replace("nof_", "NoF@") for k in nof] + ["1-IoU", "mean g", "s/click"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for r in rows:
                cells = [r["mode"], r["level"], str(r["n_objects"])] + [_fmt(r[k]) for k in keys] + \
                        [_fmt(r[k]) for k in nof] + \
                        [_fmt(None if r["iou_1"] is None else 100 * r["iou_1"], 1), _fmt(r["mean_g"]),
                         _fmt(r["seconds_per_click"], 3)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        sweep = interactive.summary.get("sweep")
        if sweep:
            lines += ["## Granularity sweep at the first click", "",
                      f"{sweep['n_objects']} objects; pairs g1 < g2 with area(M1) <= area(M2): "
                      f"{_fmt(sweep['area_monotone'], 3)}; nested (|M1 \\ M2| < 5% of M1): {_fmt(sweep['nested'], 3)}; "
                      f"both: {_fmt(sweep['both'], 3)}.", ""]
            if sweep.get("best_g_by_level"):
                lines += ["| level | best one-click g (mean) |", "|---|---|"]
                lines += [f"| {lv} | {_fmt(g)} |" for lv, g in sweep["best_g_by_level"].items()]
                lines.append("")
        for mode, entry in interactive.summary.get("modes", {}).items():
            g = entry.get("granularity", {})
            if mode == "oracle" and g:
                lines += [f"Oracle g: Spearman rho vs log area {_fmt(g.get('spearman_vs_log_area'), 3)}, vs level "
                          f"number {_fmt(g.get('spearman_vs_level_index'), 3)}.", ""]
    if whole_image is not None:
        md = whole_image.get("max_dets", [1, 100, 1000])
        lines += ["## Whole-image class-agnostic AR (COCOeval, useCats=0)", "",
                  "| " + " | ".join([f"AR@{m}" for m in md[1:]] + ["AR_s", "AR_m", "AR_l", "AR@IoU0.5", "GT", "dets"])
                  + " |", "|" + "---|" * (len(md) - 1 + 6)]
        cells = [_fmt(whole_image.get(f"AR@{m}"), 3) for m in md[1:]] + \
                [_fmt(whole_image.get(k), 3) for k in ("AR_small", "AR_medium", "AR_large")] + \
                [_fmt(whole_image.get("AR_per_iou", {}).get("0.50"), 3), str(whole_image.get("n_gt")),
                 str(whole_image.get("n_detections"))]
        lines += ["| " + " | ".join(cells) + " |", ""]
    return "\n".join(lines)


def _new_figure(width: float = 5.5, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_iou_curves(summary: Mapping[str, Any], path: Path) -> Path:
    """Mean IoU after each click, one line per mode."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for mode, entry in summary.get("modes", {}).items():
        curve = entry["all"]["miou_curve"]
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=mode)
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("IoU vs clicks (early-stopped runs padded with their last IoU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_area_vs_g(sweeps: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Predicted area / GT area against g at the first click: faint per object, median per level."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in sweeps:
        groups.setdefault(str(s["level"]) if s["level"] is not None else "all", []).append(s)
    colors = [f"C{i}" for i in range(10)]
    for i, (level, rows) in enumerate(groups.items()):
        c = colors[i % 10]
        for s in rows[:50]:
            ax.plot(s["granularities"], s["area_ratio"], color=c, alpha=0.15, linewidth=0.8)
        med = np.median(np.array([s["area_ratio"] for s in rows]), axis=0)
        ax.plot(rows[0]["granularities"], med, color=c, linewidth=2, marker="o", markersize=3, label=level)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("granularity g")
    ax.set_ylabel("predicted area / GT area")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mask area vs g at the first click", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_ar_vs_iou(whole_image: Mapping[str, Any], path: Path) -> Path:
    """Recall at each IoU threshold (the last maxDets), with AR as a dashed line."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    per = whole_image.get("AR_per_iou", {})
    ts = [float(t) for t in per]
    vals = [np.nan if v is None else v for v in per.values()]
    ax.plot(ts, vals, marker="o")
    if whole_image.get("AR") is not None:
        ax.axhline(whole_image["AR"], color="k", linestyle="--", linewidth=0.8,
                   label=f"AR@{whole_image.get('max_dets', [0, 0, '?'])[-1]} = {whole_image['AR']:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(out_dir: str | os.PathLike, *, interactive: InteractiveResults | None = None,
                 whole_image: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 plots: bool = True) -> dict[str, Path]:
    """Write every result file (see the module docstring) and return their paths by name."""
    from unsamv2_engine.io import write_json, write_table_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    doc: dict[str, Any] = {"config": dict(config or {})}
    if interactive is not None:
        doc["config"]["interactive"] = interactive.config
        doc["summary"] = interactive.summary
        doc["objects"] = [asdict(r) for r in interactive.objects]
        doc["sweeps"] = interactive.sweeps
        files["objects_csv"] = out / "objects.csv"
        write_table_csv(files["objects_csv"], object_rows(interactive))
        files["summary_csv"] = out / "summary.csv"
        write_table_csv(files["summary_csv"], summary_rows(interactive.summary))
    if whole_image is not None:
        doc["whole_image"] = dict(whole_image)
    files["results_json"] = out / "results.json"
    write_json(files["results_json"], doc)
    files["summary_md"] = out / "summary.md"
    files["summary_md"].write_text(markdown_summary(interactive, whole_image), encoding="utf-8")
    if plots:
        if interactive is not None and interactive.objects:
            files["iou_vs_clicks"] = plot_iou_curves(interactive.summary, out / "iou_vs_clicks.png")
        if interactive is not None and interactive.sweeps:
            files["area_vs_g"] = plot_area_vs_g(interactive.sweeps, out / "area_vs_g.png")
        if whole_image is not None:
            files["ar_vs_iou"] = plot_ar_vs_iou(whole_image, out / "ar_vs_iou.png")
    return files
