"""Tests for the classification ResNet: shapes, parameter counts, insertions, conv factories,
cross-device BatchNorm."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.inspect import block_apply
from noise_research.models import ResidualBlock, ResNet, resnet_places
from noise_research.registry import get_block


def _abstract_init_with_output(model: ResNet, shape: tuple[int, ...], train: bool = False):
    """(logits, variables) of `model.init_with_output` as shapes only (no compute)."""
    images = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(
        functools.partial(model.init_with_output, train=train), jax.random.key(0), images
    )


def _random_variables(model: ResNet, shape: tuple[int, ...], seed: int = 0):
    """Variables of `model` with every parameter drawn from N(0, 0.5²) by numpy and BatchNorm
    statistics (0, 1): structure from an abstract init, values without jax.random, whose
    initialisers take seconds to compile per parameter shape on CPU."""
    abstract = _abstract_init_with_output(model, shape)[1]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), jnp.float32),
        abstract["params"],
    )
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.full(leaf.shape, 1.0 if path[-1].key == "var" else 0.0),
        abstract["batch_stats"],
    )
    return {"params": params, "batch_stats": batch_stats}


def _parameter_count(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("depth", [10, 18, 34, 50, 101])
@pytest.mark.parametrize(("stem", "image_side"), [("imagenet", 32), ("small", 8)])
def test_logits_have_shape_batch_by_classes_for_every_depth_and_stem(depth, stem, image_side):
    model = ResNet(depth=depth, num_classes=7, stem=stem, width=4)
    logits, variables = _abstract_init_with_output(model, (3, image_side, image_side, 3))
    chex.assert_shape(logits, (3, 7))
    assert logits.dtype == jnp.float32
    assert set(variables) == {"params", "batch_stats"}
    final_channels = 4 * 8 * (4 if depth >= 50 else 1)
    chex.assert_shape(variables["params"]["classifier"]["kernel"], (final_channels, 7))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = ResNet(depth=50, num_classes=10, stem="small", width=2, dtype=jnp.bfloat16)
    logits, variables = _abstract_init_with_output(model, (2, 8, 8, 3))
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize(("depth", "expected"), [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_parameter_counts_equal_the_reference_models(depth, expected):
    model = ResNet(depth=depth, num_classes=1000)
    _, variables = _abstract_init_with_output(model, (1, 224, 224, 3))
    assert _parameter_count(variables["params"]) == expected


def test_resnet_places_of_resnet18_in_data_order():
    places = resnet_places(18)
    assert places[:4] == ["stem", "stage1.block1", "stage1.block1.last_subblock", "stage1.block2"]
    assert places[-4:] == ["stage4.block2", "stage4.block2.last_subblock", "stage4", "features"]
    assert len(places) == 1 + 4 * (2 * 2 + 1) + 1
    assert len(resnet_places(101)) == 1 + 2 * (3 + 4 + 23 + 3) + 4 + 1


def recording_scale_class(records: list) -> type[nn.Module]:
    """An insertion class that appends (place, input shape, train) to `records` and returns
    x · scale (a ones-initialised parameter). `records` is closed over: flax would freeze a list
    field into a tuple."""

    class RecordingScale(nn.Module):
        place: str

        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            records.append((self.place, x.shape, train))
            return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))

    return RecordingScale


def _expected_resnet18_insertion_shapes(batch: int, side: int, width: int) -> dict:
    """Input shape at every resnet18 place, small stem: stage s has width·2^(s−1) channels and
    side / 2^(s−1); a stage's first block input has the previous stage's shape."""
    shapes = {"stem": (batch, side, side, width)}
    previous = shapes["stem"]
    for stage in range(1, 5):
        stage_shape = (
            batch,
            side // 2 ** (stage - 1),
            side // 2 ** (stage - 1),
            width * 2 ** (stage - 1),
        )
        shapes[f"stage{stage}.block1"] = previous
        shapes[f"stage{stage}.block1.last_subblock"] = stage_shape
        shapes[f"stage{stage}.block2"] = stage_shape
        shapes[f"stage{stage}.block2.last_subblock"] = stage_shape
        shapes[f"stage{stage}"] = previous = stage_shape
    shapes["features"] = (batch, width * 8)
    return shapes


@pytest.mark.parametrize("train", [True, False])
def test_insertion_at_every_resnet18_place_sees_the_right_shape(train):
    records = []
    recording_scale = recording_scale_class(records)
    insertions = {
        place: functools.partial(recording_scale, place=place) for place in resnet_places(18)
    }
    model = ResNet(depth=18, num_classes=5, stem="small", width=4, insertions=insertions)
    _, variables = _abstract_init_with_output(model, (2, 16, 16, 3), train=train)
    expected = _expected_resnet18_insertion_shapes(2, 16, 4)
    assert {place: (shape, flag) for place, shape, flag in records} == {
        place: (shape, train) for place, shape in expected.items()
    }
    assert [place for place, _, _ in records] == resnet_places(18)  # each once, in data order
    params = variables["params"]
    chex.assert_shape(params["insertion_stem"]["scale"], (4,))
    chex.assert_shape(params["insertion_stage2_block1"]["scale"], (4,))
    chex.assert_shape(params["stage4_block2"]["insertion_last_subblock"]["scale"], (32,))
    chex.assert_shape(params["insertion_features"]["scale"], (32,))


class Zeroing(nn.Module):
    """An insertion that outputs zeros."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return jnp.zeros_like(x)


def test_insertion_output_replaces_the_features():
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    plain = ResNet(depth=18, num_classes=3, stem="small", width=2)
    zeroed = plain.clone(insertions={"features": Zeroing})
    variables = _random_variables(plain, images.shape)
    zeroed_logits = zeroed.apply(variables, images, train=False)
    bias = variables["params"]["classifier"]["bias"]
    np.testing.assert_allclose(zeroed_logits, np.broadcast_to(bias, (2, 3)), rtol=1e-6)
    assert not np.allclose(plain.apply(variables, images, train=False), zeroed_logits)


class SowingPositions(nn.Module):
    """An insertion that takes positions: sows them as 'intermediates'/'positions' (None as -1)
    and returns x unchanged."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, positions: jax.Array | None = None):
        self.sow("intermediates", "positions", jnp.full(1, -1) if positions is None else positions)
        return x


def sown_positions(intermediates) -> dict[str, np.ndarray]:
    """{module path: the positions it sowed} of an 'intermediates' tree."""
    return {
        jax.tree_util.keystr(path[:-2]): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
        if path[-2].key == "positions"
    }


def test_positions_reach_the_insertions_that_take_them_and_only_those():
    """`positions` goes to the insertions whose __call__ declares it (the last sub-block's
    included); others (`Zeroing`) are called as before; without positions nobody gets any."""
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    positions = jnp.array([7, 3, 11])
    takes = ("stem", "stage4.block1.last_subblock", "features")
    insertions = {place: SowingPositions for place in takes} | {"stage2.block1": Zeroing}
    model = ResNet(depth=10, num_classes=3, stem="small", width=2, insertions=insertions)
    variables = _random_variables(model.clone(insertions={}), images.shape)
    for given, expected in ((positions, np.array([7, 3, 11])), (None, np.array([-1]))):
        _, sown = model.apply(
            variables, images, train=False, positions=given, mutable=["intermediates"]
        )
        received = sown_positions(sown["intermediates"])
        assert set(received) == {
            "['insertion_stem']",
            "['stage4_block1']['insertion_last_subblock']",
            "['insertion_features']",
        }
        for place, value in received.items():
            np.testing.assert_array_equal(value, expected, err_msg=place)


def test_bad_place_names_and_fields_raise_value_errors():
    with pytest.raises(ValueError, match=r"unknown place names \['stage5'\].*'stage4.block2'"):
        ResNet(depth=18, num_classes=10, insertions={"stage5": Zeroing})
    with pytest.raises(ValueError, match=r"\['stage1.block3'\] for depth=18"):
        ResNet(depth=18, num_classes=10, insertions={"stage1.block3": Zeroing})
    ResNet(depth=34, num_classes=10, insertions={"stage1.block3": Zeroing})  # valid at 34
    with pytest.raises(ValueError, match=r"depth=20 is not supported"):
        ResNet(depth=20, num_classes=10)
    with pytest.raises(ValueError, match=r"stem='cifar'"):
        ResNet(depth=18, num_classes=10, stem="cifar")
    with pytest.raises(ValueError, match=r"num_classes=0"):
        ResNet(depth=18, num_classes=0)


@pytest.mark.parametrize(("depth", "expected_3x3", "expected_1x1"), [(18, 16, 3), (50, 16, 36)])
def test_conv_factories_build_every_stage_3x3_and_1x1_conv_and_nothing_else(
    depth, expected_3x3, expected_1x1
):
    calls = []

    def recording_factory(tag):
        def factory(features, kernel_size, **kwargs):
            calls.append((tag, tuple(kernel_size), kwargs["use_bias"]))
            return nn.Conv(features, kernel_size, **kwargs)

        return factory

    model = ResNet(
        depth=depth,
        num_classes=10,
        conv3x3=recording_factory("conv3x3"),
        conv1x1=recording_factory("conv1x1"),
    )
    _, variables = _abstract_init_with_output(model, (1, 32, 32, 3))
    assert calls.count(("conv3x3", (3, 3), False)) == expected_3x3
    assert calls.count(("conv1x1", (1, 1), False)) == expected_1x1
    assert len(calls) == expected_3x3 + expected_1x1
    conv_kernels = [leaf for leaf in jax.tree.leaves(variables["params"]) if leaf.ndim == 4]
    assert len(conv_kernels) == len(calls) + 1  # + the plain 7×7 stem conv
    chex.assert_shape(variables["params"]["stem_conv"]["kernel"], (7, 7, 3, 64))


@pytest.mark.parametrize(("bottleneck", "last_norm"), [(False, "bn2"), (True, "bn3")])
def test_last_batch_norm_of_each_branch_starts_at_zero_scale(bottleneck, last_norm):
    # Zero conv kernels: the test is about the BatchNorm scales (and skips compiling initialisers).
    zero_conv = functools.partial(nn.Conv, kernel_init=nn.initializers.zeros)
    block = ResidualBlock(
        features=2, strides=2, bottleneck=bottleneck, conv3x3=zero_conv, conv1x1=zero_conv
    )
    inputs = jnp.ones((1, 4, 4, 3))
    variables = block.init(jax.random.key(0), inputs, train=False)
    params = variables["params"]
    np.testing.assert_array_equal(params[last_norm]["scale"], 0.0)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["shortcut_bn"]["scale"], 1.0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_registered_blocks_trace_in_evaluation_mode(name):
    """The registered block is its ResNet in evaluation mode: it traces without a mutable
    'batch_stats' (training mode would update them) and maps any requested input shape to
    (batch, num_classes) logits."""
    module, example_input, _ = get_block(name)(None)
    num_classes = module.resnet.num_classes
    assert module.resnet.depth == int(name.removeprefix("resnet"))
    for shape in (None, (3, 16, 16, 3)):
        apply, (variables, inputs, rngs) = block_apply(name, shape)
        assert inputs.shape == (shape or example_input.shape)
        assert set(variables) == {"params", "batch_stats"}
        logits = jax.eval_shape(apply, variables, inputs, rngs)
        chex.assert_shape(logits, (inputs.shape[0], num_classes))
    # The same ResNet in training mode cannot be applied like that: it updates 'batch_stats'.
    resnet_variables = {collection: tree["resnet"] for collection, tree in variables.items()}
    with pytest.raises(flax.errors.ModifyScopeVariableError, match="batch_stats"):
        jax.eval_shape(functools.partial(module.resnet.apply, train=True), resnet_variables, inputs)


@pytest.mark.multidevice
def test_batch_norm_axis_name_under_pmap_uses_global_batch_statistics():
    device_count = jax.device_count()
    assert device_count == 8
    images = jax.random.normal(jax.random.key(1), (2 * device_count, 8, 8, 3))
    single = ResNet(depth=18, num_classes=4, stem="small", width=2)
    variables = _random_variables(single, images.shape)

    def per_device_apply(model, variables, images):
        return model.apply(variables, images, train=True, mutable=["batch_stats"])

    global_logits, global_state = jax.jit(functools.partial(per_device_apply, single))(
        variables, images
    )

    sharded_images = images.reshape(device_count, 2, 8, 8, 3)
    cross_device = single.clone(batch_norm_axis_name="batch")
    logits, state = jax.pmap(
        functools.partial(per_device_apply, cross_device), axis_name="batch", in_axes=(None, 0)
    )(variables, sharded_images)
    np.testing.assert_allclose(logits.reshape(global_logits.shape), global_logits, atol=1e-4)
    for device_stats in [jax.tree.map(lambda leaf, d=d: leaf[d], state) for d in (0, 7)]:
        chex.assert_trees_all_close(device_stats, global_state, atol=1e-5)

    # Without the axis name each device normalises with its own 2 examples: different logits.
    local_logits, _ = jax.pmap(
        functools.partial(per_device_apply, single), axis_name="batch", in_axes=(None, 0)
    )(variables, sharded_images)
    assert not np.allclose(local_logits.reshape(global_logits.shape), global_logits, atol=1e-2)
