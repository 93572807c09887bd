"""Inception-v3 as pytorch-fid computes FID features, in Flax linen (2048-d pool3 features).

A port of pytorch-fid's ``InceptionV3(output_blocks=[3])`` (mseitzer/pytorch-fid,
``pytorch_fid/inception.py``, ``fid_inception_v3``), itself a port of the TensorFlow Inception
graph of Heusel et al. 2017 (``2015-12-05``) that defines FID. It is torchvision's Inception-v3 with
pytorch-fid's patched blocks:

* ``FIDInceptionA`` (Mixed_5b–5d), ``FIDInceptionC`` (Mixed_6b–6e) and ``FIDInceptionE_1``
  (Mixed_7b): the pool branch averages with ``count_include_pad=False`` (the window's mean over the
  pixels inside the image, not over 9);
* ``FIDInceptionE_2`` (Mixed_7c): the pool branch is a 3×3 **max** pool (stride 1, pad 1);
* ``InceptionB`` (Mixed_6a) and ``InceptionD`` (Mixed_7a) as in torchvision;
* every convolution is bias-free, followed by BatchNorm (eps 1e-3, evaluation mode: the running
  statistics) and ReLU.

Input: images ``(B, H, W, C)`` in the uint8 range [0, 255] (uint8 or float), C = 3 (C = 1 is
repeated). As pytorch-fid does, they are resized to 299×299 **bilinearly without antialiasing**
(torch's ``F.interpolate(mode='bilinear', align_corners=False)``; :func:`resize_bilinear`, not
``jax.image.resize``, which antialiases when it shrinks) and mapped to [−1, 1] by
``x/255 → 2x − 1``.
Output: ``(B, 2048)``, the global average pool after Mixed_7c (pytorch-fid's block 3).

The weights are pytorch-fid's file ``pt_inception-2015-12-05-6726825d.pth``
(:func:`load_fid_inception_variables`, read without torch by
:mod:`noise_research.models.torch_weights`); the file cannot be downloaded here. The port is
checked against pytorch-fid itself with seeded random weights (``tests/test_fid.py``); with the real
weights the agreement (and so a real FID) cannot be verified offline here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from noise_research.models.torch_weights import load_torch_state_dict
from noise_research.registry import register_block

FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
BATCHNORM_EPSILON = 1e-3

Padding = tuple[tuple[int, int], tuple[int, int]]


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of torch's 1-D bilinear interpolation with
    ``align_corners=False`` and no antialiasing (``aten/src/ATen/native/UpSample.h``):
    ``src = (dst + 0.5)·in/out − 0.5`` clamped at 0, then the two neighbours ``floor(src)`` and
    ``min(floor(src) + 1, in − 1)`` with weights ``1 − λ`` and ``λ``, ``λ = src − floor(src)``."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    lam = src - low
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - lam)
    np.add.at(matrix, (rows, high), lam)
    return matrix


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes ``(B, H, W, C)`` images to ``size`` as torch's ``F.interpolate(mode='bilinear',
    align_corners=False, antialias=False)`` does: separable interpolation matrices, applied with
    float32 at full precision (no TF32/bfloat16 passes on accelerators)."""
    height, width = images.shape[1:3]
    rows = jnp.asarray(bilinear_resize_matrix(height, size[0]), jnp.float32)
    cols = jnp.asarray(bilinear_resize_matrix(width, size[1]), jnp.float32)
    images = images.astype(jnp.float32)
    precision = jax.lax.Precision.HIGHEST
    images = jnp.einsum("oh,bhwc->bowc", rows, images, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, images, precision=precision)


class BasicConv2d(nn.Module):
    """torchvision's ``BasicConv2d``: a bias-free convolution, BatchNorm (eps 1e-3) and ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding | str = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features, self.kernel_size, self.strides, self.padding, use_bias=False, name="conv"
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BATCHNORM_EPSILON, name="bn")(x)
        return nn.relu(x)


def _same(kernel: tuple[int, int]) -> Padding:
    """torch's symmetric padding ``(k − 1) / 2`` per spatial axis of an odd kernel."""
    return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """``F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)``."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    """``F.max_pool2d(x, 3, stride=2)`` (no padding)."""
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class FIDInceptionA(nn.Module):
    """pytorch-fid's ``FIDInceptionA`` (Mixed_5b–5d)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = BasicConv2d(64, (5, 5), padding=_same((5, 5)), name="branch5x5_2")(branch5x5)
        dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        dbl = BasicConv2d(96, (3, 3), padding=_same((3, 3)), name="branch3x3dbl_2")(dbl)
        dbl = BasicConv2d(96, (3, 3), padding=_same((3, 3)), name="branch3x3dbl_3")(dbl)
        pool = _avg_pool_3x3_exclude_pad(x)
        pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(pool)
        return jnp.concatenate([branch1x1, branch5x5, dbl, pool], axis=-1)


class InceptionB(nn.Module):
    """torchvision's ``InceptionB`` (Mixed_6a): 17×17 grid reduction."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        dbl = BasicConv2d(96, (3, 3), padding=_same((3, 3)), name="branch3x3dbl_2")(dbl)
        dbl = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(dbl)
        return jnp.concatenate([branch3x3, dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """pytorch-fid's ``FIDInceptionC`` (Mixed_6b–6e): factorised 7×7 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        row, col = (1, 7), (7, 1)
        branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, row, padding=_same(row), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, col, padding=_same(col), name="branch7x7_3")(b7)
        dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        dbl = BasicConv2d(c7, col, padding=_same(col), name="branch7x7dbl_2")(dbl)
        dbl = BasicConv2d(c7, row, padding=_same(row), name="branch7x7dbl_3")(dbl)
        dbl = BasicConv2d(c7, col, padding=_same(col), name="branch7x7dbl_4")(dbl)
        dbl = BasicConv2d(192, row, padding=_same(row), name="branch7x7dbl_5")(dbl)
        pool = _avg_pool_3x3_exclude_pad(x)
        pool = BasicConv2d(192, (1, 1), name="branch_pool")(pool)
        return jnp.concatenate([branch1x1, b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):
    """torchvision's ``InceptionD`` (Mixed_7a): 8×8 grid reduction."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=_same((1, 7)), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=_same((7, 1)), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """pytorch-fid's ``FIDInceptionE_1`` (``pool='avg'``, Mixed_7b: average pool excluding the
    padding) and ``FIDInceptionE_2`` (``pool='max'``, Mixed_7c: 3×3 max pool, stride 1, pad 1)."""

    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        row, col = (1, 3), (3, 1)
        branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv2d(384, row, padding=_same(row), name="branch3x3_2a")(b3),
                BasicConv2d(384, col, padding=_same(col), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        dbl = BasicConv2d(384, (3, 3), padding=_same((3, 3)), name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate(
            [
                BasicConv2d(384, row, padding=_same(row), name="branch3x3dbl_3a")(dbl),
                BasicConv2d(384, col, padding=_same(col), name="branch3x3dbl_3b")(dbl),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pool = _avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pool = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            raise ValueError(f"pool={self.pool!r}; allowed: 'avg', 'max'")
        pool = BasicConv2d(192, (1, 1), name="branch_pool")(pool)
        return jnp.concatenate([branch1x1, b3, dbl, pool], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[3])``: ``(B, H, W, C)`` images in [0, 255] →
    ``(B, 2048)`` pool3 features (see the module docstring). ``resize_input=False`` skips the
    resize to 299×299 (pytorch-fid's ``resize_input``); module names are torchvision's, so the
    weights map one to one."""

    resize_input: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be (B, H, W, 1 or 3); got shape {images.shape}")
        x = images.astype(jnp.float32) / 255.0
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        if self.resize_input:
            x = resize_bilinear(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        x = 2.0 * x - 1.0
        # Block 0.
        x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=_same((3, 3)), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        # Block 1.
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        # Block 2.
        x = FIDInceptionA(32, name="Mixed_5b")(x)
        x = FIDInceptionA(64, name="Mixed_5c")(x)
        x = FIDInceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = FIDInceptionC(128, name="Mixed_6b")(x)
        x = FIDInceptionC(160, name="Mixed_6c")(x)
        x = FIDInceptionC(160, name="Mixed_6d")(x)
        x = FIDInceptionC(192, name="Mixed_6e")(x)
        # Block 3.
        x = InceptionD(name="Mixed_7a")(x)
        x = FIDInceptionE("avg", name="Mixed_7b")(x)
        x = FIDInceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# torch name of a BasicConv2d leaf → (Flax collection, Flax leaf name).
_LEAF_MAP = {
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}
# Entries of pytorch-fid's state_dict the features do not use: the 1008-way classifier (fc.*) and
# BatchNorm's step counters.
_UNUSED_SUFFIXES = (".num_batches_tracked",)
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")


def flax_path(torch_name: str) -> tuple[str, ...] | None:
    """The Flax variable path ``(collection, module, ..., leaf)`` of a torch ``state_dict`` name,
    e.g. ``Mixed_5b.branch1x1.conv.weight → ('params', 'Mixed_5b', 'branch1x1', 'conv',
    'kernel')``; None for entries the features do not use (``fc.*``, ``num_batches_tracked``)."""
    if torch_name.endswith(_UNUSED_SUFFIXES) or torch_name.startswith(_UNUSED_PREFIXES):
        return None
    parts = torch_name.split(".")
    if len(parts) < 3 or (parts[-2], parts[-1]) not in _LEAF_MAP:
        raise ValueError(f"{torch_name!r} is not an Inception-v3 BasicConv2d weight")
    collection, leaf = _LEAF_MAP[(parts[-2], parts[-1])]
    return (collection, *parts[:-2], parts[-2], leaf)


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Flax variables (``params`` and ``batch_stats``) of :class:`FIDInceptionV3` from pytorch-fid's
    ``state_dict``: convolution kernels ``OIHW → HWIO``, BatchNorm weight/bias/running statistics to
    scale/bias/mean/var, float32. Every expected variable must be present and of the right shape
    (checked against the model's own shapes); a missing or extra weight is a ``ValueError``."""
    variables: dict[str, Any] = {}
    for name, value in state_dict.items():
        path = flax_path(name)
        if path is None:
            continue
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)
        node = variables
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    expected = jax.eval_shape(
        FIDInceptionV3(resize_input=False).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
    )
    expected_leaves = {
        jax.tree_util.keystr(path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(expected)
    }
    given_leaves = {
        jax.tree_util.keystr(path): np.shape(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }
    missing = sorted(set(expected_leaves) - set(given_leaves))
    extra = sorted(set(given_leaves) - set(expected_leaves))
    wrong = sorted(
        f"{key}: {given_leaves[key]} instead of {shape}"
        for key, shape in expected_leaves.items()
        if key in given_leaves and given_leaves[key] != shape
    )
    if missing or extra or wrong:
        raise ValueError(
            "the state_dict is not pytorch-fid's Inception-v3: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
                    f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}" if extra else "",
                    f"wrong shapes {wrong[:3]}" if wrong else "",
                )
                if part
            )
        )
    return variables


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The names and torch-layout shapes of every state_dict entry the features use (what
    :func:`variables_from_state_dict` reads); used to build seeded random weights for tests."""
    expected = jax.eval_shape(
        FIDInceptionV3(resize_input=False).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
    )
    inverse = {value: key for key, value in _LEAF_MAP.items()}
    shapes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
        keys = [entry.key for entry in path]
        collection, modules, leaf_name = keys[0], keys[1:-1], keys[-1]
        torch_module, torch_leaf = inverse[(collection, leaf_name)]
        assert modules[-1] == torch_module
        shape = tuple(leaf.shape)
        if leaf_name == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1])
        shapes[".".join([*modules, torch_leaf])] = shape
    return shapes


def load_fid_inception_variables(
    path: str | os.PathLike[str] | None, config_key: str = "fid.inception_weights"
) -> dict[str, Any]:
    """The variables of :class:`FIDInceptionV3` from pytorch-fid's weights file at ``path``.

    ``path`` is the file ``pt_inception-2015-12-05-6726825d.pth`` (read without torch, see
    :mod:`noise_research.models.torch_weights`). It cannot be downloaded here: users of pytorch-fid
    have it in ``~/.cache/torch/hub/checkpoints/`` (torch hub's cache), and it is published at
    ``github.com/mseitzer/pytorch-fid/releases`` (``fid_weights``). A missing path or file raises
    ``FileNotFoundError`` with one message naming the path, ``config_key`` and where to find it.
    """
    if path is None or not os.path.isfile(os.path.expanduser(os.fspath(path))):
        raise FileNotFoundError(
            f"config.{config_key} = {None if path is None else os.fspath(path)!r}: no Inception "
            f"weights file there. FID needs pytorch-fid's {FID_WEIGHTS_FILENAME}; pytorch-fid "
            f"users have it in ~/.cache/torch/hub/checkpoints/ (or download it from "
            f"https://github.com/mseitzer/pytorch-fid/releases, tag fid_weights, on a machine with "
            f"network access) and set config.{config_key} to its path."
        )
    state_dict = load_torch_state_dict(os.path.expanduser(os.fspath(path)))
    return variables_from_state_dict(state_dict)


@functools.cache
def _inception() -> FIDInceptionV3:
    return FIDInceptionV3()


def fid_inception_features(variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """``(B, 2048)`` pool3 features of ``images`` (``(B, H, W, C)`` in [0, 255]) under the
    :class:`FIDInceptionV3` ``variables``; pure and jit-able."""
    return _inception().apply(variables, images)


def _inception_block_factory(shape: Sequence[int] | None):
    """A registry factory: the FID Inception at a small default input (1, 32, 32, 3), which it
    resizes to 299×299 as pytorch-fid does."""
    shape = tuple(shape or (1, 32, 32, 3))
    return FIDInceptionV3(), jax.ShapeDtypeStruct(shape, jnp.float32), ()


register_block("fid_inception_v3", _inception_block_factory)
