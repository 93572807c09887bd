"""Image classification with feature quantization (the feature-quantization paper, section 3) and
with positive-noise injection (the positive-noise paper, section 4).

A ResNet whose convolutions can quantize their inputs (``model.quantizer.kind``): plain, SF
(scalable floor, eq. 3), POW (learnable signed power, eq. 5), HPOW (hyper-network exponents,
eq. 7), SF-POW, or the DoReFa baseline (weights 1 bit, activations 4 bits). The paper's
quantizers sit before every conv of the residual stages (``where='all'``) or only before the 3×3
ones (``'3x3'``, the paper's ResNet-50 setting); DoReFa quantizes every stage conv whatever
``where`` says (DoReFa-Net's convention, :func:`quantizes_1x1_convs`). The stem conv and the
classifier are plain for every kind. The loss is cross-entropy (optional label smoothing) plus
the ℓ1 / ℓ2 penalties on the exponents α that the POW / HPOW layers sow into the ``'penalties'``
collection.

Inputs are RGB in [0, 1]; the task normalises them with the ImageNet channel mean and std.
BatchNorm statistics are averaged across devices (global batch under jit, ``axis_name`` under pmap).

The paper's stability-training baseline (section 3.2, after Zheng et al. 2016): start from another
run's checkpoint (``finetune.init_workdir``), train only the classifier (``finetune.trainable =
'classifier'``; the backbone and its BatchNorm statistics stay frozen) with the loss
``CE(f(I)) + λ·KL(p(y|I) ‖ p(y|I + ε))``, ε ~ N(0, σ²) per pixel on the [0, 1] image, σ = 0.04 and
λ = 0.01 (``stability.noise_std``, ``stability.weight``; weight 0 turns the term off).

Positive noise (``model.noise``, :class:`NoiseConfig`): ``model.architecture`` is 'resnet' (the
above) or 'vit' (`models.vit.ViT`, ``model.vit_size`` / ``patch_size`` / ``insertion_tokens``;
no quantizers), and either receives one positive-noise layer ('gaussian', 'linear', 'optimal_q',
'salt_pepper') at ``model.noise.place``, by default the authors' place before the last block
(:func:`default_noise_place`). Steps pass the model the rows' global positions (the Gaussian and
salt-and-pepper draws are keyed by them) and their `ParallelContext` (the linear-transform roll
and the optimal-Q sum run over the global batch under jit and pmap). With ``at_eval`` the noise
acts at evaluation too; then the batch-mixing kinds must not see padding rows, so an evaluation
whose last batch would be padded is refused (:meth:`ClassifyTask._check_no_padding_is_mixed`).
:meth:`ClassifyTask.predict_fn` gives the leakage audit its predictors (noise / batch-statistics
BatchNorm on or off). The configs are in ``configs/positive_noise/``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import FrozenDict

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource
from noise_research.data.classification import unit_rgb
from noise_research.data.distortions import gradient_saliency, save_distortion_gallery
from noise_research.layers.noise_maps import per_example
from noise_research.layers.positive_noise import (
    LatentGaussianNoise,
    LinearTransformNoise,
    SaltPepperNoise,
)
from noise_research.layers.quantization import (
    GROUPED_QUANTIZATIONS,
    QUANTIZATIONS,
    DoReFaConv,
    QuantizedConv,
    exponent_penalty,
)
from noise_research.metrics.robustness import (
    TABLE_METRICS,
    TOP5_MIN_CLASSES,
    default_table_metric,
    evaluate_robustness,
    table2_row,
    write_robustness_report,
)
from noise_research.models.resnet import STAGE_SIZES, ResNet, resnet_places
from noise_research.models.vit import INSERTION_TOKENS, VIT_SIZES, ViT, vit_places
from noise_research.tasks.base import Task
from noise_research.train.loop import WEIGHT_KEY, LoopConfig, restore_state
from noise_research.train.optim import OptimizerConfig, make_optimizer
from noise_research.train.parallel import SINGLE_DEVICE, ParallelContext, cross_replica_sum
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState, apply_mean_gradients, init_train_state
from noise_research.viz import save_image_grid

if TYPE_CHECKING:
    from noise_research.data.classification import DigitsBatches, TfdsClassificationBatches

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
QUANTIZER_KINDS = (*QUANTIZATIONS, "dorefa")
QUANTIZER_PLACES = ("all", "3x3")
QUANTIZER_COMPUTE_DTYPES = ("float32", "model")
DEPTHS = (10, 18, 34, 50, 101)
ARCHITECTURES = ("resnet", "vit")
STEMS = ("imagenet", "small")
DTYPES = ("float32", "bfloat16")
MODES = ("train", "robustness", "leakage_audit")
TRAINABLE = ("all", "classifier")
VARIANTS = (*QUANTIZER_KINDS, "stability")
CLASSIFIER = "classifier"  # the ResNet's final dense layer (its params subtree)
# Collections a forward pass may create that are not state: recomputed on every call.
TRANSIENT_COLLECTIONS = ("penalties", "intermediates")


@dataclasses.dataclass(frozen=True)
class ClassifyData:
    """The ``data`` section."""

    name: str = cs.setting(
        "digits", cs.text(), "'digits' (scikit-learn, embedded) or a TFDS classification dataset"
    )
    train_split: str = cs.setting("train", cs.text(), "the TFDS training split")
    eval_split: str = cs.setting("test", cs.text(), "the TFDS evaluation split")
    data_dir: str | None = cs.setting(
        None, cs.optional(cs.text()), "TFDS data_dir; None: TFDS's default", placeholder=str
    )
    image_size: int = cs.setting(224, cs.integer(minimum=8), "side of the RGB inputs")
    batch_size: int = cs.setting(256, cs.batch_size(), "global training batch")
    eval_batch_size: int = cs.setting(256, cs.batch_size(), "global evaluation batch")
    num_eval_batches: int = cs.setting(
        0, cs.integer(minimum=0), "evaluation batches; 0: the whole eval split"
    )
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the order and augmentation")
    input_workers: int | None = cs.setting(
        None,
        cs.optional(cs.integer(minimum=0)),
        "processes building TFDS batches; None: one per CPU core; 0: a thread of this process",
        placeholder=int,
        resumable=True,
    )


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """The ``model.quantizer`` section (feature-quantization paper, section 3).

    ``compute_dtype`` matters in bfloat16 models only (``model.dtype``; float32 models compute
    everything in float32 either way). What SF (eq. 3, β = 100) and POW (eq. 5) then compute
    (measured; `noise_research.layers.quantization`, "Precision"):

    - ``'float32'`` (default): the quantizing conv casts its bfloat16 input to float32, applies
      the quantizer and the convolution in float32 and casts the output back to bfloat16. SF is
      ⌊100x⌋/100 on the exact 0.01 grid and POW uses the float32 exponent α + 1, as in a float32
      model; only the conv's output is rounded, like every bfloat16 layer's. The cost: those
      convs run at float32 speed (``python -m noise_research.bench classify
      --quantizer-dtypes=float32,model`` measures both).
    - ``'model'``: everything in bfloat16. SF: 100x is rounded to bfloat16 before the floor, an
      integer from x ≥ 1.28 on, so beyond 1.28 SF rounds x to the nearest (no floor, mean shift
      0; exactly x on [2, 2.56)). POW: α + 1 is rounded to bfloat16 (steps 2⁻⁷ ≈ 0.008 above 1),
      so |α| < 2⁻⁸ ≈ 0.004 is exactly the identity (α = 0.003 gives x) and α = 0.005, 0.01
      compute the same power.
    """

    kind: str = cs.setting(
        "none",
        cs.Rule(
            lambda v, c: (
                v in QUANTIZER_KINDS and (v == "none" or c.get("model.architecture") == "resnet")
            ),
            "one of " + ", ".join(map(repr, QUANTIZER_KINDS)) + ", and 'none' with "
            "model.architecture = 'vit' (the quantizers replace a ResNet's stage convs)",
        ),
        "none | sf | pow | hpow | sf_pow | dorefa (ResNet only)",
    )
    where: str = cs.setting(
        "all",
        cs.one_of(*QUANTIZER_PLACES),
        "before every stage conv ('all') or only the 3×3 ones ('3x3', the paper's ResNet-50); "
        "DoReFa ignores it (every conv but the stem, as in DoReFa-Net)",
    )
    groups: int = cs.setting(
        1,
        cs.Rule(
            lambda v, c: (
                v == 1
                or (
                    cs.integer(minimum=2).check(v, c)
                    and c.get("model.quantizer.kind") in GROUPED_QUANTIZATIONS
                    and c.get("model.width") % v == 0
                )
            ),
            "1, or with model.quantizer.kind in 'pow', 'hpow', 'sf_pow' an integer that divides "
            "model.width (every conv's output channels are a multiple of it)",
        ),
        "Λ, output-channel groups sharing exponents",
    )
    floor_scale: float = cs.setting(100.0, cs.positive_number(), "β of SF-β")
    learnable_floor_scale: bool = cs.setting(False, cs.boolean(), "whether β is learned")
    hyper_hidden_features: int = cs.setting(
        16, cs.integer(minimum=1), "hidden units of HPOW's hyper-network"
    )
    activation_bits: int = cs.setting(
        4, cs.integer(minimum=1, maximum=16), "DoReFa's activation bits"
    )
    compute_dtype: str = cs.setting(
        "float32",
        cs.one_of(*QUANTIZER_COMPUTE_DTYPES),
        "'float32': every quantizing conv (quantizer + conv) computes in float32 and casts its "
        "output to model.dtype; 'model': in model.dtype (bfloat16: SF is no floor beyond "
        "x ≈ 1.28, POW exponents are rounded to steps of 2^-7, |α| < 2^-8 is the identity)",
    )


NOISE_LAYERS: dict[str, Callable[[float | None], Callable[..., nn.Module]]] = {
    "gaussian": lambda strength: functools.partial(LatentGaussianNoise, sigma=strength),
    "linear": lambda strength: functools.partial(LinearTransformNoise, alpha=strength, q="shift"),
    "optimal_q": lambda strength: functools.partial(LinearTransformNoise, q="optimal"),
    "salt_pepper": lambda strength: functools.partial(SaltPepperNoise, alpha=strength),
}
"""``model.noise.kind`` → (strength → the positive-noise layer's factory, without the switches)."""
NOISE_KINDS = ("none", *NOISE_LAYERS)
BATCH_MIXING_NOISE_KINDS = ("linear", "optimal_q")
"""The kinds whose output row depends on the other rows of the batch (X + QX)."""
RANDOM_NOISE_KINDS = ("gaussian", "salt_pepper")
"""The kinds that draw from the 'noise' rng stream, per row from (key, the row's position)."""
PAPER_NOISE_STRENGTHS = {"gaussian": 1.0, "linear": 0.4, "salt_pepper": 0.1}
"""``model.noise.strength = None`` means these: σ = 1 ("standard normal", Tables 1–2), α = 0.4
(the authors' code, DESIGN.md "Positive noise"); the paper gives no salt-and-pepper α, 0.1 is
ours."""


def model_places(architecture: str, depth: int, vit_size: str) -> list[str]:
    """The insertion places of the configured model: `resnet_places(depth)` or `vit_places`."""
    if architecture == "vit":
        return vit_places(VIT_SIZES[vit_size].depth)
    return resnet_places(depth)


def default_noise_place(architecture: str, depth: int, vit_size: str) -> str:
    """The authors' place, before the last block (``model.noise.place = 'default'``).

    ResNet: ``'stage4.block{n}'``, the input of stage 4's last block (n its blocks: 2 for
    ResNet-18, 3 for ResNet-50): the paper injects "at the last micro sublayer of the last macro
    layer", a micro sublayer being a residual block (section 4: ResNet-18 has 2 per stage), and
    DESIGN.md reads the authors' code as "before the last sub-block of ResNet stage 4". (The place
    ``'stage4.block{n}.last_subblock'`` is inside that block's residual branch, before its last
    conv; it is a place to choose, not the default.) ViT: ``'block{depth}'``, the input of the
    last encoder block.
    """
    if architecture == "vit":
        return f"block{VIT_SIZES[vit_size].depth}"
    return f"stage4.block{STAGE_SIZES[depth][-1]}"


def _configured_places(context: cs.Context) -> list[str]:
    """`model_places` of the config under validation; [] where its model keys are invalid (their
    own rules name them)."""
    try:
        return model_places(
            context.get("model.architecture"),
            context.get("model.depth"),
            context.get("model.vit_size"),
        )
    except (KeyError, TypeError, ValueError):
        return []


def _valid_noise_strength(value: Any, context: cs.Context) -> bool:
    kind = context.get("model.noise.kind")
    if value is None or kind in ("none", "optimal_q"):
        return value is None or cs.number().check(value, context)
    if not cs.number(minimum=0.0).check(value, context) or not math.isfinite(value):
        return False
    return {"linear": value <= 1.0, "salt_pepper": value < 1.0}.get(kind, True)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The ``model.noise`` section: positive-noise injection at one place of the model
    (positive-noise paper, sections 3–4; `noise_research.layers.positive_noise`).

    The layer acts in training steps and, with ``at_eval``, in evaluation too (the authors' way;
    then a 'linear' / 'optimal_q' prediction depends on the other rows of its batch). The
    Gaussian and salt-and-pepper draws come from the step's 'noise' key folded with each row's
    global position (``batch['position']``), so an example gets the same noise on any device
    layout; evaluation draws from a key of its own ('eval' kind of the step's key). The batch
    mixing ('linear', 'optimal_q') is over the **global** batch under jit and pmap alike, or
    over each device's rows with ``per_device``. With ``finetune.trainable = 'classifier'`` the
    backbone runs in evaluation mode, so the noise then acts only with ``at_eval``.
    Quantizers and noise combine freely (a quantizer replaces convs, the noise is an insertion).
    """

    kind: str = cs.setting(
        "none", cs.one_of(*NOISE_KINDS), "none | gaussian | linear | optimal_q | salt_pepper"
    )
    strength: float | None = cs.setting(
        None,
        cs.Rule(
            _valid_noise_strength,
            "None (the paper's: σ = 1 for 'gaussian', α = 0.4 for 'linear', α = 0.1 (ours) for "
            "'salt_pepper'), or σ >= 0 for 'gaussian', α in [0, 1] for 'linear', α in [0, 1) for "
            "'salt_pepper' (any number for 'none' and 'optimal_q', which ignore it)",
        ),
        "σ of 'gaussian', α of 'linear' (eq. 17) and 'salt_pepper' (eq. 18); None: the paper's",
        placeholder=float,
    )
    place: str = cs.setting(
        "default",
        cs.Rule(
            lambda v, c: v == "default" or v in _configured_places(c),
            lambda c: "'default' or one of the model's places: " + ", ".join(_configured_places(c)),
        ),
        "'default' (the authors', before the last block: ResNet 'stage4.block{n}', ViT "
        "'block{depth}') or a place of resnet_places(model.depth) / vit_places(its depth)",
    )
    at_eval: bool = cs.setting(
        False,
        cs.boolean(),
        "also inject at evaluation (the authors do); False: training only",
        resumable=True,  # evaluation only: the training run is the same
    )
    per_device: bool = cs.setting(
        False,
        cs.Rule(
            lambda v, c: (
                isinstance(v, bool)
                and (not v or c.get("model.noise.kind") in BATCH_MIXING_NOISE_KINDS)
            ),
            "False, or True with model.noise.kind 'linear' or 'optimal_q'",
        ),
        "'linear' / 'optimal_q' mix each device's rows only (depends on the device count)",
    )


@dataclasses.dataclass(frozen=True)
class ClassifyModel:
    """The ``model`` section: a ResNet whose convolutions may quantize their inputs, or a ViT;
    either may receive positive noise at one place."""

    architecture: str = cs.setting(
        "resnet",
        cs.one_of(*ARCHITECTURES),
        "'resnet' (depth, stem, width, quantizer) or 'vit' (vit_size, patch_size, "
        "insertion_tokens)",
    )
    depth: int = cs.setting(50, cs.one_of(*DEPTHS), "ResNet depth")
    stem: str = cs.setting(
        "imagenet", cs.one_of(*STEMS), "'imagenet' (7×7/2 + max-pool) or 'small' (3×3/1)"
    )
    width: int = cs.setting(64, cs.integer(minimum=1), "channels of the first stage")
    num_classes: int = cs.setting(1000, cs.integer(minimum=2), "classes (checked on the data)")
    dtype: str = cs.setting("float32", cs.one_of(*DTYPES), "compute dtype (params stay float32)")
    vit_size: str = cs.setting(
        "B",
        cs.one_of(*VIT_SIZES),
        "ViT size: 'Ti', 'S', 'B', 'L', or 'tiny' (width 64, 4 blocks: for a CPU)",
    )
    patch_size: int = cs.setting(
        16,
        cs.Rule(
            lambda v, c: (
                cs.integer(minimum=1).check(v, c)
                and (c.get("model.architecture") != "vit" or c.get("data.image_size") % v == 0)
            ),
            "an integer >= 1 that, with model.architecture = 'vit', divides data.image_size",
        ),
        "ViT patch side",
    )
    insertion_tokens: str = cs.setting(
        "patch",
        cs.one_of(*INSERTION_TOKENS),
        "ViT: what the noise before a block sees: the patch tokens ('patch'; the class token "
        "passes unchanged) or 'all'",
    )
    quantizer: QuantizerConfig = cs.subsection(QuantizerConfig, "what each conv does to its input")
    noise: NoiseConfig = cs.subsection(NoiseConfig, "positive noise at one place of the model")


ALPHA_L1 = 1e-5
"""Default weight of the ℓ1 (lasso) penalty l1·Σ|α| (see `ClassifyLoss`)."""
ALPHA_L2 = 1e-4
"""Default weight of the ℓ2 penalty l2·Σα² (see `ClassifyLoss`)."""


@dataclasses.dataclass(frozen=True)
class ClassifyLoss:
    """The ``loss`` section.

    The α penalties follow the paper (section 2, after eq. 6: "we employ ℓ2 and ℓ1 (lasso)
    regularized terms towards α"): both are on by default. The paper gives no weights (its
    supplementary analysis is not public), so ours are: ℓ2 1e-4, the usual weight decay of a
    ResNet, which restrains the exponents that grow past 1; ℓ1 1e-5, whose constant pull
    (1e-5 per exponent) equals ℓ2's (2·1e-4·|α|) at |α| = 0.05, so it dominates only for small
    exponents and pulls those that do not help the loss towards 0, the identity ψ(x, 0) = x.
    Both sum over every exponent of every layer (HPOW: the batch mean of its per-sample ones).
    """

    label_smoothing: float = cs.setting(0.1, cs.fraction_below_one(), "label smoothing")
    alpha_l1: float = cs.setting(
        ALPHA_L1, cs.number(minimum=0.0), "ℓ1 (lasso) penalty weight on the exponents α, ·Σ|α|"
    )
    alpha_l2: float = cs.setting(
        ALPHA_L2, cs.number(minimum=0.0), "ℓ2 penalty weight on the exponents α, ·Σα²"
    )


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The ``finetune`` section: starting from another run."""

    init_workdir: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "a run whose latest checkpoint gives the initial params and BatchNorm statistics",
        placeholder=str,
    )
    trainable: str = cs.setting(
        "all",
        cs.Rule(
            lambda v, c: (
                v in TRAINABLE and (v == "all" or c.get("finetune.init_workdir") is not None)
            ),
            "'all', or 'classifier' together with finetune.init_workdir (the run to fine-tune)",
        ),
        "'all', or 'classifier': everything else stays frozen",
    )


@dataclasses.dataclass(frozen=True)
class StabilityConfig:
    """The ``stability`` section: the stability-training baseline (module docstring)."""

    weight: float = cs.setting(0.0, cs.number(minimum=0.0), "λ of the KL term; 0: off")
    noise_std: float = cs.setting(0.04, cs.positive_number(), "σ of the noise on [0, 1] images")


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """The ``robustness`` section: the distortion benchmark (``mode='robustness'``)."""

    model_name: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "Table 2 row name; None: from the model",
        placeholder=str,
        resumable=True,
    )
    saliency_workdir: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "the reference run whose model's gradient saliency of the true class places the targeted "
        "occlusions of every compared model (the paper: one plain ResNet-18); mode='robustness' "
        "stops without it",
        placeholder=str,
        resumable=True,
    )
    table_metric: str = cs.setting(
        "auto",
        cs.one_of("auto", *TABLE_METRICS),
        "Table 2's accuracy: 'top1', 'top5', or 'auto': top-5 from "
        f"{TOP5_MIN_CLASSES} classes on (ImageNet, as the paper), top-1 below (top-5 saturates)",
        resumable=True,
    )
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the distortions", resumable=True)


@dataclasses.dataclass(frozen=True)
class LeakageConfig:
    """The ``leakage`` section: the cross-sample leakage audit (``mode='leakage_audit'``,
    `metrics.leakage`)."""

    batch_sizes: tuple[int, ...] = cs.setting(
        (1, 16, 256),
        cs.Rule(
            lambda value, _: (
                isinstance(value, (tuple, list))
                and len(value) >= 2
                and all(isinstance(b, int) and b >= 1 for b in value)
                and len(set(value)) == len(value)
            ),
            "a tuple of at least two distinct integers >= 1",
        ),
        "evaluation batch sizes, distinct; the largest is also run class-sorted",
        resumable=True,
    )
    num_samples: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "test samples audited, the first of the eval stream (0: every real row of the "
        "data.num_eval_batches eval batches); the audit holds them in memory",
        resumable=True,
    )
    independence_samples: int = cs.setting(
        64, cs.integer(minimum=1), "samples probed for per-sample independence", resumable=True
    )
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the shuffles", resumable=True)


SECTIONS = {
    "train": LoopConfig,
    "data": ClassifyData,
    "model": ClassifyModel,
    "loss": ClassifyLoss,
    "optimizer": OptimizerConfig,
    "finetune": FinetuneConfig,
    "stability": StabilityConfig,
    "robustness": RobustnessConfig,
    "leakage": LeakageConfig,
}


def config_rules() -> dict[str, cs.Rule]:
    """Every key a classification config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("classify"), mode=cs.one_of(*MODES))


def variant_from_arg(arg: str | None) -> str:
    """The config-file argument (``file.py:pow``): a quantizer or 'stability'; empty is 'none'."""
    if arg in (None, ""):
        return "none"
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANTS)}")
    return arg


VIT_ARG_PREFIX = "vit_"
NOISE_ARGS = (*NOISE_KINDS, *(VIT_ARG_PREFIX + kind for kind in NOISE_KINDS))
"""The arguments of the ``configs/positive_noise/`` files: a noise kind for the ResNet, or
``vit_`` + a noise kind for the ViT (``:linear``, ``:vit_linear``)."""


def noise_variant_from_arg(arg: str | None) -> tuple[str, str]:
    """``(architecture, noise kind)`` of a positive-noise config argument (:data:`NOISE_ARGS`):
    ``'linear'`` → ('resnet', 'linear'), ``'vit_linear'`` → ('vit', 'linear'); empty is 'none'."""
    arg = arg or "none"
    if arg not in NOISE_ARGS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(NOISE_ARGS)}")
    if arg.startswith(VIT_ARG_PREFIX):
        return "vit", arg.removeprefix(VIT_ARG_PREFIX)
    return "resnet", arg


def positive_noise_experiment_config(
    arg: str | None, *, resnet: Mapping[str, Any], vit: Mapping[str, Any], **common: Any
) -> Any:
    """The config of a ``configs/positive_noise/`` file for its argument (:data:`NOISE_ARGS`):
    `experiment_config` with ``common`` keys and those of the chosen architecture (``resnet`` or
    ``vit``: run length, learning rate, warm-up), no quantizer, the argument's noise kind."""
    architecture, noise = noise_variant_from_arg(arg)
    chosen = {**common, **(vit if architecture == "vit" else resnet)}
    return experiment_config(
        variant="none",
        stability_steps=chosen["num_steps"],  # unused: no stability variant here
        architecture=architecture,
        noise=noise,
        **chosen,
    )


def positive_noise_sweep_grids(depth: int, vit_size: str) -> dict[str, list[str]]:
    """The named sweep grids of the paper's Figure 2 ablations (``launch/sweep.py --grids-from
    NAME``, ``--grid`` specs each) for a config of ResNet-``depth`` / ViT-``vit_size``:

    * ``strength``: α (σ) over 0.1…0.5, Figure 2 (a), (c) with ``:linear`` / ``:vit_linear``
      (eq. 14's ``[I+Q]_ii ≥ [I+Q]_ij`` holds up to 0.5; I + Q is singular at 0.5 for even k);
    * ``type_strength``: noise type × strength, Gaussian / linear / salt-and-pepper × 0.1…0.4;
    * ``layer``: the injected layer, Figure 2 (b): before the last block of each ResNet stage;
    * ``vit_layer``: Figure 2 (d): before blocks 6, 8, 10, 12 of a 12-block ViT (every block of
      a shallower one), with ``:vit_linear``;
    * ``at_eval``: the noise at training only or at evaluation too (the authors').
    """
    vit_depth = VIT_SIZES[vit_size].depth
    vit_blocks = range(6, 13, 2) if vit_depth == 12 else range(1, vit_depth + 1)
    return {
        "strength": ["model.noise.strength=0.1,0.2,0.3,0.4,0.5"],
        "type_strength": [
            "model.noise.kind=gaussian,linear,salt_pepper",
            "model.noise.strength=0.1,0.2,0.3,0.4",
        ],
        "layer": [
            "model.noise.place="
            + ",".join(
                f"stage{stage}.block{blocks}"
                for stage, blocks in enumerate(STAGE_SIZES[depth], start=1)
            )
        ],
        "vit_layer": ["model.noise.place=" + ",".join(f"block{k}" for k in vit_blocks)],
        "at_eval": ["model.noise.at_eval=False,True"],
    }


def experiment_config(
    *,
    dataset: str,
    depth: int,
    stem: str,
    num_classes: int,
    image_size: int,
    variant: str,
    num_steps: int,
    stability_steps: int,
    learning_rate: float = 0.1,
    warmup_steps: int = 500,
    architecture: str = "resnet",
    vit_size: str = "B",
    patch_size: int = 16,
    noise: str = "none",
) -> Any:
    """A classification experiment's ``ml_collections`` config; the files in
    ``configs/classify/`` and ``configs/positive_noise/`` pick the data set, the model and the
    run length and adjust the rest.

    No public code exists for the paper: the defaults here are ours. SGD with Nesterov momentum
    0.9, lr 0.1 at batch 256 (scale it with the batch), linear warm-up and cosine decay, weight
    decay 1e-4 on the kernels, label smoothing 0.1. Quantizer defaults follow the paper: SF with
    β = 100 (SF-100), POW with one exponent set shared by all output channels (Λ = 1); ResNet-50
    and deeper quantize only before the 3×3 convs.

    ``variant`` (:data:`VARIANTS`) is a quantizer, or ``'stability'``: the paper's
    stability-training baseline, a fine-tune of a trained plain run's classifier (given as
    ``--config.finetune.init_workdir=RUN``) for ``stability_steps`` steps with the KL term
    between clean and noised images (λ = 0.01, σ = 0.04 as in Zheng et al. 2016), at a tenth of
    the learning rate and without warm-up.

    ``architecture='vit'`` builds ViT-``vit_size`` with ``patch_size`` patches (``depth`` and
    ``stem`` then only fill their unused keys) and trains it with AdamW at ``learning_rate``,
    weight decay 0.05 on the kernels (DeiT's). ``noise`` is a ``model.noise.kind``, at the
    paper's strength (:data:`PAPER_NOISE_STRENGTHS`), its default place, training only.
    """
    stability = variant == "stability"
    optimizer = OptimizerConfig(
        name="adamw" if architecture == "vit" else "sgd",
        learning_rate=learning_rate / 10 if stability else learning_rate,
        weight_decay=0.05 if architecture == "vit" else 1e-4,
        schedule="cosine",
        warmup_steps=0 if stability else warmup_steps,
    )
    sections = {
        "train": LoopConfig(num_steps=stability_steps if stability else num_steps),
        "data": ClassifyData(name=dataset, image_size=image_size),
        "model": ClassifyModel(
            architecture=architecture,
            depth=depth,
            stem=stem,
            num_classes=num_classes,
            vit_size=vit_size,
            patch_size=patch_size,
            quantizer=QuantizerConfig(
                kind="none" if stability else variant, where="3x3" if depth >= 50 else "all"
            ),
            noise=NoiseConfig(kind=noise, strength=PAPER_NOISE_STRENGTHS.get(noise)),
        ),
        "loss": ClassifyLoss(),
        "optimizer": optimizer,
        "finetune": FinetuneConfig(trainable="classifier" if stability else "all"),
        "stability": StabilityConfig(weight=0.01 if stability else 0.0),
        "robustness": RobustnessConfig(),
        "leakage": LeakageConfig(),
    }
    return cs.config_dict(sections, task="classify", mode="train")


def build(config: Mapping[str, Any]) -> ClassifyTask:
    """The task for a validated config (a plain nested dict)."""
    return ClassifyTask(config)


def noise_insertions(
    model: ClassifyModel, parallel: ParallelContext, at_eval: bool
) -> dict[str, Callable[..., nn.Module]]:
    """``{place: factory}`` of the ``model.noise`` layer (empty for 'none'): acting at evaluation
    iff ``at_eval``, its batch mixing and default positions under ``parallel``."""
    noise = model.noise
    if noise.kind == "none":
        return {}
    strength = PAPER_NOISE_STRENGTHS.get(noise.kind) if noise.strength is None else noise.strength
    factory = functools.partial(
        NOISE_LAYERS[noise.kind](strength), at_eval=at_eval, parallel=parallel
    )
    if noise.kind in BATCH_MIXING_NOISE_KINDS:
        factory = functools.partial(factory, per_device=noise.per_device)
    place = noise.place
    if place == "default":
        place = default_noise_place(model.architecture, model.depth, model.vit_size)
    return {place: factory}


def build_model(
    model: ClassifyModel,
    parallel: ParallelContext = SINGLE_DEVICE,
    *,
    noise_at_eval: bool | None = None,
) -> ResNet | ViT:
    """The configured classifier for a step under ``parallel`` (BatchNorm's cross-device axis,
    the noise's batch mixing), its noise acting at evaluation iff ``noise_at_eval`` (None:
    ``model.noise.at_eval``). Called as ``model(images, train, positions=...)``."""
    at_eval = model.noise.at_eval if noise_at_eval is None else noise_at_eval
    insertions = FrozenDict(noise_insertions(model, parallel, at_eval))
    if model.architecture == "vit":
        return ViT(
            size=model.vit_size,
            num_classes=model.num_classes,
            patch_size=model.patch_size,
            insertions=insertions,
            insertion_tokens=model.insertion_tokens,
            dtype=jnp.dtype(model.dtype),
        )
    conv = quantizing_conv(model.quantizer)
    return ResNet(
        depth=model.depth,
        num_classes=model.num_classes,
        stem=model.stem,
        width=model.width,
        conv3x3=conv,
        conv1x1=conv if quantizes_1x1_convs(model.quantizer) else nn.Conv,
        batch_norm_axis_name=parallel.axis_name,
        dtype=jnp.dtype(model.dtype),
        insertions=insertions,
    )


def quantizing_conv(quantizer: QuantizerConfig) -> type[nn.Module] | functools.partial:
    """The conv class that applies ``quantizer.kind`` to its input (``nn.Conv`` for 'none'),
    computing in ``quantizer.compute_dtype`` (float32, or None: the model's dtype)."""
    if quantizer.kind == "none":
        return nn.Conv
    compute_dtype = jnp.float32 if quantizer.compute_dtype == "float32" else None
    if quantizer.kind == "dorefa":
        return functools.partial(
            DoReFaConv, activation_bits=quantizer.activation_bits, compute_dtype=compute_dtype
        )
    return functools.partial(
        QuantizedConv,
        compute_dtype=compute_dtype,
        quantization=quantizer.kind,
        groups=quantizer.groups,
        floor_scale=quantizer.floor_scale,
        learnable_floor_scale=quantizer.learnable_floor_scale,
        hyper_hidden_features=quantizer.hyper_hidden_features,
    )


def quantizes_1x1_convs(quantizer: QuantizerConfig) -> bool:
    """Whether the 1×1 convs of the residual stages (bottleneck and shortcut projections) quantize.

    ``where`` restricts the paper's own quantizers (section 3.2: "For ResNet-50, the proposed
    methods are only employed before the convolution layers with 3×3 kernels"). The DoReFa
    baseline is used "as suggested in their paper" (DoReFa-Net, Zhou et al. 2016): every
    convolution quantized except the first layer, the classifier in full precision, whatever
    ``where`` says. For every kind the stem conv and the classifier stay plain (`ResNet`).
    """
    return quantizer.where == "all" or quantizer.kind == "dorefa"


class ClassifyTask(Task):
    """Train / eval steps of the classifier (see the module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.data = cs.read_section(ClassifyData, config["data"])
        self.model_config = cs.read_section(ClassifyModel, config["model"])
        self.loss_config = cs.read_section(ClassifyLoss, config["loss"])
        self.finetune = cs.read_section(FinetuneConfig, config["finetune"])
        self.stability = cs.read_section(StabilityConfig, config["stability"])
        self.robustness = cs.read_section(RobustnessConfig, config["robustness"])
        self.leakage = cs.read_section(LeakageConfig, config["leakage"])
        self.noise = self.model_config.noise
        self.model = build_model(self.model_config)  # single device, the configured evaluation
        num_steps = cs.read_section(LoopConfig, config["train"]).num_steps
        self.tx = make_optimizer(cs.read_section(OptimizerConfig, config["optimizer"]), num_steps)
        if self.finetune.trainable == "classifier":
            self.tx = only_classifier(self.tx)

    # --- data -------------------------------------------------------------------------------
    def _source(
        self, train: bool, process_index: int, process_count: int
    ) -> DigitsBatches | TfdsClassificationBatches:
        from noise_research.data.classification import DigitsBatches, TfdsClassificationBatches

        data = self.data
        common = dict(
            global_batch_size=data.batch_size if train else data.eval_batch_size,
            image_size=data.image_size,
            train=train,
            seed=data.seed,
            process_index=process_index,
            process_count=process_count,
        )
        if data.name == "digits":
            source = DigitsBatches(**common)
        else:
            split_key = "data.train_split" if train else "data.eval_split"
            source = TfdsClassificationBatches(
                data.name,
                split=data.train_split if train else data.eval_split,
                data_dir=data.data_dir,
                num_workers=data.input_workers,
                # Labels are checked on every batch: a label the model has no class for stops.
                label_limit=self.model_config.num_classes,
                config_keys={
                    "name": "data.name",
                    "split": split_key,
                    "data_dir": "data.data_dir",
                    "label_limit": "model.num_classes",
                },
                **common,
            )
        self._check_against_data(source)
        return source

    def _check_against_data(self, source: DigitsBatches | TfdsClassificationBatches) -> None:
        """The config values only the data set can check (before anything compiles)."""
        num_classes = self.model_config.num_classes
        if source.num_classes is not None and num_classes != source.num_classes:
            raise cs.ConfigError(
                f"config.model.num_classes = {num_classes!r}: not allowed; data set "
                f"{self.data.name!r} has {source.num_classes} classes"
            )
        requested = self.data.num_eval_batches
        if not source.train and requested > source.num_batches:
            raise cs.ConfigError(
                f"config.data.num_eval_batches = {requested!r}: not allowed; it must be 0 (all) "
                f"or at most {source.num_batches}, the eval split's batches of "
                f"{self.data.eval_batch_size}"
            )
        if not source.train:
            self._check_no_padding_is_mixed(source.num_examples, source.num_batches)

    def _check_no_padding_is_mixed(self, num_examples: int, num_batches: int) -> None:
        """The padding rule: an evaluation that mixes the rows of a batch ('linear' / 'optimal_q'
        noise with ``at_eval``) must see no padding rows, which would leak into the real rows.

        The eval walk pads its last batch when the batch does not divide the split; that batch is
        refused (a one-line error) unless ``data.num_eval_batches`` stops before it."""
        noise = self.noise
        if not (noise.at_eval and noise.kind in BATCH_MIXING_NOISE_KINDS):
            return
        batch_size = self.data.eval_batch_size
        evaluated = (self.data.num_eval_batches or num_batches) * batch_size
        if evaluated > num_examples:
            raise cs.ConfigError(
                f"config.data.eval_batch_size = {batch_size!r}: not allowed; with "
                f"model.noise.kind = {noise.kind!r} and model.noise.at_eval = True an evaluation "
                "batch mixes its rows, so it must hold no padding rows: it must divide the eval "
                f"split's {num_examples} examples, or data.num_eval_batches must be at most "
                f"{num_examples // batch_size} (full batches only)"
            )

    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        return self._source(True, process_index, process_count)

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        return self._source(False, process_index, process_count)

    @functools.cached_property
    def _eval_source(self) -> BatchSource:
        """The whole eval split on one process, for reports (built on first use: a benchmark on
        synthetic batches never opens the dataset)."""
        return self.eval_source(0, 1)

    @functools.cached_property
    def num_eval_batches(self) -> int:
        return self.data.num_eval_batches or self._eval_source.num_batches

    # --- pure steps -------------------------------------------------------------------------
    def _normalise(self, images: jax.Array) -> jax.Array:
        """Images (uint8, or float in [0, 1]) standardised with the ImageNet channel statistics."""
        return (unit_rgb(images) - IMAGENET_MEAN) / IMAGENET_STD

    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> TrainState:
        example = jnp.zeros((1, *example_batch["image"].shape[1:]), jnp.float32)
        return init_train_state(
            self.model,
            rng,
            example,
            self.tx,
            transient_collections=TRANSIENT_COLLECTIONS,
            train=False,
        )

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        model = build_model(self.model_config, parallel)
        stability = self.stability
        rngs = step_rngs(state.rng, state.step, ("noise", "stability_noise"))
        stability_noise_key = rngs.pop("stability_noise")
        # A frozen backbone keeps its BatchNorm statistics: running averages, not batch ones.
        backbone_trains = self.finetune.trainable == "all"
        loss_config = self.loss_config
        images = unit_rgb(batch["image"])
        labels = optax.smooth_labels(
            jax.nn.one_hot(batch["label"], self.model_config.num_classes),
            loss_config.label_smoothing,
        )

        def forward(params: Any, images: jax.Array) -> tuple[jax.Array, Any]:
            logits, updates = model.apply(
                {"params": params, **state.model_state},
                self._normalise(images),
                train=backbone_trains,
                positions=batch["position"],
                rngs=rngs,
                mutable=["batch_stats", "penalties"] if backbone_trains else ["penalties"],
            )
            return logits.astype(jnp.float32), updates

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
            logits, updates = forward(params, images)
            cross_entropy = jnp.mean(optax.softmax_cross_entropy(logits, labels))
            penalty = exponent_penalty(
                updates.get("penalties", {}), loss_config.alpha_l1, loss_config.alpha_l2
            )
            step_metrics = {
                "cross_entropy": cross_entropy,
                "alpha_penalty": penalty,
                "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            }
            loss = cross_entropy + penalty
            if stability.weight > 0:
                image_shape = images.shape[1:]
                noise = per_example(
                    stability_noise_key,
                    batch["position"],
                    lambda key: jax.random.normal(key, image_shape),
                )
                noisy_logits, _ = forward(params, images + stability.noise_std * noise)
                divergence = jnp.mean(stability_divergence(logits, noisy_logits))
                step_metrics["stability_kl"] = divergence
                loss = loss + stability.weight * divergence
            step_metrics["loss"] = loss
            # A ViT has no BatchNorm: its model state stays as it is.
            new_state = {k: v for k, v in updates.items() if k in state.model_state}
            return loss, (new_state, step_metrics)

        grads, (new_state, step_metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        model_state = {**state.model_state, **new_state}
        return apply_mean_gradients(state, grads, step_metrics, parallel, model_state=model_state)

    def _evaluation_logits(
        self,
        state: TrainState,
        images: jax.Array,
        positions: jax.Array | None = None,
        parallel: ParallelContext = SINGLE_DEVICE,
        *,
        noise_at_eval: bool | None = None,
        batch_norm_batch_stats: bool = False,
    ) -> jax.Array:
        """(B, K) float32 logits of uint8 / [0, 1] images in evaluation mode: the noise acts iff
        ``noise_at_eval`` (None: ``model.noise.at_eval``), drawing from the step's 'eval' key
        and the rows' ``positions``; BatchNorm uses its running statistics, or with
        ``batch_norm_batch_stats`` the batch's (the noise then acts as in training; nothing is
        stored)."""
        model = build_model(self.model_config, parallel, noise_at_eval=noise_at_eval)
        draws = self.noise.kind in RANDOM_NOISE_KINDS and (
            batch_norm_batch_stats
            or (self.noise.at_eval if noise_at_eval is None else noise_at_eval)
        )
        rngs = step_rngs(state.rng, state.step, ("noise",), kind="eval") if draws else None
        logits = model.apply(
            state.variables,
            self._normalise(images),
            train=batch_norm_batch_stats,
            positions=positions,
            rngs=rngs,
            mutable=["batch_stats"] if batch_norm_batch_stats else False,
        )
        if batch_norm_batch_stats:
            logits, _ = logits  # the batch statistics are not kept
        return logits.astype(jnp.float32)

    def logits(
        self, state: TrainState, images: jax.Array, positions: jax.Array | None = None
    ) -> jax.Array:
        """Evaluation-mode logits (running BatchNorm statistics; the noise as configured, i.e.
        with ``model.noise.at_eval``) of uint8 images or float images in [0, 1], single device.
        ``positions``: the rows' global positions (None: their indices in ``images``)."""
        return self._evaluation_logits(state, images, positions)

    def predict_fn(
        self, *, inject: bool, batch_norm_batch_stats: bool = False
    ) -> Callable[[TrainState, jax.Array, jax.Array], jax.Array]:
        """A jitted single-device ``(state, images, positions) -> logits`` for audits.

        ``images``: (B, H, W, C) as the data source gives them (uint8, or float in [0, 1]);
        ``positions``: (B,) int, the rows' global positions (the Gaussian and salt-and-pepper
        draws are keyed by them and the step's 'eval' key, as in `eval_step`); logits: (B, K)
        float32.

        * ``inject=False``: the plain evaluation model: no noise (whatever ``at_eval`` says),
          running BatchNorm statistics. No row depends on another.
        * ``inject=True``: the model's sample-mixing layers act at evaluation: the configured
          ``model.noise`` as if ``at_eval=True`` (for 'linear' / 'optimal_q' each row then
          depends on the rest of the batch); and with ``batch_norm_batch_stats=True`` BatchNorm
          normalises with the batch's statistics (ResNet only), the other layer that mixes
          samples, e.g. for a model with ``model.noise.kind = 'none'``.

        Every row given is mixed with the others: pass real rows only (a shorter last batch, not
        padding; a new batch size compiles anew). ValueError for ``batch_norm_batch_stats``
        without ``inject`` or on a ViT.
        """
        if batch_norm_batch_stats and not inject:
            raise ValueError("batch_norm_batch_stats=True needs inject=True (it mixes samples).")
        if batch_norm_batch_stats and self.model_config.architecture != "resnet":
            raise ValueError(
                f"batch_norm_batch_stats=True: model.architecture = "
                f"{self.model_config.architecture!r} has no BatchNorm."
            )
        predict = functools.partial(
            self._evaluation_logits,
            noise_at_eval=inject,
            batch_norm_batch_stats=batch_norm_batch_stats,
        )
        return jax.jit(lambda state, images, positions: predict(state, images, positions))

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        logits = self._evaluation_logits(state, batch["image"], batch["position"], parallel)
        labels = batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        top_k = min(5, logits.shape[-1])
        _, ranked = jax.lax.top_k(logits, top_k)
        sums = {
            "accuracy": jnp.sum(mask * (ranked[:, 0] == labels)),
            f"top{top_k}_accuracy": jnp.sum(mask * jnp.any(ranked == labels[:, None], axis=-1)),
            "cross_entropy": jnp.sum(
                mask * optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            ),
            WEIGHT_KEY: jnp.sum(mask),
        }
        sums = cross_replica_sum(sums, parallel)
        count = jnp.maximum(sums[WEIGHT_KEY], 1.0)
        return {k: (v if k == WEIGHT_KEY else v / count) for k, v in sums.items()}

    # --- host-side report and evaluation modes ----------------------------------------------
    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """A PNG of test images titled 'label → prediction'."""
        batch = self._eval_source.batch(0)
        count = min(16, int(batch["mask"].sum()))
        logits = jax.jit(self.logits)(
            state, jnp.asarray(batch["image"][:count]), jnp.asarray(batch["position"][:count])
        )
        predictions = np.asarray(jnp.argmax(logits, -1))
        titles = [
            f"{int(y)} → {int(p)}" for y, p in zip(batch["label"][:count], predictions, strict=True)
        ]
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        save_image_grid(
            os.path.join(out, "predictions.png"),
            list(unit_rgb(batch["image"][:count])),
            titles,
            ncols=8,
            value_range=(0.0, 1.0),
        )
        correct = predictions == batch["label"][:count]
        return {"report_batch_accuracy": float(np.mean(correct))}

    def model_name(self) -> str:
        """The Table 2 row name: 'ResNet18', 'ResNet50+HPOW', 'ResNet18+Stability',
        'ViT-B+Linear', 'ResNet18+OptimalQ'..."""
        model = self.model_config
        kind = model.quantizer.kind
        name = f"ViT-{model.vit_size}" if model.architecture == "vit" else f"ResNet{model.depth}"
        if kind != "none":
            name += "+" + kind.upper().replace("_", "-")
        if self.noise.kind != "none":
            name += "+" + self.noise.kind.title().replace("_", "")
        if self.stability.weight > 0:
            name += "+Stability"
        return name

    def warm_start(self, state: TrainState) -> TrainState:
        """Params and BatchNorm statistics from ``finetune.init_workdir``'s latest checkpoint."""
        source = self.finetune.init_workdir
        if source is None:
            return state
        pretrained_task, pretrained = restore_run(source, key="finetune.init_workdir")
        differing = cs.differences(pretrained_task.config["model"], self.config["model"])
        if differing:
            raise cs.ConfigError(
                f"config.finetune.init_workdir = {source!r}: not allowed; that run's config.model "
                "must equal this one, but differs in "
                + ", ".join(f"model.{key} ({theirs!r} there)" for key, theirs, _ in differing)
            )
        return state.replace(
            params=pretrained.params,
            model_state=pretrained.model_state,
            opt_state=self.tx.init(pretrained.params),
        )

    def run_mode(self, mode: str, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """``config.mode``: ``'robustness'`` writes the distortion benchmark of the checkpoint,
        ``'leakage_audit'`` its cross-sample leakage audit."""
        if mode == "robustness":
            return self.robustness_report(state, workdir)
        if mode == "leakage_audit":
            return self.leakage_report(state, workdir)
        raise cs.ConfigError(f"config.mode = {mode!r}: allowed: {', '.join(MODES)}")

    def leakage_report(self, state: TrainState, workdir: str) -> dict[str, float]:
        """The leakage audit (`metrics.leakage.leakage_audit`) of the checkpoint: writes
        ``workdir/leakage/audit.json``, ``audit.md`` and ``audit.png``; returns each setting's
        accuracy (``leakage/<setting>``) and the independence summary's numbers.

        What mixes samples at evaluation: the configured ``model.noise`` (as if
        ``at_eval=True``); for ``kind='none'`` a ResNet's BatchNorm with batch statistics
        (training mode), the other layer that mixes rows. The audited rows are the real rows of
        the eval stream (its padding dropped), with their positions in it.
        """
        from noise_research.metrics.leakage import leakage_audit

        options = self.leakage
        mixes_by_batch_norm = self.noise.kind == "none"
        if mixes_by_batch_norm and self.model_config.architecture != "resnet":
            raise cs.ConfigError(
                "config.mode = 'leakage_audit': nothing in this model mixes samples "
                "(model.noise.kind = 'none' and a ViT has no BatchNorm); allowed: a model.noise "
                "kind, or model.architecture = 'resnet' (BatchNorm with batch statistics)"
            )
        predict_on = self.predict_fn(inject=True, batch_norm_batch_stats=mixes_by_batch_norm)
        predict_off = self.predict_fn(inject=False)
        images, labels, positions = self._real_eval_rows(options.num_samples)
        result = leakage_audit(
            lambda x, p: predict_on(state, jnp.asarray(x), jnp.asarray(p)),
            lambda x, p: predict_off(state, jnp.asarray(x), jnp.asarray(p)),
            images,
            labels,
            positions,
            batch_sizes=options.batch_sizes,
            seed=options.seed,
            independence_samples=min(options.independence_samples, len(labels)),
            out_dir=os.path.join(workdir, "leakage"),
            title=self.model_name() + (" (BatchNorm in training mode)" * mixes_by_batch_norm),
            progress=self.config["train"]["progress"],
        )
        independence = {
            f"leakage/independence_{key}": float(value)
            for key, value in result["independence"].get("on", {}).items()
            if isinstance(value, (int, float))
        }
        settings = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        return {**{f"leakage/{k}": float(v) for k, v in settings.items()}, **independence}

    def _real_eval_rows(self, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images, labels and positions of the eval stream's real rows (padding dropped), the
        first ``limit`` of them (0: all of the ``num_eval_batches`` batches)."""
        images, labels, positions, count = [], [], [], 0
        for index in range(self.num_eval_batches):
            batch = self._eval_source.batch(index)
            real = np.asarray(batch["mask"]) > 0
            images.append(np.asarray(batch["image"])[real])
            labels.append(np.asarray(batch["label"])[real])
            positions.append(np.asarray(batch["position"])[real])
            count += int(real.sum())
            if limit and count >= limit:
                break
        rows = slice(0, limit or None)
        return (
            np.concatenate(images)[rows],
            np.concatenate(labels)[rows],
            np.concatenate(positions)[rows],
        )

    def table_metric(self) -> str:
        """Table 2's metric: ``robustness.table_metric``, or for 'auto' top-5 on large label sets
        (ImageNet, the paper's Table 2) and top-1 on small ones (`default_table_metric`)."""
        chosen = self.robustness.table_metric
        if chosen == "auto":
            return default_table_metric(self.model_config.num_classes)
        return chosen

    def robustness_report(self, state: TrainState, workdir: str) -> dict[str, float]:
        """Clean and distorted accuracy on the eval split: Table 2, Figure 4 and a gallery.

        The targeted occlusion (section 3.1) occludes where a reference model's gradient saliency
        of each image's true class is highest. As in the paper (one pre-trained Plain-18 for every
        row), the reference is the checkpoint of another run, ``robustness.saliency_workdir``
        (required), so that every compared model sees the same occlusions; the result records it
        (``occlusion_reference``) and the multi-run table refuses results of different ones.
        Writes ``workdir/robustness/`` and returns the Table 2 row.
        """
        options = self.robustness
        reference = options.saliency_workdir
        if reference is None:
            raise cs.ConfigError(
                "config.robustness.saliency_workdir = None: not allowed; mode='robustness' needs "
                "the workdir of a trained reference run (the paper: a plain ResNet-18) whose "
                "true-class saliency places the targeted occlusions of every compared model"
            )
        logits_fn = jax.jit(functools.partial(self.logits, state))
        reference_task, reference_state = restore_run(reference, key="robustness.saliency_workdir")
        reference_classes = reference_task.model_config.num_classes
        if reference_classes != self.model_config.num_classes:
            raise cs.ConfigError(
                f"config.robustness.saliency_workdir = {reference!r}: not allowed; that run's "
                f"model has {reference_classes} classes, this one "
                f"{self.model_config.num_classes}"
            )
        saliency_fn = gradient_saliency(
            jax.jit(functools.partial(reference_task.logits, reference_state))
        )
        occlusion_reference = {
            "workdir": os.path.realpath(reference),
            "step": int(reference_state.step),
            "model": reference_task.model_name(),
            "saliency_class": "true",
        }
        source = self._eval_source
        batches = (  # streamed, not held
            {**batch, "image": unit_rgb(batch["image"])}
            for batch in map(source.batch, range(self.num_eval_batches))
        )
        # The cheap 'rbg' generator: the distortions compile several times faster than threefry.
        key = jax.random.key(options.seed, impl="rbg")
        result = evaluate_robustness(
            logits_fn, batches, key, saliency_fn, num_batches=self.num_eval_batches
        )
        result["table_metric"] = self.table_metric()
        result["occlusion_reference"] = occlusion_reference
        name = options.model_name or self.model_name()
        out = os.path.join(workdir, "robustness")
        write_robustness_report(out, {name: result})
        first_batch = source.batch(0)
        save_distortion_gallery(
            os.path.join(out, "gallery.png"),
            unit_rgb(first_batch["image"][:1])[0],
            key,
            saliency_fn,
            label=int(first_batch["label"][0]),
        )
        return {f"table2/{column}": value for column, value in table2_row(result).items()}


def stability_divergence(clean_logits: jax.Array, noisy_logits: jax.Array) -> jax.Array:
    """Per-example ``KL(p(y|I) ‖ p(y|I + ε))`` of stability training, from logits.

    Both distributions stay in log space: a clean probability that underflows to 0 (a logit gap
    beyond ~88 in float32) contributes 0 with a finite gradient instead of 0·log 0 = NaN.
    """
    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(noisy_logits), jax.nn.log_softmax(clean_logits)
    )


def with_new_keys_at_default(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (another run's, as saved) with every key that this version of the code added
    since, at its default (the workdir convention: a new key's default keeps the old behaviour)."""
    config = json.loads(json.dumps(config))  # a deep copy
    for dotted, default in cs.default_values(SECTIONS).items():
        *sections, leaf = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node.setdefault(leaf, default)
    return config


def restore_run(workdir: str, *, key: str) -> tuple[ClassifyTask, TrainState]:
    """The task and latest checkpointed state of another classification run (``key`` names the
    config key that pointed at it, for the error message)."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise cs.ConfigError(f"{key} = {workdir!r}: no config.json there (not a run directory)")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except ValueError as error:
        raise cs.ConfigError(f"{key} = {workdir!r}: {config_path} is not JSON ({error})") from None
    task = ClassifyTask(with_new_keys_at_default(config))
    restored = restore_state(task, cs.read_section(LoopConfig, config["train"]), workdir)
    if restored is None:
        raise cs.ConfigError(f"{key} = {workdir!r} has no checkpoint")
    return task, restored[0]


def only_classifier(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` on the classifier's params; every other param is frozen (zero updates)."""

    def labels(params: Any) -> dict[str, str]:  # a prefix of the params tree: one per module
        return {name: "trainable" if name == CLASSIFIER else "frozen" for name in params}

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
