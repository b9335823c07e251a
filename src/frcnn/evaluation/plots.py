"""Validation plots: per-class precision-recall curves and the confusion matrix. (Images with their
boxes are drawn by ``frcnn.app.draw``, one path for PNGs, TensorBoard and W&B.)

Each function builds a `matplotlib.figure.Figure` without pyplot (no global state, no display: the
Agg canvas), writes a PNG when given a path, and returns the figure so a logger (W&B, TensorBoard)
can take it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)


def plot_pr_curves(
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path | None = None,
    title: str = "precision-recall at IoU 0.5",
    max_legend: int = 20,
) -> Figure:
    """{class name: (recall (R,), precision (R,))} (e.g. `COCOResult.pr_curves()`) -> one figure.

    The legend lists the classes with their AP (mean precision over the recall thresholds), best
    first, at most `max_legend` of them.
    """
    figure = _new_figure(7, 6)
    axes = figure.add_subplot()
    ranked = sorted(pr_curves.items(), key=lambda item: -float(np.mean(item[1][1])))
    for rank, (name, (recall, precision)) in enumerate(ranked):
        label = f"{name} ({np.mean(precision):.3f})" if rank < max_legend else None
        axes.plot(recall, precision, linewidth=1.0, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.grid(alpha=0.3)
    if ranked:
        axes.legend(fontsize="small", loc="lower left")
    figure.tight_layout()
    _save(figure, path)
    return figure


def plot_confusion_matrix(
    matrix: Tensor | np.ndarray,
    class_names: list[str],
    path: str | Path | None = None,
    normalize: bool = True,
) -> Figure:
    """(K + 1, K + 1) `[true, predicted]` counts, index 0 = background (`confusion_matrix`) -> figure.

    normalize: colour each row by its fraction (what became of the boxes of a class); the cells show
    the raw counts either way.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    names = ["background", *class_names]
    colours = counts.astype(np.float64)
    if normalize:
        colours = colours / np.maximum(colours.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(names) + 2)
    figure = _new_figure(size, size)
    axes = figure.add_subplot()
    image = axes.imshow(colours, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names, rotation=90, fontsize="small")
    axes.set_yticks(ticks, names, fontsize="small")
    axes.set(xlabel="predicted", ylabel="ground truth", title="confusion matrix")
    if len(names) <= 30:
        threshold = colours.max() / 2 if colours.size else 0
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if colours[row, column] > threshold else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize="x-small", color=colour)
    figure.tight_layout()
    _save(figure, path)
    return figure
