"""`python -m noise_research.inspect` and the block registry."""

import pytest

from noise_research import inspect
from noise_research.registry import block_names, get_block, register_block

EXPECTED_BLOCKS = {
    "nib",
    "nib_impulse",
    "nib_feature",
    "nib_grid",
    "nib_dynamic",
    "halftone_resnet",
    "halftone_unet",
}


def test_importing_inspect_registers_every_layer_family():
    assert set(block_names()) >= EXPECTED_BLOCKS


@pytest.mark.parametrize("name", block_names())
def test_inspect_prints_the_jaxpr_of_every_registered_block_at_its_default_shape(name, capsys):
    assert inspect.main([name]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"# jaxpr of {name} apply") and "{ lambda ; " in printed


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_inspect_prints_the_jaxpr_of_every_nib_block_at_a_small_shape(name, capsys):
    assert inspect.main([name, "--shape", "2,16,16,1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"# jaxpr of {name} apply")
    assert "{ lambda ; " in printed and "conv_general_dilated" in printed
    assert "f32[2,16,16,1]" in printed  # traced at the requested shape
    if name in ("nib_dynamic", "nib_impulse", "nib_feature"):
        assert "key<fry>[]" in printed  # the 'noise' rng key is an input of apply
    assert "StableHLO" not in printed


def test_inspect_hlo_prints_stablehlo(capsys):
    assert inspect.main(["nib", "--shape", "1,8,8,1", "--hlo"]) == 0
    printed = capsys.readouterr().out
    jaxpr_part, hlo_part = printed.split("# StableHLO of nib apply")
    assert "{ lambda ; " in jaxpr_part
    assert "func.func public @main" in hlo_part and "stablehlo.convolution" in hlo_part
    assert "tensor<2xui32>" in hlo_part  # the stationary noise key travels as plain uint32 data


@pytest.mark.parametrize("name", ["nib_grid", "halftone_resnet"])
def test_inspect_without_shape_traces_the_blocks_own_example_input(name, capsys):
    """No --shape: the block is traced at the example input its registry factory gives, i.e.
    exactly what --shape with that shape prints."""
    default_shape = tuple(get_block(name)(None)[1].shape)
    assert inspect.main([name]) == 0
    printed = capsys.readouterr().out
    assert f"f32[{','.join(map(str, default_shape))}]" in printed
    assert inspect.main([name, "--shape", ",".join(map(str, default_shape))]) == 0
    assert capsys.readouterr().out == printed


def test_inspect_list_prints_every_registered_name(capsys):
    assert inspect.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(block_names())


def test_unknown_block_lists_the_known_ones(capsys):
    assert inspect.main(["nib_typo"]) == 2
    error = capsys.readouterr().err
    assert "unknown block 'nib_typo'" in error and "halftone_unet" in error and "nib_grid" in error
    with pytest.raises(ValueError, match=r"known blocks: .*nib_dynamic"):
        get_block("nib_typo")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("1,x,8,1", "--shape='1,x,8,1' must be comma-separated positive integers"),
        ("1,0,8,1", "--shape='1,0,8,1' must be comma-separated positive integers"),
        ("1,8,8", "rank 3"),
        ("1,20,20,1", "divisible by 2**levels = 16"),
    ],
)
def test_bad_shape_gives_one_clear_line(shape, message, capsys):
    block = "halftone_unet" if shape == "1,20,20,1" else "nib"
    assert inspect.main([block, "--shape", shape]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_register_block_refuses_a_taken_name():
    with pytest.raises(ValueError, match="name='nib' is already registered"):
        register_block("nib", get_block("nib"))


@pytest.mark.parametrize(
    ("plain", "nib"),
    [("halftone_resnet_plain", "halftone_resnet"), ("halftone_unet_plain", "halftone_unet")],
)
def test_the_plain_halftoning_twins_differ_from_the_registered_models_only_in_the_first_layer(
    plain, nib
):
    plain_module, plain_input, plain_rngs = get_block(plain)(None)
    nib_module, nib_input, nib_rngs = get_block(nib)(None)
    assert (plain_module.first_layer, nib_module.first_layer) == ("conv", "nib")
    assert plain_module.clone(first_layer="nib") == nib_module
    assert plain_input.shape == nib_input.shape and plain_rngs == nib_rngs == ()


def test_help_documents_the_flatness_probe(capsys):
    with pytest.raises(SystemExit):
        inspect.main(["--help"])
    printed = capsys.readouterr().out
    for option in ("--flatness", "--levels", "--margin", "--out"):
        assert option in printed
    assert "--flatness" in inspect.__doc__ and "receptive-field growth" in inspect.__doc__
