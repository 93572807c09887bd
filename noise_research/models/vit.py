"""Vision Transformer classifiers (Dosovitskiy et al. 2021) that accept any layer at named places.

The positive-noise paper (positive-noise.md) injects its noise into ViT-Ti/S/B/L as well as into
ResNets (DESIGN.md, "Positive noise"). `ViT` is built in the style of `models.resnet.ResNet`:
`insertions` puts a module at any place of `vit_places(depth)` ("embedding", "block{k}" = the
input of block k, "features"), each called as `module(x, train=train)` exactly like a ResNet's
(`models.resnet.apply_insertion`: with `ViT(images, train, positions=...)`, a module that takes
`positions` receives them too), so a layer written for one works in the other.

Layout (the paper's, as timm's `vit_*_patch16_224`): patch embedding (a conv with kernel = stride
= `patch_size`, no padding) → a learned class token prepended → learned position embeddings added
(class token included) → dropout → `depth` pre-norm encoder blocks
(x + MHSA(LN(x)), then x + MLP(LN(x)), MLP = Dense(mlp_dim) → exact GELU → Dense(width)) → final
LayerNorm → the class token → dense classifier. LayerNorm epsilon 1e-6. With 224² images,
patch 16 and 1000 classes, ViT-Ti/S/B/L have 5,717,416 / 22,050,664 / 86,567,656 / 304,326,632
parameters, as timm's `vit_{tiny,small,base,large}_patch16_224`.

Initialisation (big_vision's): class token zeros, position embeddings N(0, 0.02²), attention and
MLP kernels Xavier-uniform (MLP biases N(0, 1e-6²)), the patch conv LeCun-normal, the classifier
kernel and bias zeros (so a fresh model predicts uniformly). Dropout (`dropout_rate` on the
embeddings, the MLP and the attention output; `attention_dropout_rate` on the attention weights)
defaults to 0; above 0 it is active only with `train=True` and then needs `rngs={'dropout': key}`.
Params are float32; `dtype` sets the compute dtype (the attention softmax stays float32); logits
are float32. Images are NHWC and are used as given: normalisation is the task's choice. The image
side must be a multiple of `patch_size`, and a model applies only at the image size it was
initialised at (the position embeddings have one row per patch).
"""

import functools
import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict
from flax.typing import Dtype

from noise_research.models.resnet import apply_insertion
from noise_research.registry import register_block

ModuleDef = Callable[..., nn.Module]
"""A module factory: a linen module class or a `functools.partial` of one."""


class ViTSize(NamedTuple):
    """The shape of a ViT: token width D, number of blocks, attention heads, MLP hidden size."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int


VIT_SIZES = {
    "Ti": ViTSize(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": ViTSize(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": ViTSize(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "tiny": ViTSize(width=64, depth=4, num_heads=4, mlp_dim=128),
}
"""ViT-Ti/S/B/L (Dosovitskiy et al. 2021, Table 1; Ti from Touvron et al. 2021) and "tiny", the
small member for the embedded digits on a CPU. Note: "tiny" is *not* ViT-Ti (timm's
`vit_tiny_patch16_224`); that one is "Ti"."""

INSERTION_TOKENS = ("patch", "all")
"""What a module at "embedding" or "block{k}" sees: the patch tokens only (the class token goes
past it unchanged) or all tokens, class token first."""

LAYER_NORM_EPSILON = 1e-6
POSITION_EMBEDDING_STDDEV = 0.02


def vit_places(depth: int) -> list[str]:
    """The insertion places of a ViT with `depth` blocks, in the order the data passes them.

    "embedding" (the tokens after patch embedding, class token and position embeddings), then
    "block{k}" for k = 1…depth (the input of block k; "block1" sees what "embedding" returned),
    and finally "features" (the class token after the final LayerNorm, before the classifier).
    """
    if not isinstance(depth, numbers.Integral) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth={depth!r} must be a positive integer.")
    return ["embedding", *(f"block{block}" for block in range(1, depth + 1)), "features"]


def _insertion_module_name(place: str) -> str:
    """The submodule name of the insertion at `place`, e.g. "insertion_block3"."""
    return f"insertion_{place}"


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name}={rate!r} must be in [0, 1).")


class MlpBlock(nn.Module):
    """Dense(mlp_dim) → exact GELU → dropout → Dense(width of the input) → dropout."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        dense = functools.partial(
            nn.Dense,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        hidden = nn.gelu(dense(self.mlp_dim, name="fc1")(inputs), approximate=False)
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        outputs = dense(inputs.shape[-1], name="fc2")(hidden)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(outputs)


class EncoderBlock(nn.Module):
    """A pre-norm Transformer encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)).

    Attributes:
      num_heads: attention heads (the token width must be a multiple of it).
      mlp_dim: the MLP's hidden size.
      dropout_rate: dropout on the attention output and in the MLP.
      attention_dropout_rate: dropout on the attention weights.
      dtype: compute dtype (None: float32); the softmax is computed in float32.
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:
        """Maps (B, T, D) tokens to (B, T, D); equivariant to permutations of the T tokens."""
        chex.assert_rank(tokens, 3)
        width = tokens.shape[-1]
        norm = functools.partial(
            nn.LayerNorm, epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, param_dtype=jnp.float32
        )
        attended = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=width,
            out_features=width,
            dropout_rate=self.attention_dropout_rate,
            deterministic=not train,
            kernel_init=nn.initializers.xavier_uniform(),
            force_fp32_for_softmax=True,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="attention",
        )(norm(name="norm1")(tokens))
        attended = nn.Dropout(self.dropout_rate, deterministic=not train)(attended)
        tokens = tokens + attended
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")
        return tokens + mlp(norm(name="norm2")(tokens), train)


class ViT(nn.Module):
    """ViT-Ti/S/B/L (and "tiny") image classifier with insertion places.

    See the module docstring for the layout. `insertions` maps places of
    `vit_places(VIT_SIZES[size].depth)` to module factories; each is built at its place (named
    "insertion_<place>") and called as `module(x, train=train)` (plus `positions=` where it takes
    them: `models.resnet.apply_insertion`), returning the features that go on. At "embedding" and
    "block{k}", x is (B, N, D) patch tokens with `insertion_tokens="patch"` (the class token is
    passed around the module and put back in front; the module must keep the shape) or
    (B, 1 + N, D) with "all"; at "features", x is the (B, D) class token. Every block reads its
    tokens through a LayerNorm, so an insertion that shifts a token by the same amount in all D
    channels changes nothing downstream.

    Attributes:
      size: a key of `VIT_SIZES`: "Ti", "S", "B", "L" or "tiny".
      num_classes: classifier outputs.
      patch_size: side of the square patches (the image side must be a multiple of it).
      insertions: place name → module factory.
      insertion_tokens: "patch" or "all" (see above).
      dropout_rate: dropout after the embeddings, in the MLPs and on the attention outputs.
      attention_dropout_rate: dropout on the attention weights.
      dtype: compute dtype (None: float32); params are float32.
    """

    size: str
    num_classes: int
    patch_size: int = 16
    insertions: Mapping[str, ModuleDef] = FrozenDict()
    insertion_tokens: str = "patch"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        if self.size not in VIT_SIZES:
            raise ValueError(f"size={self.size!r} is not supported; allowed: {tuple(VIT_SIZES)}.")
        places = vit_places(VIT_SIZES[self.size].depth)
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r} must be a positive integer.")
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size!r} must be a positive integer.")
        if self.insertion_tokens not in INSERTION_TOKENS:
            raise ValueError(
                f"insertion_tokens={self.insertion_tokens!r} is not supported; "
                f"allowed: {INSERTION_TOKENS}."
            )
        _check_rate(self.dropout_rate, "dropout_rate")
        _check_rate(self.attention_dropout_rate, "attention_dropout_rate")
        unknown = sorted(set(self.insertions) - set(places))
        if unknown:
            raise ValueError(
                f"insertions has unknown place names {unknown} for size={self.size!r}; "
                f"valid places: {places}."
            )
        # Hashable, so that a model can be a static argument of `jax.jit`.
        self.insertions = FrozenDict(self.insertions)
        super().__post_init__()

    def _insert(
        self, place: str, features: jax.Array, train: bool, positions: jax.Array | None
    ) -> jax.Array:
        """Applies the insertion at `place`, if any, to the tokens `insertion_tokens` names (all
        of `features` at "features"). Call inside `__call__`."""
        factory = self.insertions.get(place)
        if factory is None:
            return features
        module = factory(name=_insertion_module_name(place))
        if place == "features" or self.insertion_tokens == "all":
            return apply_insertion(module, features, train, positions)
        class_token, patch_tokens = features[:, :1], features[:, 1:]
        inserted = apply_insertion(module, patch_tokens, train, positions)
        if inserted.shape != patch_tokens.shape:
            raise ValueError(
                f"the insertion at {place!r} mapped patch tokens {patch_tokens.shape} to "
                f"{inserted.shape}; with insertion_tokens='patch' it must keep their shape."
            )
        return jnp.concatenate([class_token, inserted], axis=1)

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool, positions: jax.Array | None = None
    ) -> jax.Array:
        """Maps (B, H, W, C) images to (B, num_classes) float32 logits.

        `train`: dropout is active if True (with a rate above 0 it then needs the 'dropout'
        rng); insertions receive it too. `positions`: (B,) int global positions of the images
        in the example stream, passed to the insertions that take them; None: not passed.
        """
        chex.assert_rank(images, 4)
        batch, height, width, _ = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"images of {height}×{width} pixels do not split into "
                f"patch_size={self.patch_size} patches: both sides must be multiples of it."
            )
        size = VIT_SIZES[self.size]
        tokens = nn.Conv(
            size.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embedding",
        )(images)
        tokens = tokens.reshape(batch, -1, size.width)
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, size.width))
        class_tokens = jnp.broadcast_to(class_token.astype(tokens.dtype), (batch, 1, size.width))
        tokens = jnp.concatenate([class_tokens, tokens], axis=1)
        position_embedding = self.param(
            "position_embedding",
            nn.initializers.normal(stddev=POSITION_EMBEDDING_STDDEV),
            (1, tokens.shape[1], size.width),
        )
        tokens = tokens + position_embedding.astype(tokens.dtype)
        tokens = nn.Dropout(self.dropout_rate, deterministic=not train)(tokens)
        tokens = self._insert("embedding", tokens, train, positions)

        for block in range(1, size.depth + 1):
            tokens = self._insert(f"block{block}", tokens, train, positions)
            tokens = EncoderBlock(
                num_heads=size.num_heads,
                mlp_dim=size.mlp_dim,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                dtype=self.dtype,
                name=f"block{block}",
            )(tokens, train)

        tokens = nn.LayerNorm(
            epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, param_dtype=jnp.float32, name="norm"
        )(tokens)
        features = self._insert("features", tokens[:, 0], train, positions)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="classifier",
        )(features)
        chex.assert_shape(logits, (batch, self.num_classes))
        return logits.astype(jnp.float32)


class _EvalModeViT(nn.Module):
    """`ViT(images, train=False)` with the one-argument call that `inspect` expects."""

    vit: ViT

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.vit(images, train=False)


def _vit_block_factory(size: str, patch_size: int, num_classes: int, side: int, channels: int):
    """A registry factory for ViT-`size`/`patch_size` with `num_classes` classes, evaluation
    mode; default input (1, side, side, channels)."""

    def factory(shape: tuple[int, ...] | None):
        module = _EvalModeViT(ViT(size=size, num_classes=num_classes, patch_size=patch_size))
        return module, jax.ShapeDtypeStruct(shape or (1, side, side, channels), jnp.float32), ()

    return factory


register_block("vit_tiny", _vit_block_factory("tiny", 4, 10, 16, 3))
register_block("vit_ti", _vit_block_factory("Ti", 16, 1000, 224, 3))
