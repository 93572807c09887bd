"""The flatness probe: `metrics.flatness.flatness_profile` and `inspect --flatness` (issue 14)."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from noise_research import inspect
from noise_research.layers.nib import NoiseIncentiveBlock
from noise_research.metrics.flatness import flatness_profile
from noise_research.models.halftone import HalftoneResNet

LEVELS = (0.1, 0.5, 0.9)
FLAT = 1e-5  # float32 rounding of O(1) activations is ~1e-7
NON_FLAT = 1e-3


class PlainStack(nn.Module):
    """Three 3×3 'SAME' convs with ReLU: the plain CNN of the paper's section 1."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index in range(3):
            x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name=f"conv{index}")(x))
        return x


def _profile(module, shape, margin=None, rngs=None, levels=LEVELS):
    variables = module.init({"params": jax.random.key(0), **(rngs or {})}, jnp.zeros(shape))
    return flatness_profile(module, variables, shape, levels, margin, rngs)


def _max_stds(profile):
    return {name: entry.max_std for name, entry in profile.items()}


def test_a_plain_conv_stack_is_exactly_flat_away_from_the_border_at_every_level():
    profile = _profile(PlainStack(), (2, 16, 16, 1))
    assert list(profile) == ["conv0", "conv1", "conv2", "output"]
    # the measured receptive-field growth: one pixel per 3×3 conv
    assert [entry.margin for entry in profile.values()] == [1, 2, 3, 3]
    assert {entry.margin_source for entry in profile.values()} == {"reach"}
    for name, entry in profile.items():
        assert entry.shape == (2, 16, 16, 8)
        assert len(entry.stds) == len(LEVELS)
        assert all(std <= FLAT for std in entry.stds), (name, entry.stds)


def test_a_plain_conv_stack_is_not_flat_at_the_border():
    whole_map = _profile(PlainStack(), (2, 16, 16, 1), margin=0)
    for name, entry in whole_map.items():
        assert entry.margin == 0 and entry.margin_source == "given"
        assert all(std > NON_FLAT for std in entry.stds), (name, entry.stds)
    # a fixed one-pixel crop clears the first conv's border only: it grows inwards layer by layer
    one_pixel = _max_stds(_profile(PlainStack(), (2, 16, 16, 1), margin=1))
    assert one_pixel["conv0"] <= FLAT and one_pixel["conv1"] > NON_FLAT


def test_a_layer_without_interior_gets_nan():
    profile = _profile(PlainStack(), (1, 6, 6, 1))  # conv2 crops 3 of 6 pixels on each side
    assert profile["conv1"].margin == 2 and profile["conv1"].max_std <= FLAT
    assert all(math.isnan(std) for std in profile["conv2"].stds)
    assert math.isnan(profile["conv2"].max_std)


def test_the_plain_halftoner_is_flat_and_the_nib_first_layer_is_not():
    shape = (1, 24, 24, 1)
    plain_model = HalftoneResNet(width=8, num_blocks=1, first_layer="conv")
    plain = _profile(plain_model, shape, levels=(-0.8, 0.0, 0.8))
    names = list(plain)
    assert names[0] == "first_conv" and names[-1] == "output"
    assert all(std <= FLAT for std in _max_stds(plain).values()), _max_stds(plain)
    # the output's margin is the model's receptive-field radius
    assert plain["output"].margin == (plain_model.receptive_field - 1) // 2 == 4

    nib = _profile(HalftoneResNet(width=8, num_blocks=1, first_layer="nib"), shape)
    names = list(nib)
    assert names.index("nib/noise_map") < names.index("nib/fused_conv") < names.index("output")
    assert nib["nib/noise_map"].margin_source == "quarter" and nib["nib/noise_map"].margin == 6
    assert nib["nib/fused_conv"].margin == 1
    assert all(std > NON_FLAT for std in nib["nib/fused_conv"].stds)
    assert all(std > NON_FLAT for std in nib["output"].stds)  # successors inherit it


def test_dynamic_noise_uses_the_given_noise_key():
    block = NoiseIncentiveBlock(features=4, stationary=False)
    first, again, other = (
        _profile(block, (1, 8, 8, 1), rngs={"noise": jax.random.key(seed)}, levels=(0.5,))
        for seed in (3, 3, 4)
    )
    chex.assert_trees_all_equal(_max_stds(first), _max_stds(again))
    assert _max_stds(first)["fused_conv"] != _max_stds(other)["fused_conv"]
    assert _max_stds(first)["fused_conv"] > NON_FLAT


def _table(printed: str) -> dict[str, list[str]]:
    """The printed table: layer -> its cells after the name (shape, margin, levels…, max)."""
    rows = [line.split() for line in printed.splitlines() if line and not line.startswith("#")]
    assert rows[0][:3] == ["layer", "shape", "margin"] and rows[0][-1] == "max"
    return {row[0]: row[1:] for row in rows[1:]}


SHAPE = "1,48,48,1"  # the 10-block ResNet's output reaches 22 pixels: a 4×4 interior is left


def test_cli_prints_the_table_of_the_plain_halftoner_flat_in_every_layer_and_writes_the_png(
    tmp_path, capsys
):
    out = tmp_path / "plots" / "plain.png"
    argv = ["--flatness", "halftone_resnet_plain", "--shape", SHAPE, "--levels=-0.5,0.5"]
    assert inspect.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "# flatness of halftone_resnet_plain: constant inputs (1, 48, 48, 1) at levels -0.5, 0.5"
    )
    table = _table(printed)
    assert next(iter(table)) == "first_conv" and len(table) == 23  # 22 convs and the output
    assert {"block9_conv2", "output_conv", "output"} <= set(table)
    assert table["first_conv"][:2] == ["1x48x48x64", "1"]
    assert table["output"][:2] == ["1x48x48x1", "22"]  # the receptive-field radius
    assert all(float(cells[-1]) <= FLAT for cells in table.values()), table
    assert f"# wrote {out}" in printed
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_nib_rows_na_where_no_interior_is_left_and_the_png_written_here(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert inspect.main(["--flatness", "nib", "--shape", "1,3,3,1"]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == ["noise_map", "fused_conv", "output"]
    assert table["noise_map"][1] == "0*" and float(table["noise_map"][-1]) > NON_FLAT
    assert table["fused_conv"][1:] == ["1", *["n/a"] * 6]  # margin 1 of 3 pixels: 1 left
    assert (tmp_path / "flatness_nib.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nib_typo"], "unknown block 'nib_typo'; known blocks:"),
        (["nib", "--levels", "0.1,x"], "--levels='0.1,x' must be comma-separated numbers"),
        (["nib", "--margin", "-1"], "--margin='-1' must be 'auto' or an integer >= 0"),
        (["nib", "--shape", "1,0,8,1"], "--shape='1,0,8,1' must be comma-separated positive"),
    ],
)
def test_cli_bad_arguments_give_one_clear_line(argv, message, tmp_path, capsys):
    assert inspect.main(["--flatness", *argv, "--out", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert captured.out == "" and not (tmp_path / "x.png").exists()
