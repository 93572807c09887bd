"""Tests for the picture writers (noise_research/viz)."""

import numpy as np
import pytest
from PIL import Image

from noise_research.viz import save_image_grid, save_line_plot
from noise_research.viz.images import GRID_PADDING_PX, TITLE_HEIGHT_PX
from noise_research.viz.plots import LINE_PLOT_SIZE_PX, line_plot_grid, method_colors


def test_image_grid_is_a_png_at_native_resolution(tmp_path):
    halftone = np.where(np.random.default_rng(0).uniform(size=(12, 10)) < 0.5, 1.0, -1.0)
    rgb = np.random.default_rng(1).uniform(-1, 1, size=(8, 16, 3))
    gray = np.zeros((12, 10, 1))
    path = save_image_grid(
        tmp_path / "nested" / "dir" / "grid.png", [halftone, rgb, gray], titles=None, ncols=2
    )
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png.convert("RGB"))
    # 2 columns, 2 rows; cells as large as the largest image (12 × 16).
    assert pixels.shape == (
        2 * (12 + GRID_PADDING_PX) + GRID_PADDING_PX,
        2 * (16 + GRID_PADDING_PX) + GRID_PADDING_PX,
        3,
    )
    # The halftone is copied exactly: -1 -> 0, +1 -> 255, same value on the three channels.
    pad = GRID_PADDING_PX
    cell = pixels[pad : pad + 12, pad : pad + 10]
    np.testing.assert_array_equal(cell[..., 0], np.where(halftone > 0, 255, 0))
    np.testing.assert_array_equal(cell[..., 0], cell[..., 2])
    # Mid-gray 0 -> 128 (third image, second row, first column).
    top = 2 * pad + 12
    np.testing.assert_array_equal(pixels[top : top + 12, pad : pad + 10], 128)


def test_image_grid_with_titles_adds_a_title_band(tmp_path):
    images = [np.full((20, 20), value) for value in (-1.0, 0.0, 1.0)]
    path = save_image_grid(
        tmp_path / "titled.png", images, titles=["black", "gray", "a very long title"], ncols=5
    )
    with Image.open(path) as png:
        assert png.size == (
            3 * (20 + GRID_PADDING_PX) + GRID_PADDING_PX,
            20 + TITLE_HEIGHT_PX + 2 * GRID_PADDING_PX,
        )
        pixels = np.asarray(png.convert("L"))
    image_top = GRID_PADDING_PX + TITLE_HEIGHT_PX
    assert np.all(pixels[image_top : image_top + 20, GRID_PADDING_PX : GRID_PADDING_PX + 20] == 0)
    title_band = pixels[GRID_PADDING_PX:image_top, GRID_PADDING_PX : GRID_PADDING_PX + 20]
    assert title_band.min() < 128  # some dark title text was drawn


def test_image_grid_value_range_and_bad_arguments(tmp_path):
    path = save_image_grid(tmp_path / "u8.png", [np.full((4, 4), 255.0)], value_range=(0, 255))
    with Image.open(path) as png:
        assert np.asarray(png.convert("L"))[GRID_PADDING_PX, GRID_PADDING_PX] == 255
    with pytest.raises(ValueError, match="titles"):
        save_image_grid(tmp_path / "x.png", [np.zeros((4, 4))], titles=["a", "b"])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        save_image_grid(tmp_path / "x.png", [np.zeros((1, 4, 4, 1))])
    with pytest.raises(ValueError, match="ncols"):
        save_image_grid(tmp_path / "x.png", [np.zeros((4, 4))], ncols=0)


def _colored_pixel_count(path) -> int:
    """Pixels of a saturated colour (the curves); axes, text and grid are black or gray."""
    with Image.open(path) as png:
        rgb = np.asarray(png.convert("RGB"), dtype=np.int64)
    return int(np.count_nonzero(rgb.max(axis=-1) - rgb.min(axis=-1) > 80))


@pytest.mark.parametrize("logy", [False, True])
def test_line_plot_draws_each_curve_on_a_png_of_the_documented_size(tmp_path, logy):
    freqs = np.linspace(0.01, 0.5, 32)
    curves = {"white noise": (freqs, np.ones_like(freqs)), "blue noise": (freqs, freqs**2 + 1e-3)}
    paths = {}
    for count in (1, 2):
        paths[count] = save_line_plot(
            tmp_path / "plots" / f"raps_{logy}_{count}.png",
            dict(list(curves.items())[:count]),
            xlabel="frequency (cycles/pixel)",
            ylabel="power",
            title="RAPS" if count == 1 else "a much longer title " * 3,
            logy=logy,
        )
    for path in paths.values():
        with Image.open(path) as png:
            assert png.format == "PNG"
            # The advertised size, whatever the content (no tight bounding box).
            assert png.size == LINE_PLOT_SIZE_PX
    one_curve = _colored_pixel_count(paths[1])
    assert one_curve > 200, one_curve  # the curve was drawn
    assert _colored_pixel_count(paths[2]) > one_curve + 200  # and so was the second one


def test_line_plot_rejects_mismatched_curve(tmp_path):
    with pytest.raises(ValueError, match="bad"):
        save_line_plot(tmp_path / "x.png", {"bad": (np.arange(3), np.arange(4))}, "x", "y", "t")


def test_a_method_keeps_its_colour_in_every_panel():
    methods = ["network", "floyd_steinberg", "ordered", "ostromoukhov"]
    x = np.linspace(0.0, 0.5, 20)
    panels = {
        f"g = {g}": {m: (x, (i + 1) * g + x) for i, m in enumerate(methods)} for g in (1, 2, 3)
    }
    colors = method_colors(methods)
    figure = line_plot_grid(panels, "f", "power", ncols=3, logy=True, colors=colors)
    assert len(figure.axes) == 3
    for axes in figure.axes:
        drawn = {line.get_label(): line.get_color() for line in axes.get_lines()}
        assert drawn == colors
    assert len(set(colors.values())) == len(methods)
    with pytest.raises(ValueError, match="at most 10 labels"):
        method_colors([f"m{i}" for i in range(11)])
