"""``report.html``: a run's report as one self-contained page.

Training curves with the phase boundaries and the reliability diagram are inline SVG drawn from the
figures themselves; the confusion matrix is a table whose cells open the thumbnails of their images;
top losses and the most confused pairs point at the images to look at first. Every thumbnail is a
``data:`` URI and the page's style and script are inline: it makes no request of any kind.

:func:`transferkit.report.write_report` writes it beside the PNGs after every training run, and
``transferkit evaluate RUN DATA --out DIR`` writes one for a test set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit._atomic import write_text_atomic
from transferkit._calibration import Calibration, Reliability
from transferkit._html import data_uri, escape, page, thumbnail_png
from transferkit._metrics import Evaluation, Predictions
from transferkit._selection import BestEpoch, Refit
from transferkit._types import History, PathLike
from transferkit.data._pipelines import PipelineSettings

__all__ = ["PAGE_FILE", "write_report_page"]

log = logging.getLogger("transferkit")

PAGE_FILE = "report.html"
THUMBNAIL_SIZE = 64
MAX_THUMBNAILS = 1000  # examples beyond this (the most certain right answers first) get no thumbnail
TOP_LOSSES = 24
CONFUSED_PAIRS = 10
_BLUE, _ORANGE = "#1f77b4", "#ff7f0e"


def write_report_page(
    out: PathLike,
    *,
    class_names: Sequence[str],
    history: dict[str, History] | None = None,
    evaluation: Evaluation | None = None,
    examples: Predictions | None = None,
    truth: np.ndarray | None = None,
    image_settings: PipelineSettings | None = None,
    calibration: Calibration | None = None,
    best: BestEpoch | None = None,
    refit: Refit | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    split: str = "validation",
    title: str | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
    thumbnail_size: int = THUMBNAIL_SIZE,
) -> Path:
    """Write ``out/report.html``; returns its path.

    Args:
        out: The folder (a run folder, or ``evaluate --out``'s).
        class_names: Name of each class index.
        history: Keras history of each phase, in order (``FineTuner.history``): the training curves.
        evaluation: The metrics on ``split``: the figures, the per-class table and the confusion matrix.
        examples: Predictions for image files (``paths`` set) with ``truth`` their labels (class
            indices; multi-hot rows show no images): the images behind each confusion-matrix cell
            and the top losses.
        image_settings: The model's resize mode and background, so thumbnails show what it saw.
        calibration: The temperature scaling: its reliability diagram and ECE before and after.
        best, refit: The epoch kept and what was refitted, named in the summary.
        skipped: ``(path, reason)`` of files left out of the data.
        split: What the images are ("validation", "test"): it titles the figures.
        title: The page's heading (default: "Training report" or "Evaluation on the test images").
        max_thumbnails: At most this many examples get a thumbnail: mistakes first, then the least
            certain right answers.
        thumbnail_size: Pixels per side of a thumbnail.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in class_names]
    title = title or ("Training report" if split == "validation" else f"Evaluation on the {split} images")
    data: dict[str, Any] = {"classes": names, "examples": [], "thumbs": [], "top": TOP_LOSSES}
    usable = (examples is not None and examples.paths is not None and truth is not None
              and np.asarray(truth).ndim == 1 and len(examples.paths) == len(truth))
    if usable:
        assert examples is not None and examples.paths is not None and truth is not None
        data["examples"], data["thumbs"] = _examples(examples, np.asarray(truth), image_settings or PipelineSettings(),
                                                     max_thumbnails, thumbnail_size)

    sections = [
        _summary(evaluation, calibration, best, refit, skipped, split, len(data["examples"])),
        _curves(history or {}),
        _per_class(evaluation, split),
        _confusion(evaluation, split, usable),
        _reliability(calibration, split),
        _top_losses(usable),
        _confused_pairs(evaluation),
        _skipped(skipped),
    ]
    nav = [("summary", "Summary"), ("curves", "Training curves"), ("per-class", "Per class"),
           ("confusion", "Confusion matrix"), ("calibration", "Calibration"), ("top-losses", "Top losses"),
           ("confused-pairs", "Most confused")]
    header = (f'<header class="top"><h1>{escape(title)}</h1><nav>'
              + "".join(f'<a href="#{key}">{text}</a>' for key, text in nav if any(
                  section.startswith(f'<section id="{key}">') for section in sections)) + "</nav></header>")
    body = header + "<main>" + "".join(s for s in sections if s) + "</main>"
    return write_text_atomic(root / PAGE_FILE, page(title, body, script=_SCRIPT, data=data, css=_CSS))


def _examples(examples: Predictions, truth: np.ndarray, settings: PipelineSettings, limit: int,
              size: int) -> tuple[list[list[Any]], list[str | None]]:
    """Rows ``[thumbnail index or None, true, predicted, p(true), p(predicted), path]`` and the
    thumbnails: mistakes first, then the least certain right answers, up to ``limit``."""
    probabilities = np.asarray(examples.probabilities, dtype=np.float64)
    true = truth.astype(np.int64)
    predicted = probabilities.argmax(axis=1)
    p_true = probabilities[np.arange(len(true)), true]
    order = np.lexsort((p_true, predicted == true))  # mistakes, then right answers; lowest p(true) first
    thumbs: list[str | None] = []
    slot: dict[int, int] = {}
    paths = examples.paths or ()
    for i in order[:max(0, limit)]:
        try:
            image = thumbnail_png(paths[i], size=size, resize=settings.resize, background=settings.background)
        except Exception as error:  # a file gone or changed since: no thumbnail, the row stays
            log.debug("No thumbnail for %s: %s", paths[i], error)
            continue
        slot[int(i)] = len(thumbs)
        thumbs.append(data_uri(image))
    rows = [[slot.get(i), int(true[i]), int(predicted[i]), round(float(p_true[i]), 4),
             round(float(probabilities[i, predicted[i]]), 4), str(paths[i])] for i in range(len(true))]
    return rows, thumbs


def _section(key: str, heading: str, inner: str) -> str:
    return f'<section id="{key}"><h2>{heading}</h2>{inner}</section>'


def _figure(value: str, label: str) -> str:
    return f'<div class="figure"><b>{escape(value)}</b>{escape(label)}</div>'


def _summary(evaluation: Evaluation | None, calibration: Calibration | None, best: BestEpoch | None,
             refit: Refit | None, skipped: Sequence[tuple[str, str]], split: str, shown: int) -> str:
    figures = []
    if evaluation is not None:
        macro = float(np.mean(evaluation.f1)) if len(evaluation.f1) else 0.0
        figures += [_figure(f"{evaluation.accuracy:.3f}", f"{split} accuracy"), _figure(f"{evaluation.loss:.4f}",
                    f"{split} loss"), _figure(f"{macro:.3f}", "macro F1"),
                    _figure(str(int(np.sum(evaluation.support))), f"{split} images"),
                    _figure(str(len(evaluation.class_names)), "classes")]
    if best is not None:
        figures.append(_figure(f"epoch {best.epoch}", f"kept ({best.phase.replace('_', ' ')} phase)"))
    if calibration is not None:
        figures.append(_figure(f"{calibration.ece_before:.3f} → {calibration.ece_after:.3f}",
                               f"ECE, T = {calibration.temperature:.2f}"))
    notes = []  # HTML
    if evaluation is None:
        notes.append(escape(f"No {split} figures: the run had no {split} images."))
    if refit is not None:
        notes.append(escape(f"The model was {refit.describe()}; the {split} figures are those of the model before "
                            "the refit."))
    if skipped:
        notes.append(f'{len(skipped)} file{"s" if len(skipped) != 1 else ""} left out of the data '
                     '(<a href="#skipped">listed below</a>).')
    inner = f'<div class="figures">{"".join(figures)}</div>' + "".join(f'<p class="muted">{n}</p>' for n in notes)
    return _section("summary", "Summary", inner)


def _curves(history: dict[str, History]) -> str:
    metrics = [m for m in ("loss", "accuracy") if any(m in h for h in history.values())] or ["loss"]
    charts = []
    for metric in metrics:
        train_x: list[float] = []
        train_y: list[float] = []
        val_x: list[float] = []
        val_y: list[float] = []
        boundaries: list[tuple[float, str]] = []
        start = 0
        for phase, values in history.items():
            count = len(values.get(metric, []))
            if start and count:
                boundaries.append((start + 0.5, phase.replace("_", " ")))
            train_x += [start + 1 + k for k in range(count)]
            train_y += [float(v) for v in values.get(metric, [])]
            validation = [float(v) for v in values.get(f"val_{metric}", [])][:count]
            val_x += [start + 1 + k for k in range(len(validation))]
            val_y += validation
            start += count
        series = [("train", _BLUE, train_x, train_y), ("validation", _ORANGE, val_x, val_y)]
        charts.append(_line_chart(metric, series, boundaries, x_label="epoch"))
    if not any(len(h.get(m, [])) for h in history.values() for m in metrics):
        return _section("curves", "Training curves", '<p class="muted">No training epochs.</p>')
    phases = ", ".join(escape(p.replace("_", " ")) for p in history)
    return _section("curves", "Training curves",
                    f'<p class="muted">Phases in order: {phases}; a dashed line marks where a phase starts.</p>'
                    f'<div class="figures">{"".join(charts)}</div>')


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _line_chart(name: str, series: list[tuple[str, str, list[float], list[float]]],
                boundaries: list[tuple[float, str]], *, x_label: str, width: int = 440, height: int = 260,
                limits: tuple[float, float, float, float] | None = None, diagonal: bool = False,
                markers: Sequence[str] = ()) -> str:
    """An SVG line chart: each series a polyline with a point (and its value as a tooltip) per value."""
    left, right, top, bottom = 48, 12, 24, 36
    xs = [x for _, _, sx, _ in series for x in sx]
    ys = [y for _, _, _, sy in series for y in sy if math.isfinite(y)]
    if limits is not None:
        x0, x1, y0, y1 = limits
    else:
        x0, x1 = (0.5, max(xs) + 0.5) if xs else (0.0, 1.0)
        y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 0.5
        y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="chart" role="img" aria-label="{escape(name)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<text x="{left}" y="14" font-weight="600">{escape(name)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#ccc"/>']
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_number(round(t, 6))}</text>')
    x_ticks = _ticks(x0, x1) if limits is not None else [t for t in _ticks(max(1.0, x0), x1) if t == int(t)]
    for t in x_ticks:
        parts.append(f'<text x="{sx(t):.1f}" y="{height - bottom + 14}" text-anchor="middle">{_number(t)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    if diagonal:
        parts.append(f'<line x1="{sx(x0):.1f}" y1="{sy(y0):.1f}" x2="{sx(x1):.1f}" y2="{sy(y1):.1f}" '
                     'stroke="gray" stroke-dasharray="4 3"/>')
    for x, label in boundaries:
        parts.append(f'<line class="phase-boundary" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" '
                     f'y2="{height - bottom}" stroke="gray" stroke-dasharray="5 4"/>'
                     f'<text x="{sx(x) + 4:.1f}" y="{top + 12}" fill="gray">{escape(label)}</text>')
    legend_x = width - right
    legend: list[tuple[str, str]] = []
    for k, (label, color, px, py) in enumerate(series):
        points = [(x, y) for x, y in zip(px, py) if math.isfinite(y)]
        if not points:
            continue
        marker = markers[k] if k < len(markers) else "circle"
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in points:
            tip = f"<title>{escape(label)}: {_number(round(y, 4))} at {x_label} {_number(round(x, 4))}</title>"
            if marker == "square":
                parts.append(f'<rect x="{sx(x) - 3.5:.1f}" y="{sy(y) - 3.5:.1f}" width="7" height="7" '
                             f'fill="{color}">{tip}</rect>')
            else:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}">{tip}</circle>')
        legend.append((label, color))
    for label, color in reversed(legend):  # right-aligned in the top margin, in series order
        parts.append(f'<text x="{legend_x}" y="14" text-anchor="end">{escape(label)}</text>')
        legend_x -= 6 * len(label) + 4
        parts.append(f'<rect x="{legend_x - 10}" y="5" width="10" height="10" fill="{color}"/>')
        legend_x -= 22
    parts.append("</svg>")
    return "".join(parts)


def _per_class(evaluation: Evaluation | None, split: str) -> str:
    if evaluation is None:
        return ""
    rows = "".join(
        f'<tr><td class="name">{escape(name)}</td><td>{m["precision"]:.3f}</td><td>{m["recall"]:.3f}</td>'
        f'<td>{m["f1"]:.3f}</td><td>{m["support"]}</td></tr>' for name, m in evaluation.per_class.items())
    return _section("per-class", f"Per class ({escape(split)} images)",
                    '<table class="per-class"><thead><tr><th class="name">class</th><th>precision</th><th>recall</th>'
                    f"<th>F1</th><th>support</th></tr></thead><tbody>{rows}</tbody></table>")


def _confusion(evaluation: Evaluation | None, split: str, clickable: bool) -> str:
    if evaluation is None or evaluation.confusion_matrix is None:
        return _section("confusion", "Confusion matrix",
                        '<p class="muted">No confusion matrix (no single-label evaluation).</p>')
    cm = np.asarray(evaluation.confusion_matrix)
    names = evaluation.class_names
    totals = np.maximum(cm.sum(axis=1), 1)
    head = "".join(f'<th class="col" title="{escape(n)}">{escape(n)}</th>' for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            share = cm[i, j] / totals[i]
            hue = "30, 120, 60" if i == j else "190, 40, 30"
            style = f"background: rgba({hue}, {0.08 + 0.6 * share:.3f})" if cm[i, j] else ""
            label = f"true {name}, predicted {names[j]}: {cm[i, j]}"
            cells.append(f'<td class="cell" data-true="{i}" data-predicted="{j}" style="{style}" '
                         f'title="{escape(label)}">' + (
                             f'<button type="button" aria-label="{escape(label)}">{cm[i, j]}</button>'
                             if clickable and cm[i, j] else str(cm[i, j])) + "</td>")
        rows.append(f'<tr><th class="name">{escape(name)}</th>{"".join(cells)}</tr>')
    hint = ("Click a cell to see its images." if clickable
            else "The images behind the cells are not available for this report.")
    return _section(
        "confusion", f"Confusion matrix ({escape(split)} images)",
        f'<p class="muted">True class down, predicted class across; accuracy {evaluation.accuracy:.3f}. {hint}</p>'
        f'<div class="matrix-wrap"><table class="confusion"><thead><tr><th class="name">true \\ predicted</th>'
        f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        '<div id="cell-images" hidden><h3 class="cell-title"></h3><div class="gallery"></div></div>')


def _reliability(calibration: Calibration | None, split: str) -> str:
    if calibration is None:
        return _section("calibration", "Calibration",
                        '<p class="muted">No temperature scaling for this run (turned off, multi-label, or no '
                        f"{escape(split)} images).</p>")

    def points(part: Reliability) -> tuple[list[float], list[float]]:
        kept = [(c, a) for c, a, n in zip(part.confidence, part.accuracy, part.counts) if n]
        return [c for c, _ in kept], [a for _, a in kept]

    before, after = points(calibration.before), points(calibration.after)
    chart = _line_chart("reliability", [("before", _BLUE, *before),
                                        (f"after (T = {calibration.temperature:.2f})", _ORANGE, *after)],
                        [], x_label="confidence", width=360, height=340, limits=(0, 1, 0, 1), diagonal=True,
                        markers=("circle", "square"))
    table = ("<table><tbody>"
             f'<tr><th class="name">temperature T</th><td>{calibration.temperature:.3f}</td></tr>'
             f'<tr><th class="name">ECE before</th><td>{calibration.ece_before:.4f}</td></tr>'
             f'<tr><th class="name">ECE after</th><td>{calibration.ece_after:.4f}</td></tr>'
             f'<tr><th class="name">images</th><td>{calibration.images}</td></tr></tbody></table>')
    return _section(
        "calibration", "Calibration",
        '<p class="muted">Accuracy against confidence (top-class probability) in 15 bins, before and after '
        "temperature scaling; points below the dashed diagonal are over-confident. T was fitted on the validation "
        "images, so the ECE after it is optimistic there.</p>"
        f'<div class="figures">{chart}<div>{table}</div></div>')


def _top_losses(usable: bool) -> str:
    if not usable:
        return _section("top-losses", "Top losses", '<p class="muted">No images to show for this report.</p>')
    return _section("top-losses", "Top losses",
                    f'<p class="muted">The {TOP_LOSSES} images with the lowest probability of their true class: '
                    'mislabelled images and the hardest cases are usually here.</p><div class="gallery"></div>')


def _confused_pairs(evaluation: Evaluation | None) -> str:
    if evaluation is None or evaluation.confusion_matrix is None:
        return ""
    cm = np.asarray(evaluation.confusion_matrix)
    names = evaluation.class_names
    pairs = sorted(((int(cm[i, j]), i, j) for i in range(len(names)) for j in range(len(names))
                    if i != j and cm[i, j]), key=lambda t: (-t[0], t[1], t[2]))[:CONFUSED_PAIRS]
    if not pairs:
        return _section("confused-pairs", "Most confused pairs", '<p class="muted">No mistakes.</p>')
    totals = np.maximum(cm.sum(axis=1), 1)
    rows = "".join(
        f'<tr><td class="name">{escape(names[i])}</td><td class="name">{escape(names[j])}</td><td>{n}</td>'
        f'<td>{100 * n / totals[i]:.1f} %</td><td><button type="button" class="show" data-true="{i}" '
        f'data-predicted="{j}">show</button></td></tr>' for n, i, j in pairs)
    return _section("confused-pairs", "Most confused pairs",
                    '<table class="confused"><thead><tr><th class="name">true</th><th class="name">predicted as</th>'
                    f"<th>images</th><th>share of the true class</th><th></th></tr></thead><tbody>{rows}</tbody>"
                    "</table>")


def _skipped(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    rows = "".join(f'<tr><td class="name path">{escape(p)}</td><td class="name">{escape(r)}</td></tr>'
                   for p, r in list(skipped)[:200])
    more = f'<p class="muted">… and {len(skipped) - 200} more (metrics.json lists them all).</p>' \
        if len(skipped) > 200 else ""
    return _section("skipped", "Files left out",
                    f'<table><thead><tr><th class="name">file</th><th class="name">why</th></tr></thead>'
                    f"<tbody>{rows}</tbody></table>{more}")


_CSS = """
.matrix-wrap { overflow-x: auto; }
table.confusion td.cell { min-width: 44px; text-align: center; padding: 0; }
table.confusion td.cell button { width: 100%; border: 0; background: transparent; padding: 6px 8px; font-weight: 600; }
table.confusion td.cell.selected { outline: 3px solid var(--accent); outline-offset: -3px; }
table.confusion th.col { max-width: 90px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 8px; }
.example { width: 132px; font-size: 12px; }
.example img, .example .missing { width: 64px; height: 64px; }
.example.wrong .caption b { color: var(--bad); }
.example .path { font-size: 10px; color: var(--muted); }
#cell-images { margin-top: 12px; border-top: 1px solid var(--line); }
#cell-images h3 { font-size: 14px; margin: 10px 0 4px; }
"""

_SCRIPT = r"""
function example(row) {
  const [thumb, t, p, pTrue, pPred, path] = row;
  const image = thumb === null
    ? el("div", {class: "missing", text: "no thumbnail"})
    : el("img", {class: "thumb", src: D.thumbs[thumb], alt: path, width: 64, height: 64});
  return el("div", {class: "example" + (t !== p ? " wrong" : ""), title: path}, image,
    el("div", {class: "caption"}, "true ", el("b", {text: D.classes[t]})),
    el("div", {class: "caption"}, "predicted ", el("b", {text: D.classes[p]})),
    el("div", {class: "muted",
               text: "p(true) " + pTrue.toFixed(3) + (t !== p ? ", p(pred.) " + pPred.toFixed(3) : "")}),
    el("div", {class: "path", text: path.split(/[\\/]/).slice(-2).join("/")}));
}
function showCell(t, p) {
  const box = document.getElementById("cell-images");
  if (!box) return;
  document.querySelectorAll("td.cell.selected").forEach(c => c.classList.remove("selected"));
  const cell = document.querySelector('td.cell[data-true="' + t + '"][data-predicted="' + p + '"]');
  if (cell) cell.classList.add("selected");
  const rows = D.examples.filter(r => r[1] === t && r[2] === p).sort((a, b) => a[3] - b[3]);
  const gallery = box.querySelector(".gallery");
  gallery.replaceChildren(...rows.map(example));
  const missing = rows.filter(r => r[0] === null).length;
  box.querySelector(".cell-title").textContent = "True " + D.classes[t] + ", predicted " + D.classes[p] + ": " +
    rows.length + " image" + (rows.length === 1 ? "" : "s") + (missing ? " (" + missing + " without a thumbnail)" : "");
  box.hidden = false;
  box.scrollIntoView({block: "nearest"});
}
document.querySelectorAll("table.confusion td.cell button").forEach(b => b.addEventListener("click", () => {
  const cell = b.closest("td");
  showCell(Number(cell.dataset.true), Number(cell.dataset.predicted));
}));
document.querySelectorAll("table.confused button.show").forEach(b => b.addEventListener("click", () => {
  showCell(Number(b.dataset.true), Number(b.dataset.predicted));
  document.getElementById("confusion").scrollIntoView();
}));
const losses = document.querySelector("#top-losses .gallery");
if (losses) {
  const worst = D.examples.slice().sort((a, b) => a[3] - b[3]).slice(0, D.top);
  losses.replaceChildren(...worst.map(example));
}
"""
