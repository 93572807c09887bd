"""Line plots written as PNG (spectra, robustness curves), with matplotlib's Agg canvas.

A `matplotlib.figure.Figure` is drawn on its own `FigureCanvasAgg`, without pyplot, so no global
backend or figure registry is touched (safe in trainers and tests, no display needed).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_FIGURE_SIZE_INCHES = (6.4, 4.8)
_DPI = 100
# (width, height) in pixels of every line plot.
LINE_PLOT_SIZE_PX = tuple(round(inches * _DPI) for inches in _FIGURE_SIZE_INCHES)


def save_line_plot(
    path: str | pathlib.Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
) -> pathlib.Path:
    """Writes one PNG (`LINE_PLOT_SIZE_PX` pixels) with one labelled line per curve and a legend.

    Args:
      path: PNG file to write; parent directories are created.
      curves: legend label -> (x, y), two 1-D arrays of the same length.
      xlabel: x-axis label.
      ylabel: y-axis label.
      title: plot title.
      logy: logarithmic y axis (non-positive values are then not drawn).

    Returns:
      The path written.
    """
    if not curves:
        raise ValueError("curves must contain at least one curve; got an empty mapping.")
    figure = Figure(figsize=_FIGURE_SIZE_INCHES, dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (x, y) in curves.items():
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(
                f"curves[{label!r}] must be (x, y) 1-D arrays of equal length; "
                f"got shapes {x.shape} and {y.shape}."
            )
        axes.plot(x, y, label=label)
    if logy:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path
