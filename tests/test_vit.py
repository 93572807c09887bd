"""Tests for the Vision Transformer: shapes, parameter counts, insertions, permutation symmetry,
dropout, the inspect registration, and learning a small batch of digits."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from noise_research import inspect
from noise_research.inspect import block_apply
from noise_research.models.vit import VIT_SIZES, EncoderBlock, ViT, vit_places
from noise_research.registry import get_block
from tests.test_resnet import (
    SowingPositions,
    _abstract_init_with_output,
    _parameter_count,
    recording_scale_class,
    sown_positions,
)

TINY = VIT_SIZES["tiny"]


def _random_params(module: nn.Module, *example_args, seed: int = 0, **example_kwargs):
    """Params of `module` drawn from N(0, 0.2²) by numpy: structure from an abstract init,
    values without jax.random, whose initialisers take seconds to compile on CPU. (The real
    initialisers put zeros in the classifier, which would hide what the logits depend on.)"""
    abstract = jax.eval_shape(
        functools.partial(module.init, **example_kwargs), jax.random.key(0), *example_args
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), jnp.float32),
        abstract["params"],
    )


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _apply(model: ViT, variables, images: jax.Array, train: bool = False, rngs=None) -> jax.Array:
    """`model.apply(variables, images, train=train, rngs=rngs)`, compiled (eager applies
    dispatch op by op, which costs seconds on CPU)."""
    return model.apply(variables, images, train=train, rngs=rngs)


def _formula_parameter_count(
    size: str, patch_size: int, image_side: int, channels: int, num_classes: int
) -> int:
    """The ViT parameter count from its architecture, D = width, M = mlp_dim, L = depth,
    N = (image_side / patch_size)² patches, K classes:

      patch embedding   P²·C·D + D        (conv kernel + bias)
      class token       D
      positions         (N + 1)·D         (one row per patch and one for the class token)
      each block        2D + (3D² + 3D) + (D² + D) + 2D + (D·M + M) + (M·D + D)
                        = 4D² + 2DM + 9D + M   (LN, qkv, attention out, LN, fc1, fc2)
      final LayerNorm   2D
      classifier        D·K + K

    ViT-B/16 at 224², K = 1000: 590,592 + 768 + 151,296 + 12·7,087,872 + 1,536 + 769,000
    = 86,567,656, timm's `vit_base_patch16_224`; Ti/16 gives 5,717,416, S/16 22,050,664 and
    L/16 304,326,632 (timm's tiny / small / large).
    """
    width, depth, _, mlp_dim = VIT_SIZES[size]
    num_patches = (image_side // patch_size) ** 2
    block = 4 * width**2 + 2 * width * mlp_dim + 9 * width + mlp_dim
    return (
        patch_size**2 * channels * width
        + width
        + width
        + (num_patches + 1) * width
        + depth * block
        + 2 * width
        + width * num_classes
        + num_classes
    )


@pytest.mark.parametrize("size", sorted(VIT_SIZES))
def test_logits_have_shape_batch_by_classes_and_params_are_float32_for_every_size(size):
    model = ViT(size=size, num_classes=7, patch_size=8)
    logits, variables = _abstract_init_with_output(model, (3, 32, 24, 3))
    chex.assert_shape(logits, (3, 7))
    assert logits.dtype == jnp.float32
    assert set(variables) == {"params"}
    width = VIT_SIZES[size].width
    params = variables["params"]
    chex.assert_shape(params["position_embedding"], (1, 1 + 4 * 3, width))
    chex.assert_shape(params["classifier"]["kernel"], (width, 7))
    assert f"block{VIT_SIZES[size].depth}" in params
    assert f"block{VIT_SIZES[size].depth + 1}" not in params
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = ViT(size="tiny", num_classes=10, patch_size=2, dtype=jnp.bfloat16)
    logits, variables = _abstract_init_with_output(model, (2, 8, 8, 1))
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize(
    ("size", "expected"),
    [("Ti", 5_717_416), ("S", 22_050_664), ("B", 86_567_656), ("L", 304_326_632)],
)
def test_imagenet_parameter_counts_equal_timm_and_the_formula(size, expected):
    assert _formula_parameter_count(size, 16, 224, 3, 1000) == expected
    _, variables = _abstract_init_with_output(ViT(size=size, num_classes=1000), (1, 224, 224, 3))
    assert _parameter_count(variables["params"]) == expected


def test_vit_places_in_data_order():
    assert vit_places(4) == ["embedding", "block1", "block2", "block3", "block4", "features"]
    assert len(vit_places(VIT_SIZES["L"].depth)) == 24 + 2
    for depth in (0, 2.0, True):
        with pytest.raises(ValueError, match="must be a positive integer"):
            vit_places(depth)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("insertion_tokens", "class_tokens"), [("patch", 0), ("all", 1)])
def test_insertion_at_every_place_sees_the_right_shape(train, insertion_tokens, class_tokens):
    records = []
    recording_scale = recording_scale_class(records)
    places = vit_places(TINY.depth)
    insertions = {place: functools.partial(recording_scale, place=place) for place in places}
    model = ViT(
        size="tiny",
        num_classes=5,
        patch_size=4,
        insertions=insertions,
        insertion_tokens=insertion_tokens,
    )
    _, variables = _abstract_init_with_output(model, (2, 16, 12, 3), train=train)
    token_shape = (2, class_tokens + 4 * 3, TINY.width)
    expected = {place: (token_shape, train) for place in places[:-1]}
    expected["features"] = ((2, TINY.width), train)
    assert {place: (shape, flag) for place, shape, flag in records} == expected
    assert [place for place, _, _ in records] == places  # each once, in data order
    params = variables["params"]
    chex.assert_shape(params["insertion_embedding"]["scale"], (TINY.width,))
    chex.assert_shape(params["insertion_block4"]["scale"], (TINY.width,))
    chex.assert_shape(params["insertion_features"]["scale"], (TINY.width,))


OFFSET = np.linspace(-2.0, 3.0, TINY.width, dtype=np.float32)
"""What `AddOffset` adds to each token: not one constant for all channels, which the
LayerNorms in front of every block and of the classifier would remove."""


class AddOffset(nn.Module):
    """An insertion that adds the constant vector `OFFSET` to every token it sees."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x + OFFSET


@functools.partial(jax.jit, static_argnums=0)
def _block_inputs_and_outputs(model: ViT, variables, images: jax.Array):
    """{block name: ((B, 1 + N, D) tokens that enter it, those it returns)}."""
    tokens = {}

    def record(next_fun, args, kwargs, context):
        outputs = next_fun(*args, **kwargs)
        if isinstance(context.module, EncoderBlock) and context.method_name == "__call__":
            tokens[context.module.name] = (args[0], outputs)
        return outputs

    with nn.intercept_methods(record):
        model.apply(variables, images, train=False)
    return tokens


@pytest.mark.parametrize("insertion_tokens", ["patch", "all"])
def test_block_insertion_changes_the_patch_tokens_and_with_patch_leaves_the_class_token(
    insertion_tokens,
):
    model = ViT(
        size="tiny",
        num_classes=3,
        patch_size=4,
        insertions={"block3": AddOffset},
        insertion_tokens=insertion_tokens,
    )
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    variables = {"params": _random_params(model, images, train=False)}
    tokens = _block_inputs_and_outputs(model, variables, images)
    assert list(tokens) == ["block1", "block2", "block3", "block4"]
    # Nothing between blocks 1 and 2; the insertion between blocks 2 and 3.
    np.testing.assert_array_equal(tokens["block2"][0], tokens["block1"][1])
    change = np.asarray(tokens["block3"][0] - tokens["block2"][1])
    chex.assert_shape(change, (2, 1 + 4, TINY.width))
    np.testing.assert_allclose(change[:, 1:], np.broadcast_to(OFFSET, (2, 4, 64)), atol=1e-5)
    if insertion_tokens == "patch":
        np.testing.assert_array_equal(change[:, 0], 0.0)
    else:
        np.testing.assert_allclose(change[:, 0], np.broadcast_to(OFFSET, (2, 64)), atol=1e-5)


class Zeroing(nn.Module):
    """An insertion that outputs zeros, after sowing its input as 'intermediates'/'input'."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        self.sow("intermediates", "input", x)
        return jnp.zeros_like(x)


def test_features_insertion_gets_the_normalised_class_token_and_feeds_the_classifier():
    images = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
    model = ViT(size="tiny", num_classes=3, patch_size=4, insertions={"features": Zeroing})
    params = _random_params(model, images, train=False)
    logits, state = jax.jit(
        functools.partial(
            model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )({"params": params}, images)
    intermediates = state["intermediates"]
    final_tokens = intermediates["norm"]["__call__"][0]  # the final LayerNorm's output
    chex.assert_shape(final_tokens, (2, 1 + 4, TINY.width))
    np.testing.assert_array_equal(
        intermediates["insertion_features"]["input"][0], final_tokens[:, 0]
    )
    np.testing.assert_allclose(logits, np.broadcast_to(params["classifier"]["bias"], (2, 3)))


@pytest.mark.parametrize("insertion_tokens", ["patch", "all"])
def test_positions_reach_the_insertions_that_take_them_and_only_those(insertion_tokens):
    """As a ResNet's: `positions` goes to the insertions that declare it (`AddOffset` does not)."""
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    positions = jnp.array([5, 0, 9])
    insertions = {"embedding": SowingPositions, "block2": AddOffset, "features": SowingPositions}
    model = ViT(
        size="tiny",
        num_classes=3,
        patch_size=4,
        insertions=insertions,
        insertion_tokens=insertion_tokens,
    )
    variables = {"params": _random_params(model, images, train=False)}
    for given, expected in ((positions, np.array([5, 0, 9])), (None, np.array([-1]))):
        _, sown = model.apply(
            variables, images, train=False, positions=given, mutable=["intermediates"]
        )
        received = sown_positions(sown["intermediates"])
        assert set(received) == {"['insertion_embedding']", "['insertion_features']"}
        for place, value in received.items():
            np.testing.assert_array_equal(value, expected, err_msg=place)


class DropFirstToken(nn.Module):
    """An insertion that changes the number of tokens."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x[:, 1:]


def test_bad_place_names_fields_and_shapes_raise_value_errors():
    with pytest.raises(
        ValueError, match=r"unknown place names \['block5'\] for size='tiny'.*'block4', 'features'"
    ):
        ViT(size="tiny", num_classes=10, insertions={"block5": Zeroing})
    with pytest.raises(ValueError, match=r"\['block0', 'stage4'\].*'embedding', 'block1'"):
        ViT(size="tiny", num_classes=10, insertions={"stage4": Zeroing, "block0": Zeroing})
    ViT(size="Ti", num_classes=10, insertions={"block12": Zeroing})  # valid at depth 12
    with pytest.raises(ValueError, match=r"size='XL' is not supported; allowed: \('Ti', 'S'"):
        ViT(size="XL", num_classes=10)
    with pytest.raises(ValueError, match=r"insertion_tokens='cls'.*\('patch', 'all'\)"):
        ViT(size="tiny", num_classes=10, insertion_tokens="cls")
    with pytest.raises(ValueError, match=r"num_classes=0"):
        ViT(size="tiny", num_classes=0)
    with pytest.raises(ValueError, match=r"patch_size=0"):
        ViT(size="tiny", num_classes=10, patch_size=0)
    with pytest.raises(ValueError, match=r"dropout_rate=1.0 must be in \[0, 1\)"):
        ViT(size="tiny", num_classes=10, dropout_rate=1.0)
    with pytest.raises(ValueError, match=r"10×8 pixels do not split into patch_size=4"):
        _abstract_init_with_output(ViT(size="tiny", num_classes=10, patch_size=4), (1, 10, 8, 3))
    dropping = ViT(size="tiny", num_classes=10, patch_size=4, insertions={"block2": DropFirstToken})
    with pytest.raises(ValueError, match=r"'block2' mapped patch tokens \(1, 4, 64\) to \(1, 3"):
        _abstract_init_with_output(dropping, (1, 8, 8, 3))
    _abstract_init_with_output(dropping.clone(insertion_tokens="all"), (1, 8, 8, 3))  # allowed


def test_encoder_block_is_permutation_equivariant_and_mixes_tokens():
    block = EncoderBlock(num_heads=4, mlp_dim=32)
    tokens = jax.random.normal(jax.random.key(3), (2, 7, 16))
    variables = {"params": _random_params(block, tokens, train=False)}
    apply = jax.jit(functools.partial(block.apply, variables, train=False))
    outputs = apply(tokens)
    permutation = np.random.default_rng(0).permutation(7)
    np.testing.assert_allclose(apply(tokens[:, permutation]), outputs[:, permutation], atol=1e-5)
    # Not trivially so: changing token 6 changes every other token's output (attention). (Not
    # by one constant in all channels: the LayerNorm in front of the attention removes that.)
    changed = apply(tokens.at[:, 6].add(jax.random.normal(jax.random.key(4), (16,))))
    assert np.all(np.abs(changed[:, :6] - outputs[:, :6]).max(axis=-1) > 1e-3)


def _permute_patches(images: jax.Array, patch_size: int, permutation: np.ndarray) -> jax.Array:
    """`images` with its patch_size² patches (row-major) rearranged: patch i ← patch perm[i]."""
    batch, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, rows, patch_size, cols, patch_size, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, -1)
    patches = patches[:, permutation].reshape(batch, rows, cols, patch_size, patch_size, channels)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(images.shape)


def test_logits_are_invariant_to_patch_order_exactly_when_position_embeddings_are_zero():
    model = ViT(size="tiny", num_classes=4, patch_size=2)
    images = jax.random.uniform(jax.random.key(4), (2, 8, 8, 3))
    permutation = np.random.default_rng(1).permutation(16)
    shuffled = _permute_patches(images, 2, permutation)
    assert not np.allclose(shuffled, images)
    params = _random_params(model, images, train=False)
    logits = _apply(model, {"params": params}, images)
    # With position embeddings the model sees where a patch is ...
    assert not np.allclose(_apply(model, {"params": params}, shuffled), logits, atol=1e-3)
    # ... without, the class token's attention pools a set of patches.
    unplaced = {"params": {**params, "position_embedding": jnp.zeros((1, 17, TINY.width))}}
    np.testing.assert_allclose(
        _apply(model, unplaced, shuffled), _apply(model, unplaced, images), atol=1e-5
    )


def test_dropout_acts_only_in_training_and_draws_from_the_dropout_rng():
    images = jax.random.uniform(jax.random.key(5), (2, 8, 8, 3))
    plain = ViT(size="tiny", num_classes=3, patch_size=4)
    dropping = plain.clone(dropout_rate=0.2, attention_dropout_rate=0.2)
    variables = {"params": _random_params(plain, images, train=False)}
    plain_logits = _apply(plain, variables, images)
    np.testing.assert_array_equal(_apply(dropping, variables, images), plain_logits)
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        _apply(dropping, variables, images, train=True)
    first, same, other = (
        _apply(dropping, variables, images, train=True, rngs={"dropout": jax.random.key(seed)})
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(same, first)
    assert not np.allclose(other, first)
    assert not np.allclose(first, plain_logits)


@pytest.mark.parametrize("train", [True, False])
def test_every_dropout_site_gets_its_rate_and_the_train_flag(train):
    """1 embedding dropout, then per block: attention weights, attention output, 2 in the MLP."""
    model = ViT(size="tiny", num_classes=3, patch_size=4, dropout_rate=0.2)
    model = model.clone(attention_dropout_rate=0.1)
    sites = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Dropout | nn.MultiHeadDotProductAttention):
            sites.append(
                (
                    type(module).__name__,
                    module.rate if isinstance(module, nn.Dropout) else module.dropout_rate,
                    module.deterministic,
                )
            )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _abstract_init_with_output(model, (1, 8, 8, 3), train=train)
    assert sorted(set(sites)) == sorted(
        {("Dropout", 0.2, not train), ("MultiHeadDotProductAttention", 0.1, not train)}
    )
    assert sites.count(("Dropout", 0.2, not train)) == 1 + TINY.depth * 3
    assert sites.count(("MultiHeadDotProductAttention", 0.1, not train)) == TINY.depth


@pytest.mark.parametrize(("name", "size"), [("vit_tiny", "tiny"), ("vit_ti", "Ti")])
def test_registered_blocks_trace_in_evaluation_mode(name, size):
    module, example_input, rng_names = get_block(name)(None)
    assert module.vit.size == size and rng_names == ()
    for shape in (None, (3, 32, 32, 3)):
        apply, (variables, inputs, rngs) = block_apply(name, shape)
        assert inputs.shape == (shape or example_input.shape)
        logits = jax.eval_shape(apply, variables, inputs, rngs)
        chex.assert_shape(logits, (inputs.shape[0], module.vit.num_classes))


def test_inspect_prints_the_vit_tiny_jaxpr_and_rejects_a_shape_off_the_patch_grid(capsys):
    assert inspect.main(["vit_tiny", "--shape", "2,8,8,3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# jaxpr of vit_tiny apply") and "f32[2,8,8,3]" in printed
    assert inspect.main(["vit_tiny", "--shape", "1,10,10,3"]) == 2
    assert "do not split into patch_size=4 patches" in capsys.readouterr().err


def test_tiny_vit_fits_a_small_batch_of_digits_in_forty_adam_steps():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = jnp.asarray(digits.images[:32, :, :, None] / 16.0, jnp.float32)  # (32, 8, 8, 1)
    labels = jnp.asarray(digits.target[:32])
    model = ViT(size="tiny", num_classes=10, patch_size=4)
    optimizer = optax.adam(3e-3)

    def loss_fn(params):
        logits = model.apply(params, images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def train(key):  # one program: the initialisers and the steps compile together
        params = model.init(key, images, train=False)
        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), length=40)
        return losses

    losses = np.asarray(train(jax.random.key(0)))
    assert losses[0] == pytest.approx(np.log(10), rel=1e-4)  # the zero classifier: uniform
    assert losses[-1] < 0.1 * losses[0], losses
