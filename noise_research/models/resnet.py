"""ResNet-18/34/50/101 classifiers (He et al. 2016) that accept any layer at named places.

The positive-noise paper (positive-noise.md, section 4) injects its noise "at the last micro
sublayer of the last macro layer" of ResNet-18/34/50/101 (DESIGN.md, "Positive noise": "before the
last sub-block of ResNet stage 4"), and the feature-quantization paper replaces the 3×3
convolutions of ResNet-50 by quantizing ones (DESIGN.md, "Feature quantization"). `ResNet` serves
both: `insertions` puts a module at any place of `resnet_places(depth)`, and the `conv3x3` /
`conv1x1` factories build every 3×3 and 1×1 convolution of the residual stages (the stem conv and
the classifier stay plain `nn.Conv` / `nn.Dense`).

Layout (torchvision's, "ResNet v1.5": a bottleneck downsamples in its 3×3 conv): stem → 4 stages
of residual blocks (channels width·2^(s−1), ×4 in bottlenecks; stride 2 in the first block of
stages 2–4) → global average pooling → dense classifier. Shortcuts are the identity, or a 1×1
conv + BatchNorm where the shape changes. With the ImageNet stem and 1000 classes, resnet18 has
11,689,512 parameters and resnet50 25,557,032, as torchvision's.

BatchNorm: momentum 0.9, epsilon 1e-5 (PyTorch's 0.1 / 1e-5), statistics over `(N, H, W)` and,
with `batch_norm_axis_name`, over that pmap axis too. The last BatchNorm of each residual branch
has its scale initialised to zero (Goyal et al. 2017, "zero-γ"), so every block starts as the
identity. Params are float32; `dtype` sets the compute dtype; logits are float32. Images are NHWC
and are used as given: normalisation is the task's choice.

Insertions are called as `module(x, train=train)`; given the rows' global positions
(`ResNet(images, train, positions=...)`), a module whose `__call__` declares a `positions`
parameter also receives `positions=` (`apply_insertion`): the positive-noise Gaussian and
salt-and-pepper layers key their draws by it, so an example's noise does not depend on where its
row sits on which device. `models.vit.ViT` calls its insertions the same way.
"""

import functools
import inspect
from collections.abc import Callable, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict
from flax.typing import Dtype

from noise_research.registry import register_block

ModuleDef = Callable[..., nn.Module]
"""A module factory: a linen module class or a `functools.partial` of one."""

BASIC_BLOCK_DEPTHS = (10, 18, 34)
BOTTLENECK_DEPTHS = (50, 101)
STAGE_SIZES = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
"""Residual blocks per stage (He et al. 2016, Table 1); ResNet-10, one basic block per stage, is
the small member used for quick CPU runs and tests."""

STEMS = ("imagenet", "small")
""""imagenet": 7×7/2 conv + 3×3/2 max-pool; "small": 3×3/1 conv, no pool (CIFAR-style)."""

BOTTLENECK_EXPANSION = 4
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def resnet_places(depth: int) -> list[str]:
    """The insertion places of a ResNet of `depth`, in the order the data passes them.

    "stem" (after the stem), then for every stage s and block b (1-based) "stage{s}.block{b}"
    (the block's input, which feeds both branch and shortcut) and
    "stage{s}.block{b}.last_subblock" (inside the residual branch, before its last conv + BN),
    then "stage{s}" (the stage's output), and finally "features" (after global pooling, before
    the classifier).
    """
    if depth not in STAGE_SIZES:
        raise ValueError(f"depth={depth!r} is not supported; allowed: {tuple(STAGE_SIZES)}.")
    places = ["stem"]
    for stage, num_blocks in enumerate(STAGE_SIZES[depth], start=1):
        for block in range(1, num_blocks + 1):
            places += [f"stage{stage}.block{block}", f"stage{stage}.block{block}.last_subblock"]
        places.append(f"stage{stage}")
    places.append("features")
    return places


def _insertion_module_name(place: str) -> str:
    """The submodule name of the insertion at `place`, e.g. "insertion_stage4_block2"."""
    return "insertion_" + place.replace(".", "_")


def takes_positions(module: nn.Module) -> bool:
    """Whether `module`'s `__call__` declares a `positions` parameter."""
    return "positions" in inspect.signature(type(module).__call__).parameters


def apply_insertion(
    module: nn.Module, x: jax.Array, train: bool, positions: jax.Array | None
) -> jax.Array:
    """`module(x, train=train)`, with `positions=positions` too when positions are given and the
    module takes them (`takes_positions`); the calling convention of every insertion place of
    `ResNet` and `models.vit.ViT`.

    `positions`: (B,) int global positions of x's rows in the example stream, or None.
    """
    if positions is not None and takes_positions(module):
        return module(x, train=train, positions=positions)
    return module(x, train=train)


def _batch_norm(
    train: bool,
    axis_name: str | None,
    dtype: Dtype | None,
    name: str,
    zero_init_scale: bool = False,
) -> nn.BatchNorm:
    """The ResNet's BatchNorm (momentum 0.9, eps 1e-5); `zero_init_scale` for a branch's last."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init_scale else nn.initializers.ones,
        name=name,
    )


def _same_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric (PyTorch-style) padding k // 2 on both spatial axes."""
    return ((kernel_size // 2, kernel_size // 2),) * 2


class ResidualBlock(nn.Module):
    """A basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1 convs) residual block.

    branch: [conv → BN → ReLU] × (n − 1) → insertion "last_subblock" → conv → BN (zero-γ);
    output = ReLU(branch + shortcut), shortcut = identity or 1×1 conv (stride) + BN.

    Attributes:
      features: the branch's inner channels (output channels: ×4 for a bottleneck).
      strides: spatial stride of the block (on the 3×3 conv; the shortcut conv matches it).
      bottleneck: bottleneck block if True, basic block otherwise.
      conv3x3, conv1x1: conv factories, called like
        `nn.Conv(features, kernel_size, strides=, padding=, use_bias=False, dtype=, name=)`.
      last_subblock_insertion: module factory called before the last conv + BN (by
        `apply_insertion`), or None.
      batch_norm_axis_name: pmap axis over which BatchNorm averages its batch statistics.
      dtype: compute dtype (None: float32).
    """

    features: int
    strides: int
    bottleneck: bool
    conv3x3: ModuleDef = nn.Conv
    conv1x1: ModuleDef = nn.Conv
    last_subblock_insertion: ModuleDef | None = None
    batch_norm_axis_name: str | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self, inputs: jax.Array, train: bool, positions: jax.Array | None = None
    ) -> jax.Array:
        """Maps (B, H, W, C) to (B, H/strides, W/strides, features·expansion).

        `positions`: the rows' global positions, for the insertion (`apply_insertion`).
        """
        chex.assert_rank(inputs, 4)
        norm = functools.partial(_batch_norm, train, self.batch_norm_axis_name, self.dtype)

        def conv(kernel_size: int, features: int, strides: int, name: str) -> nn.Module:
            factory = self.conv3x3 if kernel_size == 3 else self.conv1x1
            return factory(
                features,
                (kernel_size, kernel_size),
                strides=(strides, strides),
                padding=_same_padding(kernel_size),
                use_bias=False,
                dtype=self.dtype,
                name=name,
            )

        if self.bottleneck:
            out_features = self.features * BOTTLENECK_EXPANSION
            leading_convs = [(1, self.features, 1), (3, self.features, self.strides)]
            last_conv = (1, out_features, 1)
        else:
            out_features = self.features
            leading_convs = [(3, self.features, self.strides)]
            last_conv = (3, out_features, 1)

        branch = inputs
        for index, (kernel_size, features, strides) in enumerate(leading_convs, start=1):
            branch = conv(kernel_size, features, strides, f"conv{index}")(branch)
            branch = nn.relu(norm(f"bn{index}")(branch))
        if self.last_subblock_insertion is not None:
            insertion = self.last_subblock_insertion(name="insertion_last_subblock")
            branch = apply_insertion(insertion, branch, train, positions)
        last_index = len(leading_convs) + 1
        branch = conv(*last_conv, f"conv{last_index}")(branch)
        branch = norm(f"bn{last_index}", zero_init_scale=True)(branch)

        shortcut = inputs
        if self.strides != 1 or inputs.shape[-1] != out_features:
            shortcut = conv(1, out_features, self.strides, "shortcut_conv")(inputs)
            shortcut = norm("shortcut_bn")(shortcut)
        return nn.relu(branch + shortcut)


class ResNet(nn.Module):
    """ResNet-18/34/50/101 image classifier with insertion places and conv factories.

    See the module docstring for the layout. `insertions` maps places of `resnet_places(depth)`
    to module factories; each is built at its place (named "insertion_<place with _>") and called
    as `module(x, train=train)` (plus `positions=` where it takes them: `apply_insertion`),
    returning the features that go on.

    Attributes:
      depth: 18 or 34 (basic blocks), 50 or 101 (bottlenecks).
      num_classes: classifier outputs.
      stem: "imagenet" (7×7/2 conv + 3×3/2 max-pool) or "small" (3×3/1 conv, no pool).
      width: channels of the stem and of stage 1 (doubled at every stage).
      conv3x3, conv1x1: factories of the stages' 3×3 and 1×1 convs (shortcut projections
        included), called like `nn.Conv(features, kernel_size, strides=, padding=,
        use_bias=False, dtype=, name=)`; pass a partial of a quantizing conv to swap them.
      batch_norm_axis_name: pmap axis name for cross-device BatchNorm statistics, or None.
      dtype: compute dtype (None: float32); params are float32.
      insertions: place name → module factory.
    """

    depth: int
    num_classes: int
    stem: str = "imagenet"
    width: int = 64
    conv3x3: ModuleDef = nn.Conv
    conv1x1: ModuleDef = nn.Conv
    batch_norm_axis_name: str | None = None
    dtype: Dtype | None = None
    insertions: Mapping[str, ModuleDef] = FrozenDict()

    def __post_init__(self) -> None:
        places = resnet_places(self.depth)
        if self.stem not in STEMS:
            raise ValueError(f"stem={self.stem!r} is not supported; allowed: {STEMS}.")
        if self.width < 1:
            raise ValueError(f"width={self.width!r} must be a positive integer.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r} must be a positive integer.")
        unknown = sorted(set(self.insertions) - set(places))
        if unknown:
            raise ValueError(
                f"insertions has unknown place names {unknown} for depth={self.depth}; "
                f"valid places: {places}."
            )
        super().__post_init__()

    def _insert(
        self, place: str, features: jax.Array, train: bool, positions: jax.Array | None
    ) -> jax.Array:
        """Applies the insertion at `place`, if any (call inside `__call__`)."""
        factory = self.insertions.get(place)
        if factory is None:
            return features
        module = factory(name=_insertion_module_name(place))
        return apply_insertion(module, features, train, positions)

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool, positions: jax.Array | None = None
    ) -> jax.Array:
        """Maps (B, H, W, C) images to (B, num_classes) float32 logits.

        `train`: BatchNorm uses (and updates, in the mutable "batch_stats" collection) the batch
        statistics if True, the running averages if False; insertions receive it too.
        `positions`: (B,) int global positions of the images in the example stream, passed to
        the insertions that take them (`apply_insertion`); None: not passed.
        """
        chex.assert_rank(images, 4)
        stem_kernel_size = 7 if self.stem == "imagenet" else 3
        features = nn.Conv(
            self.width,
            (stem_kernel_size, stem_kernel_size),
            strides=(2, 2) if self.stem == "imagenet" else (1, 1),
            padding=_same_padding(stem_kernel_size),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="stem_conv",
        )(images)
        features = _batch_norm(train, self.batch_norm_axis_name, self.dtype, "stem_bn")(features)
        features = nn.relu(features)
        if self.stem == "imagenet":
            features = nn.max_pool(features, (3, 3), strides=(2, 2), padding=_same_padding(3))
        features = self._insert("stem", features, train, positions)

        for stage, num_blocks in enumerate(STAGE_SIZES[self.depth], start=1):
            for block in range(1, num_blocks + 1):
                place = f"stage{stage}.block{block}"
                features = self._insert(place, features, train, positions)
                features = ResidualBlock(
                    features=self.width * 2 ** (stage - 1),
                    strides=2 if stage > 1 and block == 1 else 1,
                    bottleneck=self.depth in BOTTLENECK_DEPTHS,
                    conv3x3=self.conv3x3,
                    conv1x1=self.conv1x1,
                    last_subblock_insertion=self.insertions.get(f"{place}.last_subblock"),
                    batch_norm_axis_name=self.batch_norm_axis_name,
                    dtype=self.dtype,
                    name=f"stage{stage}_block{block}",
                )(features, train, positions)
            features = self._insert(f"stage{stage}", features, train, positions)

        features = jnp.mean(features, axis=(1, 2))
        features = self._insert("features", features, train, positions)
        logits = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="classifier"
        )(features)
        chex.assert_shape(logits, (images.shape[0], self.num_classes))
        return logits.astype(jnp.float32)


class _EvalModeResNet(nn.Module):
    """`ResNet(images, train=False)` with the one-argument call that `inspect` expects."""

    resnet: ResNet

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.resnet(images, train=False)


def _resnet_block_factory(depth: int):
    """A registry factory for ResNet-`depth`, small stem, 10 classes, evaluation mode; default
    input (1, 32, 32, 3)."""

    def factory(shape: tuple[int, ...] | None):
        module = _EvalModeResNet(ResNet(depth=depth, num_classes=10, stem="small"))
        return module, jax.ShapeDtypeStruct(shape or (1, 32, 32, 3), jnp.float32), ()

    return factory


register_block("resnet18", _resnet_block_factory(18))
register_block("resnet50", _resnet_block_factory(50))
