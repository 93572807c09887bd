"""Line plots written as PNG (spectra, robustness curves), with matplotlib's Agg canvas.

A `matplotlib.figure.Figure` is drawn on its own `FigureCanvasAgg`, without pyplot, so no global
backend or figure registry is touched (safe in trainers and tests, no display needed).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

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
    colors: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Writes one PNG (`LINE_PLOT_SIZE_PX` pixels) with one labelled line per curve and a legend.

    Args:
      path: PNG file to write; parent directories are created.
      curves: legend label -> (x, y), two 1-D arrays of the same length.
      xlabel: x-axis label.
      ylabel: y-axis label.
      title: plot title.
      logy: logarithmic y axis (non-positive values are then not drawn).
      colors: legend label -> matplotlib colour, for labels that must keep one colour across
        figures (see `method_colors`); others take the next colour of the cycle.

    Returns:
      The path written.
    """
    figure = Figure(figsize=_FIGURE_SIZE_INCHES, dpi=_DPI)
    FigureCanvasAgg(figure)
    _draw_curves(figure.add_subplot(), curves, xlabel, ylabel, title, logy, colors)
    figure.tight_layout()

    return _save(figure, path)


def save_line_plot_grid(
    path: str | pathlib.Path,
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    xlabel: str,
    ylabel: str,
    ncols: int = 4,
    logy: bool = False,
    colors: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Writes one PNG with a grid of line plots: panel title -> its curves (as `save_line_plot`)."""
    return _save(line_plot_grid(panels, xlabel, ylabel, ncols, logy, colors), path)


def line_plot_grid(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    xlabel: str,
    ylabel: str,
    ncols: int = 4,
    logy: bool = False,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """The figure of `save_line_plot_grid`: ``ncols`` panels a row, 3.2 × 2.6 inches each."""
    if not panels:
        raise ValueError("panels must contain at least one panel; got an empty mapping.")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(3.2 * ncols, 2.6 * nrows), dpi=_DPI)
    FigureCanvasAgg(figure)
    for index, (title, curves) in enumerate(panels.items()):
        axes = figure.add_subplot(nrows, ncols, index + 1)
        _draw_curves(axes, curves, xlabel, ylabel, title, logy, colors)
    figure.tight_layout()
    return figure


def method_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per label, distinct for up to 10 labels (matplotlib's 'tab10' cycle, 'C0'…),
    for labels drawn in several figures or panels: a method keeps its colour in all of them."""
    if len(labels) > 10:
        raise ValueError(f"at most 10 labels get distinct colours; got {len(labels)}.")
    return {label: f"C{index}" for index, label in enumerate(labels)}


def _draw_curves(
    axes,
    curves,
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool,
    colors: Mapping[str, str] | None = None,
) -> None:
    if not curves:
        raise ValueError("curves must contain at least one curve; got an empty mapping.")
    for label, (x, y) in curves.items():
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(
                f"curves[{label!r}] must be (x, y) 1-D arrays of equal length; "
                f"got shapes {x.shape} and {y.shape}."
            )
        color = (colors or {}).get(label)
        axes.plot(x, y, label=label, marker="o" if len(x) < 10 else None, color=color)
    if logy:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")


def _save(figure: Figure, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path
