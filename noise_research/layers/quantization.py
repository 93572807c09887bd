"""Feature quantization layers (feature-quantization paper, section 2) and the DoReFa baseline.

The paper puts an element-wise non-linearity on the input of a convolution,
U_d = Σ_c W_{c,d} ⋆ f(X_c) (eqs. 2 and 4), with f one of:
- the scalable floor τ(x, β) = ⌊βx⌋/β (SF, eq. 3) with a straight-through gradient;
- the signed power ψ(x, α) = sign(x)|x|^(α+1) (POW, eq. 5) with learnable exponents and the
  gradients of eq. 6;
- the same power with exponents from a hyper-network fed with channel means and stds (HPOW, eq. 7);
- SF-POW, both.
The exponents may differ per output channel; the paper shares them over Λ groups of output channels
("we split D output channels into Λ portions"), Λ = 1 by default. No public code exists for this
paper (DESIGN.md): every default below is ours and stated where it is chosen.

Penalties (section 2, "we employ ℓ2 and ℓ1 (lasso) regularized terms towards α"): every layer with
exponents sows Σ|α| as 'alpha_l1' and Σα² as 'alpha_l2' into the collection 'penalties'. A task
applies the model with `mutable=['penalties']` and adds `exponent_penalty(state['penalties'], ...)`
to its loss; without `mutable`, sowing is a no-op and costs nothing.

DoReFa (Zhou et al. 2016, the paper's (W, A, G) = (1, 4, 32) baseline): 1-bit weights
sign(W)·mean|W|, 4-bit activations (clip to [0, 1], uniform k-bit rounding), straight-through
gradients kept in 32 bits.

Precision (`compute_dtype` of `QuantizedConv` and `DoReFaConv`). In a bfloat16 model (8
significant bits: spacing 2⁻⁷ in [1, 2), 2⁻⁶ in [2, 4)) the quantizers computed in bfloat16 are
partly no-ops (measured on every bfloat16 value in [0.05, 4)):
- SF, τ(x, 100) = ⌊100x⌋/100: 100x is rounded to bfloat16 before the floor, and from
  |100x| ≥ 128 (|x| ≥ 1.28) on it is already an integer, so the floor does nothing: τ(x) is x
  rounded, to the nearest, not down, within one bfloat16 spacing (mean shift 0; exactly x on
  [2, 2.56)). Only below 1.28 is there a floor, on the coarser of 0.01 and bfloat16's grid.
- POW, ψ(x, α) = sign(x)|x|^(α+1): the exponent α+1 is rounded to bfloat16 too, in steps of 2⁻⁷
  ≈ 0.008 above 1 (2⁻⁸ below): |α| < 2⁻⁸ gives α+1 = 1 and ψ(x) = x exactly (α = 0.003: the
  identity), α = 0.005 and 0.01 compute the same power 1.0078, and a change x·(|x|^α − 1) below
  half a bfloat16 spacing (|α·ln|x|| < 2⁻⁹) is lost in the output. The α gradient (eq. 6) is
  accumulated in float32 either way.
Computing the quantizer alone in float32 does not help once its output is cast back to bfloat16
(the cast undoes the floor). `compute_dtype=float32` therefore runs the quantizer AND its
convolution in float32 (input cast up, output cast back to the model's dtype): SF floors on the
exact 0.01 grid and POW uses the float32 exponent everywhere, the convolution sums the exactly
quantized features, and only its output is rounded, as every bfloat16 layer's is.
"""

from collections.abc import Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.typing import Dtype

from noise_research.registry import register_block

QUANTIZATIONS = ("none", "sf", "pow", "hpow", "sf_pow")
"""The input transforms `QuantizedConv` accepts: identity, τ (eq. 2), ψ (eq. 4), hyper-ψ (eq. 7),
τ∘ψ."""
GROUPED_QUANTIZATIONS = ("pow", "hpow", "sf_pow")
"""Those with exponents per output-channel group, which allow Λ > 1 (`QuantizedConv.groups`)."""

PENALTY_COLLECTION = "penalties"
"""The variable collection into which the exponent layers sow 'alpha_l1' and 'alpha_l2'."""

DEFAULT_FLOOR_SCALE = 100.0
"""β of the paper's ImageNet models (+SF-100, +SF-POW use β = 100)."""


def straight_through(soft: jax.Array, hard: jax.Array) -> jax.Array:
    """`hard` in the forward pass, the identity gradient w.r.t. `soft` in the backward pass (the
    straight-through estimator the paper uses for the floor, section 2, after [4, 51])."""
    return soft + jax.lax.stop_gradient(hard - soft)


def scalable_floor(x: jax.Array, beta: jax.Array | float) -> jax.Array:
    """τ(x, β) = ⌊βx⌋/β (eq. 3), with the straight-through estimator on the floor only.

    The floor ⌊z⌋ is replaced by the identity in the backward pass (section 2: "we assign 1 to
    gradients back-propagated to lower layers"); the rest of the expression is differentiated
    exactly. Hence ∂τ/∂x = β·1/β = 1 (identity, as in the paper), and β gets the gradient
    ∂τ/∂β = x/β − ⌊βx⌋/β² = (x − τ)/β: the quantization residual. We choose this over a zero
    gradient so that a learnable β (which the paper allows but does not detail) receives a signal
    from the same estimator that trains the layers below it; a fixed β simply ignores it.

    Args:
      x: any shape.
      beta: the resolution scale, > 0, broadcastable against `x` (e.g. a scalar or per channel).

    Returns:
      τ(x, β), of `x`'s shape and dtype.
    """
    beta = jnp.asarray(beta, x.dtype)
    scaled = beta * x
    return straight_through(scaled, jnp.floor(scaled)) / beta


def _sum_to_shape(cotangent: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums `cotangent` over the axes along which an array of `shape` was broadcast to it."""
    leading_axes = tuple(range(cotangent.ndim - len(shape)))
    reduced = cotangent.sum(axis=leading_axes)
    broadcast_axes = tuple(
        axis for axis, size in enumerate(shape) if size == 1 and reduced.shape[axis] != 1
    )
    return reduced.sum(axis=broadcast_axes, keepdims=True).reshape(shape)


@jax.custom_vjp
def _signed_power(x: jax.Array, alpha: jax.Array) -> jax.Array:
    magnitude = jnp.abs(x)
    safe_magnitude = jnp.where(magnitude > 0, magnitude, jnp.ones_like(magnitude))
    exponent = (alpha + 1).astype(x.dtype)
    powered = jnp.where(magnitude > 0, safe_magnitude**exponent, jnp.zeros_like(magnitude))
    return jnp.sign(x) * powered


def _signed_power_forward(x: jax.Array, alpha: jax.Array):
    return _signed_power(x, alpha), (x, alpha)


def _signed_power_backward(residuals, output_cotangent: jax.Array):
    """Eq. 6: ∂L/∂x = g·(α+1)|x|^α (= g·(α+1)·y/x without the division) and
    ∂L/∂α = Σ g·y·ln|x|, both 0 where |x| is below the dtype's smallest normal number."""
    x, alpha = residuals
    x_dtype_alpha = alpha.astype(x.dtype)
    magnitude = jnp.abs(x)
    is_nonzero = magnitude >= jnp.finfo(x.dtype).tiny
    safe_magnitude = jnp.where(is_nonzero, magnitude, jnp.ones_like(magnitude))
    powered = safe_magnitude ** (x_dtype_alpha + 1)  # |y|; a harmless 1 where x counts as 0
    x_cotangent = output_cotangent * (x_dtype_alpha + 1) * safe_magnitude**x_dtype_alpha
    x_cotangent = jnp.where(is_nonzero, x_cotangent, jnp.zeros_like(x_cotangent))
    per_element = output_cotangent * jnp.sign(x) * powered * jnp.log(safe_magnitude)
    per_element = jnp.where(is_nonzero, per_element, jnp.zeros_like(per_element))
    alpha_cotangent = _sum_to_shape(per_element.astype(jnp.float32), alpha.shape)
    return x_cotangent.astype(x.dtype), alpha_cotangent.astype(alpha.dtype)


_signed_power.defvjp(_signed_power_forward, _signed_power_backward)


def signed_power(x: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """ψ(x, α) = sign(x)|x|^(α+1) (eq. 5) with the custom gradients of eq. 6.

    The derivative of |x|^(α+1) is unbounded at 0 for α < 0; eq. 6 assigns 0 to the gradients where
    x = 0. We extend that rule to |x| below the dtype's smallest normal number (`finfo.tiny`, the
    same ≈1.2e-38 for float32 and bfloat16), so (α+1)|x|^α ≤ 1/tiny stays finite for α > −1. The
    forward value is exact, ψ(0, α) = 0. The computation runs in `x`'s dtype; the α cotangent is
    accumulated in float32, summed over the axes along which `alpha` was broadcast and returned in
    `alpha`'s dtype (float32 exponents keep float32 gradients in a bfloat16 network).

    Args:
      x: any shape.
      alpha: exponents, broadcastable to `x` (a scalar, per channel (C,), per group (Λ, 1, 1, 1, C),
        ...); meaningful for α > −1 (α+1 > 0), where ψ is continuous and monotone.

    Returns:
      ψ(x, α), of the broadcast shape of `x` and `alpha`, in `x`'s dtype.
    """
    alpha = jnp.asarray(alpha)
    if alpha.ndim > x.ndim:
        raise ValueError(
            f"alpha has shape {alpha.shape}, of higher rank than x {x.shape}; alpha must "
            "broadcast against x."
        )
    try:
        output_shape = jnp.broadcast_shapes(x.shape, alpha.shape)
    except ValueError as error:
        raise ValueError(
            f"alpha of shape {alpha.shape} does not broadcast against x of shape {x.shape}."
        ) from error
    x = jnp.broadcast_to(x, output_shape)
    return _signed_power(x, alpha)


def exponent_penalty(
    penalties: Mapping, l1_weight: float = 0.0, l2_weight: float = 0.0
) -> jax.Array:
    """l1_weight·Σ|α| + l2_weight·Σα² over every 'alpha_l1' / 'alpha_l2' sown in `penalties`.

    Args:
      penalties: the 'penalties' collection returned by `apply(..., mutable=['penalties'])`
        (nested dicts whose leaves are the tuples that `sow` appends to).
      l1_weight, l2_weight: the weights of the lasso and ridge terms (section 2), ≥ 0.

    Returns:
      A float32 scalar (0 when nothing was sown).
    """
    for name, weight in (("l1_weight", l1_weight), ("l2_weight", l2_weight)):
        if weight < 0:
            raise ValueError(f"{name}={weight!r} must be >= 0.")
    weights = {"alpha_l1": l1_weight, "alpha_l2": l2_weight}
    total = jnp.zeros((), jnp.float32)
    for path, sown_values in traverse_util.flatten_dict(dict(penalties)).items():
        weight = weights.get(path[-1], 0.0)
        for value in sown_values:
            total = total + weight * jnp.asarray(value, jnp.float32)
    return total


def _sow_exponent_penalties(module: nn.Module, alpha: jax.Array, num_samples: int = 1) -> None:
    """Sows Σ|α| / num_samples and Σα² / num_samples (per-sample exponents: the batch mean)."""
    alpha = alpha.astype(jnp.float32)
    module.sow(PENALTY_COLLECTION, "alpha_l1", jnp.abs(alpha).sum() / num_samples)
    module.sow(PENALTY_COLLECTION, "alpha_l2", jnp.square(alpha).sum() / num_samples)


def _validate_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class ScalableFloor(nn.Module):
    """τ(X, β) = ⌊βX⌋/β (eq. 3) on NHWC features, gradients as in `scalable_floor`.

    Attributes:
      beta_init: the initial (or fixed) β > 0; default 100, the paper's SF-100.
      learnable: False (default, the paper's fixed β): β is a constant; True: β is the parameter
        'log_beta' (β = exp(log_beta) stays positive), initialised to log(beta_init).
      per_channel: False (paper default, "a single β for all input and output channels"): one β;
        True: one β per input channel, shape (C,).
    """

    beta_init: float = DEFAULT_FLOOR_SCALE
    learnable: bool = False
    per_channel: bool = False

    def __post_init__(self) -> None:
        if not self.beta_init > 0:
            raise ValueError(f"beta_init={self.beta_init!r} must be > 0.")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) features to τ(features, β), same shape and dtype."""
        chex.assert_rank(inputs, 4)
        beta_shape = (inputs.shape[-1],) if self.per_channel else ()
        if self.learnable:
            log_beta = self.param(
                "log_beta", nn.initializers.constant(np.log(self.beta_init)), beta_shape
            )
            beta = jnp.exp(log_beta)
        else:
            beta = jnp.full(beta_shape, self.beta_init)
        return scalable_floor(inputs, beta)


class SignedPower(nn.Module):
    """ψ(X_c, α_{c,λ}) (eqs. 4–5) with one learnable exponent per (output group λ, input channel c).

    The paper's exponent α_{c,d} belongs to an (input, output) channel pair, shared within each of
    Λ groups of output channels (the sharing paragraph of section 2; Λ = 1 by default). The input of
    the convolution then differs per group, so this module returns the Λ transformed copies stacked
    on a new leading axis, (Λ, B, H, W, C), which `QuantizedConv` feeds to a grouped convolution.

    Parameters: 'alpha' of shape (Λ, C), initialised to 0 so that ψ starts as the identity and the
    network starts as its plain counterpart; section 2 puts no hard range on α (it is regularised
    by the ℓ1/ℓ2 penalties this module sows, see the module docstring).

    Attributes:
      groups: Λ, the number of output-channel groups with their own exponents.
      alpha_init: the initial exponent (0: identity).
    """

    groups: int = 1
    alpha_init: float = 0.0

    def __post_init__(self) -> None:
        _validate_positive("groups", self.groups)
        if not self.alpha_init > -1:
            raise ValueError(f"alpha_init={self.alpha_init!r} must be > -1 (exponent α+1 > 0).")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) features to their Λ transformed copies, (Λ, B, H, W, C)."""
        chex.assert_rank(inputs, 4)
        alpha = self.param(
            "alpha", nn.initializers.constant(self.alpha_init), (self.groups, inputs.shape[-1])
        )
        _sow_exponent_penalties(self, alpha)
        copies = signed_power(inputs[None], alpha[:, None, None, None, :])
        chex.assert_shape(copies, (self.groups, *inputs.shape))
        return copies


CHANNEL_STD_EPSILON = 1e-5
"""ε of HPOW's channel σ = √(var + ε) (BatchNorm's ε)."""


class HyperPower(nn.Module):
    """ψ(X_c, α_{b,λ,c}) with exponents from a hyper-network of the input's statistics (eq. 7).

    α = F(μ_X, σ_X): μ and σ are the mean and standard deviation of each input channel over
    (H, W), per sample, so α is per (sample b, output group λ, input channel c). σ is
    √(var + ε) with ε = `CHANNEL_STD_EPSILON`: √var has an infinite derivative at var = 0, so an
    exactly constant channel (any 1×1 feature map, a ReLU channel that is all zero) would give NaN
    gradients to every layer before this one. F (our choice, the
    paper does not specify it) is Dense(hidden_features) → ReLU → Dense(Λ·C), followed by
    α = softplus(z + softplus⁻¹(1)) − 1: this keeps α > −1 (ψ stays continuous and monotone for any
    input statistics) and gives α = 0, the identity, at z = 0. The last Dense layer is initialised
    to zero so every exponent starts at 0, as in `SignedPower`. The batch means of Σ_c|α| and Σ_cα²
    are sown as the ℓ1/ℓ2 penalties.

    Attributes:
      groups: Λ, the number of output-channel groups with their own exponents.
      hidden_features: width of the hyper-network's hidden layer (default 16).
    """

    groups: int = 1
    hidden_features: int = 16

    def __post_init__(self) -> None:
        _validate_positive("groups", self.groups)
        _validate_positive("hidden_features", self.hidden_features)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) features to their Λ transformed copies, (Λ, B, H, W, C)."""
        chex.assert_rank(inputs, 4)
        batch, channels = inputs.shape[0], inputs.shape[-1]
        statistics_input = inputs.astype(jnp.promote_types(inputs.dtype, jnp.float32))
        channel_mean = statistics_input.mean(axis=(1, 2))
        channel_std = jnp.sqrt(statistics_input.var(axis=(1, 2)) + CHANNEL_STD_EPSILON)
        hidden = nn.relu(
            nn.Dense(self.hidden_features, name="hidden")(
                jnp.concatenate([channel_mean, channel_std], axis=-1)
            )
        )
        exponent_logits = nn.Dense(
            self.groups * channels,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            name="exponents",
        )(hidden)
        alpha = nn.softplus(exponent_logits + np.log(np.expm1(1.0))) - 1.0
        alpha = alpha.reshape(batch, self.groups, channels)
        _sow_exponent_penalties(self, alpha, num_samples=batch)
        group_major_alpha = jnp.transpose(alpha, (1, 0, 2))[:, :, None, None, :]
        copies = signed_power(inputs[None], group_major_alpha)
        chex.assert_shape(copies, (self.groups, *inputs.shape))
        return copies


class QuantizedConv(nn.Module):
    """U_d = Σ_c W_{c,d} ⋆ f(X_c) (eqs. 2 and 4) for f = identity, τ, ψ, hyper-ψ or τ∘ψ.

    With exponents shared over Λ output-channel groups, output group λ (channels
    [λ·D/Λ, (λ+1)·D/Λ)) convolves its own copy ψ(X, α_λ). The Λ copies are concatenated along
    channels and convolved by ONE `nn.Conv` with `feature_group_count=Λ`, whose kernel has the plain
    convolution's shape (kh, kw, C, D): for Λ = 1 the layer is exactly `nn.Conv` applied to f(X),
    with the same parameter tree under 'conv'.

    "sf_pow" (the paper's SF-POW, β = 100, Λ = 1) applies the floor after the power,
    τ(ψ(X, α), β): the convolution sees the power-mapped features on a grid of resolution 1/β, and
    the α gradient is not cut off by inputs that the floor would send to 0 first.

    Attributes:
      features: D, the output channels.
      kernel_size: (kh, kw) or one int for a square kernel.
      quantization: one of `QUANTIZATIONS`.
      groups: Λ (only for "pow", "hpow", "sf_pow"); must divide `features`.
      floor_scale: β of τ for "sf" and "sf_pow" (default 100, SF-100).
      learnable_floor_scale: whether β is learnable (see `ScalableFloor`).
      hyper_hidden_features: hidden width of the "hpow" hyper-network.
      strides, padding, use_bias, dtype, param_dtype: as in `nn.Conv` (`dtype`: the model's
        compute dtype, that of the output).
      compute_dtype: None (default): the quantizer and the conv compute in `dtype`; e.g.
        float32: both compute in float32 inside a `dtype` (bfloat16) model, the input cast up and
        the conv's output cast back to `dtype` (see the module docstring, "Precision").
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    quantization: str = "pow"
    groups: int = 1
    floor_scale: float = DEFAULT_FLOOR_SCALE
    learnable_floor_scale: bool = False
    hyper_hidden_features: int = 16
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    compute_dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate_positive("features", self.features)
        _validate_positive("groups", self.groups)
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization={self.quantization!r} is not supported; allowed: {QUANTIZATIONS}."
            )
        if self.groups > 1 and self.quantization not in GROUPED_QUANTIZATIONS:
            raise ValueError(
                f"groups={self.groups!r} with quantization={self.quantization!r}: only the power "
                "transforms ('pow', 'hpow', 'sf_pow') have per-group exponents; use groups=1."
            )
        if self.features % self.groups:
            raise ValueError(
                f"groups={self.groups!r} must divide features={self.features!r} (the output "
                "channels are split into Λ equal portions)."
            )
        if not self.floor_scale > 0:
            raise ValueError(f"floor_scale={self.floor_scale!r} must be > 0.")
        super().__post_init__()

    def _floor(self) -> ScalableFloor:
        return ScalableFloor(self.floor_scale, self.learnable_floor_scale, name="floor")

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) features to (B, H', W', features)."""
        chex.assert_rank(inputs, 4)
        model_dtype = inputs.dtype if self.dtype is None else self.dtype
        compute_dtype = model_dtype if self.compute_dtype is None else self.compute_dtype
        features = inputs.astype(compute_dtype)
        if self.quantization == "sf":
            features = self._floor()(features)
        elif self.quantization in ("pow", "sf_pow", "hpow"):
            if self.quantization == "hpow":
                copies = HyperPower(self.groups, self.hyper_hidden_features, name="power")(features)
            else:
                copies = SignedPower(self.groups, name="power")(features)
            if self.quantization == "sf_pow":
                copies = self._floor()(copies.reshape(-1, *inputs.shape[1:])).reshape(copies.shape)
            features = jnp.moveaxis(copies, 0, -2).reshape(*inputs.shape[:3], -1)
        outputs = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=self.strides,
            padding=self.padding,
            feature_group_count=self.groups,
            use_bias=self.use_bias,
            dtype=self.dtype if self.compute_dtype is None else self.compute_dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(features)
        if self.compute_dtype is None:
            return outputs
        return outputs.astype(model_dtype)


def dorefa_activations(x: jax.Array, bits: int) -> jax.Array:
    """DoReFa's k-bit activations: clip to [0, 1], then round((2^k − 1)·x)/(2^k − 1).

    The rounding has the straight-through (identity) gradient; the clip has its own gradient
    (1 inside [0, 1], 0 outside). Gradients are not quantized (DoReFa's G = 32)."""
    _validate_positive("bits", bits)
    levels = 2**bits - 1
    clipped = jnp.clip(x, 0, 1)
    return straight_through(clipped, jnp.round(clipped * levels) / levels)


def dorefa_binary_weights(kernel: jax.Array) -> jax.Array:
    """DoReFa's 1-bit weights: sign(W)·mean|W| (sign(0) = +1), identity gradient w.r.t. W."""
    binary = jnp.where(kernel >= 0, 1.0, -1.0).astype(kernel.dtype)
    return straight_through(kernel, binary * jnp.abs(kernel).mean())


class DoReFaConv(nn.Module):
    """A convolution with DoReFa-Net quantization (Zhou et al. 2016), the paper's (W, A, G) =
    (1, 4, 32) baseline: the kernel is binarised by `dorefa_binary_weights`, the input activations
    are quantized to `activation_bits` by `dorefa_activations`, gradients stay full precision.
    The bias (if any) is not quantized.

    Parameters: 'kernel' (kh, kw, C, features), LeCun-normal as in `nn.Conv`; 'bias' zeros.

    Attributes:
      features, kernel_size, strides, padding, use_bias, dtype, param_dtype: as in `nn.Conv`.
      activation_bits: k of the activation quantizer (default 4, the paper's setting).
      compute_dtype: as in `QuantizedConv`: None computes in `dtype`; float32 runs the quantizers
        and the conv in float32 and casts the output to `dtype`.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    activation_bits: int = 4
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    compute_dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate_positive("features", self.features)
        _validate_positive("activation_bits", self.activation_bits)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) activations to (B, H', W', features)."""
        chex.assert_rank(inputs, 4)
        model_dtype = inputs.dtype if self.dtype is None else self.dtype
        compute_dtype = model_dtype if self.compute_dtype is None else self.compute_dtype
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*_pair(self.kernel_size), inputs.shape[-1], self.features),
            self.param_dtype,
        )
        outputs = jax.lax.conv_general_dilated(
            dorefa_activations(inputs.astype(compute_dtype), self.activation_bits),
            dorefa_binary_weights(kernel).astype(compute_dtype),
            window_strides=_pair(self.strides),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            outputs = outputs + bias.astype(compute_dtype)
        return outputs.astype(model_dtype)


def _quantized_block_factory(quantization: str):
    """A registry factory for a 16-feature 3×3 layer of `quantization`; default input
    (1, 16, 16, 8)."""

    def factory(shape: tuple[int, ...] | None):
        if quantization == "dorefa":
            module = DoReFaConv(features=16)
        else:
            module = QuantizedConv(features=16, quantization=quantization)
        example_input = jax.ShapeDtypeStruct(shape or (1, 16, 16, 8), jnp.float32)
        return module, example_input, ()

    return factory


for _block_name in ("sf", "pow", "hpow", "sf_pow", "dorefa"):
    register_block(_block_name, _quantized_block_factory(_block_name))
