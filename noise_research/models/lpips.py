"""LPIPS with a VGG16 trunk (Zhang et al. 2018, the ``lpips`` package, version 0.1), in Flax linen.

A port of ``lpips.LPIPS(net='vgg', version='0.1')`` in evaluation mode (``richzhang/
PerceptualSimilarity``, the ``lpips`` pip package), the perceptual distance of "The unreasonable
effectiveness of deep features as a perceptual metric" (CVPR 2018) that StyleGAN's perceptual path
length (PPL, :mod:`noise_research.metrics.ppl`) uses. For images x, y ``(B, H, W, 3)`` in [−1, 1]:

1. **scaling layer**: ``x̂ = (x − shift) / scale`` per channel, with lpips' constants
   ``shift = (−0.030, −0.088, −0.188)`` and ``scale = (0.458, 0.448, 0.450)`` (ImageNet's
   normalisation expressed for [−1, 1] inputs);
2. **trunk**: torchvision's ``vgg16().features`` up to relu5_3 (3×3 convolutions with bias and
   padding 1, ReLU, 2×2 max pools of stride 2); the five ReLU outputs
   ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (64, 128, 256, 512, 512 channels) are
   the features ``f_l``;
3. **unit normalisation** over channels: ``f̂_l = f_l / (‖f_l‖₂ + 1e−10)`` at every pixel
   (lpips' ``normalize_tensor``);
4. **distance**: ``d(x, y) = Σ_l mean_{h,w} Σ_c w_{l,c} (f̂_l(x) − f̂_l(y))²_{h,w,c}``, the
   ``w_l`` being the 1×1 bias-free convolutions ``lin0 … lin4`` (lpips' ``NetLinLayer``; their
   dropout is inactive in evaluation mode).

Images with one channel are repeated to three (lpips itself needs three). The convolutions run at
``Precision.HIGHEST`` by default: PPL divides differences of features of images 1e−4 apart by
ε² = 1e−8, and TF32/bfloat16 passes on accelerators would swamp them (StyleGAN2-ADA turns TF32 off
for its metrics for the same reason).

Weights come from two files the user gives (no download here), read without torch by
:func:`noise_research.models.torch_weights.load_torch_state_dict`:

* torchvision's ImageNet VGG16 ``vgg16-397923af.pth`` (keys ``features.N.weight/bias``; the
  ``classifier.*`` entries are not used);
* lpips' ``weights/v0.1/vgg.pth`` (keys ``lin0.model.1.weight`` … ``lin4.model.1.weight``), shipped
  inside the ``lpips`` pip package.

:func:`load_lpips_vgg16_variables` maps them to Flax variables. The port is checked against the
``lpips`` package itself with seeded random trunk weights and lpips' real linear weights
(``tests/test_ppl.py``, fixtures by ``tests/fixtures/make_lpips_fixtures.py``); with the real
ImageNet trunk the agreement cannot be verified offline here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from noise_research.models.torch_weights import load_torch_state_dict
from noise_research.registry import register_block

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
"""lpips' ``ScalingLayer.shift`` (per RGB channel, for images in [−1, 1])."""
LPIPS_SCALE = (0.458, 0.448, 0.450)
"""lpips' ``ScalingLayer.scale``."""
NORMALIZE_EPSILON = 1e-10
"""lpips' ``normalize_tensor`` eps, added to the channel norm."""

VGG16_CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
"""The indices in torchvision's ``vgg16().features`` of the convolutions of each block; block k
ends at the ReLU whose output is LPIPS layer k (relu1_2 … relu5_3); a 2×2 max pool precedes every
block but the first."""
VGG16_CHANNELS = (64, 128, 256, 512, 512)
"""Output channels of the convolutions of each block (lpips' ``chns`` for 'vgg')."""
LPIPS_LAYER_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

VGG16_WEIGHTS_FILENAME = "vgg16-397923af.pth"
LPIPS_WEIGHTS_FILENAME = "weights/v0.1/vgg.pth"
VGG16_WEIGHTS_ORIGIN = (
    f"torchvision's ImageNet VGG16 weights {VGG16_WEIGHTS_FILENAME}: torchvision users have it in "
    "~/.cache/torch/hub/checkpoints/ (torchvision.models.vgg16(weights='IMAGENET1K_V1') downloads "
    f"it from https://download.pytorch.org/models/{VGG16_WEIGHTS_FILENAME}, on a machine with "
    "network access)"
)
LPIPS_WEIGHTS_ORIGIN = (
    f"lpips' linear-layer weights {LPIPS_WEIGHTS_FILENAME}: the lpips pip package ships it "
    "inside the package (`pip install lpips`, then "
    "site-packages/lpips/weights/v0.1/vgg.pth; also in github.com/richzhang/PerceptualSimilarity "
    "under lpips/weights/v0.1/vgg.pth)"
)

PrecisionLike = Any


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:30]``: ``(B, H, W, 3)`` → the five ReLU outputs
    relu1_2 … relu5_3, each ``(B, H/2^k, W/2^k, VGG16_CHANNELS[k])`` (pools floor odd sizes, as
    torch's ``MaxPool2d(2, 2)``). Convolution ``features_N`` is torchvision's ``features.N``."""

    precision: PrecisionLike = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        outputs = []
        for block, (indices, channels) in enumerate(
            zip(VGG16_CONV_INDICES, VGG16_CHANNELS, strict=True)
        ):
            if block > 0:
                x = nn.max_pool(x, (2, 2), (2, 2), "VALID")
            for index in indices:
                x = nn.Conv(
                    channels,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    precision=self.precision,
                    name=f"features_{index}",
                )(x)
                x = nn.relu(x)
            outputs.append(x)
        return tuple(outputs)


def normalize_channels(features: jax.Array, eps: float = NORMALIZE_EPSILON) -> jax.Array:
    """``f / (‖f‖₂ + eps)``, the norm over the channel (last) axis: lpips' ``normalize_tensor``."""
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / (norm + eps)


class LPIPSVGG16(nn.Module):
    """LPIPS v0.1 with the VGG16 trunk (module docstring): ``(images_a, images_b)`` → ``(B,)``
    distances, or ``(B, 5)`` per-layer terms with ``per_layer=True`` (their sum is the distance).

    Images ``(B, H, W, 1 or 3)`` in [−1, 1]; both are run through the trunk as one batch of 2B.
    Variables: ``params/vgg/features_N/{kernel, bias}`` and ``params/lin{k}/kernel`` (1, 1, C, 1).
    """

    precision: PrecisionLike = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(
        self, images_a: jax.Array, images_b: jax.Array, per_layer: bool = False
    ) -> jax.Array:
        chex.assert_rank(images_a, 4)
        chex.assert_equal_shape([images_a, images_b])
        if images_a.shape[-1] not in (1, 3):
            raise ValueError(f"images must be (B, H, W, 1 or 3); got shape {images_a.shape}")
        batch = images_a.shape[0]
        x = jnp.concatenate([images_a, images_b], axis=0).astype(jnp.float32)
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = (x - jnp.asarray(LPIPS_SHIFT, jnp.float32)) / jnp.asarray(LPIPS_SCALE, jnp.float32)
        features = VGG16Features(self.precision, name="vgg")(x)
        terms = []
        for layer, feature in enumerate(features):
            normalized = normalize_channels(feature)
            squared = jnp.square(normalized[:batch] - normalized[batch:])
            weighted = nn.Conv(
                1, (1, 1), use_bias=False, precision=self.precision, name=f"lin{layer}"
            )(squared)
            terms.append(jnp.mean(weighted, axis=(1, 2, 3)))
        per_layer_terms = jnp.stack(terms, axis=-1)
        chex.assert_shape(per_layer_terms, (batch, len(VGG16_CHANNELS)))
        return per_layer_terms if per_layer else jnp.sum(per_layer_terms, axis=-1)


# ---------------------------------------------------------------------------------------------
# Weights.


def vgg16_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The torchvision ``state_dict`` names and torch-layout shapes of the trunk's weights
    (``features.N.weight`` ``(out, in, 3, 3)`` and ``features.N.bias`` ``(out,)``)."""
    shapes = {}
    in_channels = 3
    for indices, channels in zip(VGG16_CONV_INDICES, VGG16_CHANNELS, strict=True):
        for index in indices:
            shapes[f"features.{index}.weight"] = (channels, in_channels, 3, 3)
            shapes[f"features.{index}.bias"] = (channels,)
            in_channels = channels
    return shapes


def lpips_linear_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The names and torch-layout shapes of lpips' ``vgg.pth`` (``lin{k}.model.1.weight``
    ``(1, C_k, 1, 1)``)."""
    return {
        f"lin{layer}.model.1.weight": (1, channels, 1, 1)
        for layer, channels in enumerate(VGG16_CHANNELS)
    }


def _check_entries(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """A ``ValueError`` listing missing, unexpected and wrongly shaped entries, if any."""
    given = {name: tuple(np.shape(value)) for name, value in state_dict.items()}
    missing = sorted(set(expected) - set(given))
    extra = sorted(
        name for name in set(given) - set(expected) if not name.startswith(ignored_prefixes)
    )
    wrong = sorted(
        f"{name}: {given[name]} instead of {shape}"
        for name, shape in expected.items()
        if name in given and given[name] != shape
    )
    problems = [
        f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
        f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}" if extra else "",
        f"wrong shapes {wrong[:3]}{'...' if len(wrong) > 3 else ''}" if wrong else "",
    ]
    if missing or extra or wrong:
        raise ValueError(f"the state_dict is not {what}: " + "; ".join(p for p in problems if p))


def lpips_variables_from_state_dicts(
    vgg16_state_dict: Mapping[str, np.ndarray], lpips_state_dict: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Flax variables of :class:`LPIPSVGG16` from torchvision's VGG16 ``state_dict`` and lpips'
    ``vgg.pth`` ``state_dict``: kernels ``OIHW → HWIO``, float32.

    The trunk's 26 ``features.N.weight/bias`` entries must all be there with torchvision's shapes
    (``classifier.*`` is ignored; any other entry, e.g. of VGG19 or of ``vgg16_bn``, is an error);
    lpips' five ``lin{k}.model.1.weight`` entries likewise, and nothing else. Violations are a
    ``ValueError`` listing them."""
    _check_entries(
        vgg16_state_dict,
        vgg16_state_dict_shapes(),
        f"torchvision's VGG16 ({VGG16_WEIGHTS_FILENAME})",
        ignored_prefixes=("classifier.",),
    )
    _check_entries(
        lpips_state_dict,
        lpips_linear_state_dict_shapes(),
        f"lpips' VGG linear layers ({LPIPS_WEIGHTS_FILENAME})",
    )
    vgg: dict[str, Any] = {}
    for indices in VGG16_CONV_INDICES:
        for index in indices:
            weight = np.asarray(vgg16_state_dict[f"features.{index}.weight"], np.float32)
            bias = np.asarray(vgg16_state_dict[f"features.{index}.bias"], np.float32)
            vgg[f"features_{index}"] = {"kernel": weight.transpose(2, 3, 1, 0), "bias": bias}
    params: dict[str, Any] = {"vgg": vgg}
    for layer in range(len(VGG16_CHANNELS)):
        weight = np.asarray(lpips_state_dict[f"lin{layer}.model.1.weight"], np.float32)
        params[f"lin{layer}"] = {"kernel": weight.transpose(2, 3, 1, 0)}
    return {"params": params}


def _resolve(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.path.expanduser(os.fspath(path))


def load_lpips_vgg16_variables(
    vgg16_path: str | os.PathLike[str] | None,
    lpips_path: str | os.PathLike[str] | None,
    vgg16_config_key: str = "ppl.vgg16_weights",
    lpips_config_key: str = "ppl.lpips_weights",
) -> dict[str, Any]:
    """The variables of :class:`LPIPSVGG16` from the two user-given weights files.

    ``vgg16_path``: torchvision's ``vgg16-397923af.pth``; ``lpips_path``: lpips'
    ``weights/v0.1/vgg.pth`` (module docstring; both read without torch). Neither can be
    downloaded here. A missing path or file is a ``FileNotFoundError``, a file that is not the
    expected one a ``ValueError``; either message names the path, the config key
    (``config.<key>``) and where the file comes from.
    """
    for path, key, origin in (
        (vgg16_path, vgg16_config_key, VGG16_WEIGHTS_ORIGIN),
        (lpips_path, lpips_config_key, LPIPS_WEIGHTS_ORIGIN),
    ):
        resolved = _resolve(path)
        if resolved is None or not os.path.isfile(resolved):
            raise FileNotFoundError(
                f"config.{key} = {None if path is None else os.fspath(path)!r}: no such file. "
                f"LPIPS (and so PPL) needs {origin}; set config.{key} to its path."
            )
    state_dicts = []
    for path, key, origin in (
        (vgg16_path, vgg16_config_key, VGG16_WEIGHTS_ORIGIN),
        (lpips_path, lpips_config_key, LPIPS_WEIGHTS_ORIGIN),
    ):
        try:
            state_dicts.append(load_torch_state_dict(_resolve(path)))
        except ValueError as error:  # TorchFileError too
            raise ValueError(
                f"config.{key} = {os.fspath(path)!r} is not readable as {origin}: {error}"
            ) from error
    try:
        return lpips_variables_from_state_dicts(*state_dicts)
    except ValueError as error:
        raise ValueError(
            f"config.{vgg16_config_key} = {os.fspath(vgg16_path)!r} and config.{lpips_config_key} "
            f"= {os.fspath(lpips_path)!r}: {error}. config.{vgg16_config_key} must be "
            f"{VGG16_WEIGHTS_ORIGIN}; config.{lpips_config_key} must be {LPIPS_WEIGHTS_ORIGIN}."
        ) from error


@functools.cache
def _lpips_module() -> LPIPSVGG16:
    return LPIPSVGG16()


def lpips_distance(
    variables: Mapping[str, Any], images_a: jax.Array, images_b: jax.Array
) -> jax.Array:
    """``(B,)`` LPIPS-VGG16 v0.1 distances between ``images_a`` and ``images_b`` (``(B, H, W, C)``
    in [−1, 1]) under :class:`LPIPSVGG16` ``variables``; pure and jit-able."""
    return _lpips_module().apply(variables, images_a, images_b)


# ---------------------------------------------------------------------------------------------
# Inspectable (`python -m noise_research.inspect lpips_vgg16`).


class _HalvesLPIPS(nn.Module):
    """:class:`LPIPSVGG16` with the one-argument call that ``inspect`` expects: the distances
    between the first and the second half of the batch."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        half = images.shape[0] // 2
        if images.shape[0] != 2 * half:
            raise ValueError(f"the batch must hold pairs (even size); got shape {images.shape}")
        return LPIPSVGG16(name="lpips")(images[:half], images[half:])


def _lpips_block_factory(shape: Sequence[int] | None):
    """A registry factory: LPIPS-VGG16 between the halves of a (2, 32, 32, 3) batch by default."""
    shape = tuple(shape or (2, 32, 32, 3))
    return _HalvesLPIPS(), jax.ShapeDtypeStruct(shape, jnp.float32), ()


register_block("lpips_vgg16", _lpips_block_factory)
