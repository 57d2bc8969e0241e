"""Pictures of a training run, written as PNG files (matplotlib, imported only when used).

* :func:`plot_history` — loss and accuracy of both phases on one figure, phase boundary marked;
* :func:`plot_confusion_matrix` — counts, true class down, predicted class across;
* :func:`plot_predictions` — a grid of validation images titled "predicted (true)", mistakes in red;
* :func:`plot_scores` — the scores of a search's trials;
* :func:`plot_lr_find` — a learning-rate sweep and its suggestion;
* :func:`write_report` — all of them plus ``metrics.json``, ``labels.txt`` and ``report.html`` (the
  same report as one self-contained page, :mod:`transferkit._report_page`) for one run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit._atomic import atomic_path, write_text_atomic
from transferkit._calibration import Calibration
from transferkit._errors import MissingDependencyError
from transferkit._lr_find import LearningRateSweep
from transferkit._metrics import MULTI_LABEL_THRESHOLD, Evaluation, Predictions
from transferkit._report_page import write_report_page
from transferkit._selection import BestEpoch, Refit
from transferkit._types import History, PathLike
from transferkit.data._images import load_image
from transferkit.data._pipelines import PipelineSettings

__all__ = ["plot_confusion_matrix", "plot_history", "plot_lr_find", "plot_predictions", "plot_reliability",
           "plot_scores", "write_report"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "Plots need matplotlib, which is not installed. Fix: pip install matplotlib"
        ) from None
    return plt


def plot_history(history: dict[str, History], path: PathLike) -> Path:
    """Training curves of every phase, one after the other, with a line where each phase starts."""
    plt = _pyplot()
    metrics = [m for m in ("loss", "accuracy") if any(m in h for h in history.values())] or ["loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        start = 0
        for phase, values in history.items():
            epochs = np.arange(start + 1, start + 1 + len(values.get(metric, [])))
            if start:
                ax.axvline(start + 0.5, color="gray", linestyle="--", linewidth=1)
                ax.text(start + 0.6, 0.98, phase.replace("_", " "), transform=ax.get_xaxis_transform(),
                        va="top", fontsize=8, color="gray")
            ax.plot(epochs, values.get(metric, []), "o-", color="tab:blue",
                    label="train" if start == 0 else None)
            if f"val_{metric}" in values:
                ax.plot(epochs, values[f"val_{metric}"], "o-", color="tab:orange",
                        label="validation" if start == 0 else None)
            start += len(values.get(metric, []))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if start:
            ax.legend()
        else:  # no epoch was trained (every phase had 0 epochs)
            ax.text(0.5, 0.5, "no training epochs", transform=ax.transAxes, ha="center", color="gray")
    fig.suptitle("Training curves (dashed line: fine-tuning starts)")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: PathLike) -> Path:
    """The confusion matrix as a heat map with the counts written in."""
    plt = _pyplot()
    cm = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"Confusion matrix (accuracy {accuracy:.3f})")
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(
    images: np.ndarray,
    predicted: Sequence[str],
    path: PathLike,
    *,
    true: Sequence[str] | None = None,
    title: str | None = None,
    rows: int = 2,
    columns: int = 5,
) -> Path:
    """A grid of images titled by their predicted class.

    With ``true`` labels, each title reads "predicted (true: …)" and mistakes get a red title
    and frame.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 3.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(np.asarray(images[k]).astype("uint8"))
        wrong = true is not None and predicted[k] != true[k]
        label = predicted[k] if true is None else f"{predicted[k]}\n(true: {true[k]})"
        ax.set_title(label, fontsize=9, color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    if title is None and true is not None:
        title = "Validation images: predicted (true); mistakes in red"
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(calibration: Calibration, path: PathLike) -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling.

    A calibrated model's points lie on the diagonal; points below it are over-confident bins.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    for part, label, marker in ((calibration.before, f"before (ECE {calibration.ece_before:.3f})", "o"),
                                (calibration.after, f"T = {calibration.temperature:.2f} "
                                                    f"(ECE {calibration.ece_after:.3f})", "s")):
        points = [(c, a) for c, a, n in zip(part.confidence, part.accuracy, part.counts) if n]
        ax.plot([c for c, _ in points], [a for _, a in points], marker=marker, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on {calibration.images} validation images")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_scores(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Score of each trial of a search in order, with the best so far.

    Args:
        rows: One mapping per trial, in trial order, each with the trial's validation accuracy as
            ``score`` (other keys are ignored), such as ``SearchResult.rows``.
        path: The PNG file to write.

    Example:
        >>> result = transferkit.search(data, "mobilenet", weights="imagenet", max_trials=20)
        >>> plot_scores(result.rows, "search_scores.png")
    """
    plt = _pyplot()
    scores = [row["score"] for row in rows]
    best = [max(scores[: i + 1]) for i in range(len(scores))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(scores) + 1), scores, "o", label="trial")
    ax.plot(range(1, len(scores) + 1), best, "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Hyperparameter search")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_find(result: LearningRateSweep, path: PathLike) -> Path:
    """Smoothed loss against learning rate (log scale) of a learning-rate sweep, suggestion marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.learning_rates, result.losses, "-", color="tab:blue")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
    ax.text(result.suggestion, 0.98, f" suggested {result.suggestion:.2g}", transform=ax.get_xaxis_transform(),
            va="top", color="tab:red", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"Learning-rate sweep ({result.phase.replace('_', '-')} phase)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    try:
        # Named, as the temporary name ends in ".tmp"; a name without a suffix gets PNG.
        with atomic_path(out) as temporary:
            fig.savefig(temporary, dpi=100, format=out.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return out


def _example_labels(examples: Predictions, truth: np.ndarray) -> tuple[list[str], list[str]]:
    """Predicted and true label text of each example: one class, or the set of a multi-label head."""
    names = examples.class_names
    if truth.ndim == 2:  # multi-hot rows
        predicted = [", ".join(s) or "(none)" for s in examples.label_sets()]
        true = [", ".join(names[j] for j in np.flatnonzero(row >= MULTI_LABEL_THRESHOLD)) or "(none)" for row in truth]
        return predicted, true
    return examples.labels, [names[int(i)] for i in truth]


def write_report(
    out: PathLike,
    *,
    class_names: Sequence[str],
    history: dict[str, History],
    evaluation: Evaluation | None = None,
    examples: Predictions | None = None,
    truth: np.ndarray | None = None,
    image_settings: PipelineSettings | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    best: BestEpoch | None = None,
    refit: Refit | None = None,
    calibration: Calibration | None = None,
    grid: int = 10,
    solved: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write labels.txt, metrics.json, the PNGs and report.html of a run into ``out``; returns the metrics written.

    :meth:`transferkit.FineTuner.write_report` gathers all of this from a trained tuner.

    Args:
        out: The run folder.
        class_names: Name of each class index.
        history: Keras history of each phase (``FineTuner.history``).
        evaluation: Validation metrics; the confusion matrix is drawn when it has one (single-label).
        examples: Predictions made from image files (their ``paths`` are set); a grid of them is
            drawn, mistakes in red — half mistakes when there are that many.
        truth: True labels of ``examples``: class indices, or multi-hot rows.
        image_settings: How the example files are drawn (size, resize mode, background); the
            model's own settings, so the grid shows what the network saw.
        skipped: ``(path, reason)`` of files left out of the data, listed in metrics.json.
        best: The epoch whose weights the model holds (``FineTuner.best_epoch``), recorded as
            ``best`` in metrics.json.
        refit: What was trained again on all images (``FineTuner.refitted``), recorded as
            ``refit``; ``evaluation`` is then that of the model before the refit.
        calibration: The temperature scaling (``FineTuner.calibration``), recorded as
            ``calibration`` with its reliability diagram in ``reliability.png``.
        grid: Number of examples in the grid.
        solved: The solved heads by phase (``HeadSolution.summary()`` of ``FineTuner.solutions``):
            ``C``, the cross-validated log loss of each ``C`` tried, iterations and seconds,
            recorded as ``solved``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / "labels.txt", "\n".join(class_names) + "\n")
    metrics: dict[str, Any] = {"history": history, "skipped": [list(s) for s in skipped],
                               "best": best.to_dict() if best is not None else None,
                               "refit": refit.to_dict() if refit is not None else None,
                               "calibration": calibration.to_dict() if calibration is not None else None,
                               "solved": solved or None}
    if calibration is not None:
        plot_reliability(calibration, root / "reliability.png")
    plot_history(history, root / "training_curves.png")
    if evaluation is not None:
        metrics["validation"] = evaluation.to_dict()
        if evaluation.confusion_matrix is not None:
            plot_confusion_matrix(evaluation.confusion_matrix, class_names, root / "confusion_matrix.png")
    if examples is not None and examples.paths and truth is not None:
        settings = image_settings or PipelineSettings()
        predicted, true = _example_labels(examples, np.asarray(truth))
        wrong = [i for i in range(len(true)) if predicted[i] != true[i]]
        right = [i for i in range(len(true)) if predicted[i] == true[i]]
        shown_wrong = wrong[: max(grid // 2, grid - len(right))]
        order = sorted(shown_wrong + right[: grid - len(shown_wrong)])
        images = np.stack([load_image(examples.paths[i], image_size=settings.image_size, resize=settings.resize,
                                      background=settings.background) for i in order])
        plot_predictions(images, [predicted[i] for i in order], root / "predictions.png",
                         true=[true[i] for i in order], rows=2, columns=max(1, (len(order) + 1) // 2))
    write_report_page(root, class_names=class_names, history=history, evaluation=evaluation, examples=examples,
                      truth=truth, image_settings=image_settings, calibration=calibration, best=best, refit=refit,
                      skipped=skipped)
    write_text_atomic(root / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
