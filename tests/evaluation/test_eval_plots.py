"""The plots write PNGs of the intended size and return their figures."""

import matplotlib.image
import numpy as np
import torch
from matplotlib.figure import Figure

from frcnn.evaluation import plot_confusion_matrix, plot_pr_curves


def _png_shape(path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_pr_curves_png(tmp_path):
    recall = np.linspace(0, 1, 101)
    curves = {"cat": (recall, 1 - recall), "dog": (recall, np.ones(101))}
    figure = plot_pr_curves(curves, tmp_path / "pr.png")
    assert isinstance(figure, Figure)
    assert _png_shape(tmp_path / "pr.png") == (600, 700, 4)  # 7 x 6 inches at 100 dpi
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["dog (1.000)", "cat (0.500)"]  # best AP first


def test_confusion_matrix_png(tmp_path):
    matrix = torch.tensor([[0, 2, 1], [1, 5, 0], [0, 1, 3]])
    figure = plot_confusion_matrix(matrix, ["cat", "dog"], tmp_path / "sub" / "confusion.png")
    assert _png_shape(tmp_path / "sub" / "confusion.png") == (500, 500, 4)
    colours = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(colours[1], [1 / 6, 5 / 6, 0])  # rows normalised
    cell_texts = sorted(text.get_text() for text in figure.axes[0].texts)
    assert cell_texts == sorted(["2", "1", "1", "5", "1", "3"])
