"""The classification experiment's full config (feature-quantization paper, section 3).

No public code exists for the paper: the defaults here are ours. ImageNet: ResNet-50, SGD with
Nesterov momentum 0.9, lr 0.1 at batch 256 (scale it with the batch: 0.1·batch/256), 5 warm-up
epochs and cosine decay, weight decay 1e-4 on the kernels, label smoothing 0.1; CIFAR-10:
ResNet-18 with the small stem. Quantizer defaults follow the paper: SF with β = 100 (SF-100), POW
with one exponent set shared by all output channels (Λ = 1).

The config-file argument picks the variant: a quantizer (``file.py:pow``), or ``stability``, the
paper's stability-training baseline: fine-tune the classifier of a trained plain run, given as
``--config.finetune.init_workdir=RUN``, with the KL term between clean and noised images.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from noise_research.tasks.classify import QUANTIZER_KINDS

VARIANT_ARGS = (*QUANTIZER_KINDS, "stability")


def variant_from_arg(arg: str | None) -> str:
    """The config-file argument (``file.py:pow``): a quantizer or 'stability'; empty is 'none'."""
    if arg in (None, ""):
        return "none"
    if arg not in VARIANT_ARGS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANT_ARGS)}")
    return arg


def quantizer_of(variant: str) -> str:
    """The quantizer of a variant (the stability baseline fine-tunes a plain network)."""
    return "none" if variant == "stability" else variant


def stability_finetune(config: ml_collections.ConfigDict, *, num_steps: int) -> None:
    """Turns ``config`` into the stability-training fine-tune of its classifier (λ = 0.01,
    σ = 0.04 as in Zheng et al. 2016's classification runs), at a tenth of the learning rate, no
    warm-up. The run to start from must be given as ``--config.finetune.init_workdir``."""
    config.finetune.trainable = "classifier"
    config.stability.weight = 0.01
    config.stability.noise_std = 0.04
    config.train.num_steps = num_steps
    config.optimizer.learning_rate /= 10
    config.optimizer.warmup_steps = 0


def classify_config(
    *, dataset: str, depth: int, stem: str, num_classes: int, image_size: int, quantizer: str
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classify"
    config.mode = "train"  # or "robustness": the distortion benchmark of the latest checkpoint

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 100_000
    config.train.seed = 0
    config.train.parallel = "jit"
    config.train.log_every = 100
    config.train.eval_every = 5_000
    config.train.report_every = 0
    config.train.final_report = True
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = 3
    config.train.async_checkpoints = True
    config.train.progress = True

    config.data = ml_collections.ConfigDict()
    config.data.name = dataset  # "digits" (embedded) or any TFDS classification dataset
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.data_dir = config_dict.placeholder(str)
    config.data.image_size = image_size
    config.data.batch_size = 256
    config.data.eval_batch_size = 256
    config.data.num_eval_batches = 0  # 0: the whole eval split
    config.data.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.depth = depth
    config.model.stem = stem  # "imagenet" (7×7/2 + max-pool) or "small" (3×3/1)
    config.model.width = 64
    config.model.num_classes = num_classes
    config.model.dtype = "float32"  # or "bfloat16" compute
    config.model.quantizer = ml_collections.ConfigDict()
    config.model.quantizer.kind = quantizer  # none | sf | pow | hpow | sf_pow | dorefa
    config.model.quantizer.where = "3x3" if depth >= 50 else "all"  # the paper's ResNet-50: 3×3
    config.model.quantizer.groups = 1  # Λ output-channel groups sharing exponents
    config.model.quantizer.floor_scale = 100.0  # β of SF-100
    config.model.quantizer.learnable_floor_scale = False
    config.model.quantizer.hyper_hidden_features = 16
    config.model.quantizer.activation_bits = 4  # DoReFa

    config.loss = ml_collections.ConfigDict()
    config.loss.label_smoothing = 0.1
    config.loss.alpha_l1 = 0.0
    config.loss.alpha_l2 = 1e-4

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 500
    config.optimizer.step_boundaries = (0.3, 0.6, 0.9)
    config.optimizer.step_factor = 0.1

    config.finetune = ml_collections.ConfigDict()
    # A run whose latest checkpoint gives the initial params and BatchNorm statistics.
    config.finetune.init_workdir = config_dict.placeholder(str)
    config.finetune.trainable = "all"  # or "classifier": everything else stays frozen

    config.stability = ml_collections.ConfigDict()
    config.stability.weight = 0.0  # λ of the KL(clean ‖ noised) term; 0: off
    config.stability.noise_std = 0.04  # σ of the Gaussian noise on [0, 1] images

    config.robustness = ml_collections.ConfigDict()
    config.robustness.model_name = config_dict.placeholder(str)  # Table 2 row; default from model
    # A run whose checkpoint gives the targeted occlusion's saliency (the paper: a Plain-18);
    # None: the evaluated model itself.
    config.robustness.saliency_workdir = config_dict.placeholder(str)
    config.robustness.seed = 0
    return config
