"""Pictures shared by every trainer: image grids and line plots as PNG files."""

from noise_research.viz.images import save_image_grid
from noise_research.viz.plots import method_colors, save_line_plot, save_line_plot_grid

__all__ = ["method_colors", "save_image_grid", "save_line_plot", "save_line_plot_grid"]
