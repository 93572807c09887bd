"""Image classification with feature quantization (the feature-quantization paper, section 3).

A ResNet whose convolutions can quantize their inputs (``model.quantizer.kind``): plain, SF
(scalable floor, eq. 3), POW (learnable signed power, eq. 5), HPOW (hyper-network exponents,
eq. 7), SF-POW, or the DoReFa baseline (weights 1 bit, activations 4 bits). The quantizing conv
sits before every conv (``where='all'``) or only before the 3×3 convs (``'3x3'``, the paper's
ResNet-50 setting). The loss is cross-entropy (optional label smoothing) plus the ℓ1 / ℓ2 penalties
on the exponents α that the POW / HPOW layers sow into the ``'penalties'`` collection.

Inputs are RGB in [0, 1]; the task normalises them with the ImageNet channel mean and std.
BatchNorm statistics are averaged across devices (global batch under jit, ``axis_name`` under pmap).

The paper's stability-training baseline (section 3.2, after Zheng et al. 2016): start from another
run's checkpoint (``finetune.init_workdir``), train only the classifier (``finetune.trainable =
'classifier'``; the backbone and its BatchNorm statistics stay frozen) with the loss
``CE(f(I)) + λ·KL(p(y|I) ‖ p(y|I + ε))``, ε ~ N(0, σ²) per pixel on the [0, 1] image, σ = 0.04 and
λ = 0.01 (``stability.noise_std``, ``stability.weight``; weight 0 turns the term off).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource
from noise_research.data.distortions import gradient_saliency, save_distortion_gallery
from noise_research.layers.quantization import (
    GROUPED_QUANTIZATIONS,
    QUANTIZATIONS,
    DoReFaConv,
    QuantizedConv,
    exponent_penalty,
)
from noise_research.metrics.robustness import (
    evaluate_robustness,
    table2_row,
    write_robustness_report,
)
from noise_research.models.resnet import ResNet
from noise_research.train.loop import WEIGHT_KEY, LoopConfig, loop_config_rules, restore_state
from noise_research.train.parallel import cross_replica_mean, cross_replica_sum
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState
from noise_research.viz import save_image_grid

if TYPE_CHECKING:
    from noise_research.data.classification import DigitsBatches, TfdsClassificationBatches

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
QUANTIZER_KINDS = (*QUANTIZATIONS, "dorefa")
QUANTIZER_PLACES = ("all", "3x3")
DEPTHS = (10, 18, 34, 50, 101)
STEMS = ("imagenet", "small")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16")
MODES = ("train", "robustness")
TRAINABLE = ("all", "classifier")
CLASSIFIER = "classifier"  # the ResNet's final dense layer (its params subtree)
# Collections a forward pass may create that are not state: recomputed on every call.
TRANSIENT_COLLECTIONS = ("penalties", "intermediates")


def config_rules() -> dict[str, cs.Rule]:
    """Every key a classification config may hold, and what each allows."""
    return {
        "task": cs.one_of("classify"),
        "mode": cs.one_of(*MODES),
        **loop_config_rules(),
        "data.name": cs.text(),
        "data.train_split": cs.text(),
        "data.eval_split": cs.text(),
        "data.data_dir": cs.optional(cs.text()),
        "data.image_size": cs.integer(minimum=8),
        "data.batch_size": cs.batch_size(),
        "data.eval_batch_size": cs.batch_size(),
        "data.num_eval_batches": cs.integer(minimum=0),
        "data.seed": cs.integer(minimum=0),
        "model.depth": cs.one_of(*DEPTHS),
        "model.stem": cs.one_of(*STEMS),
        "model.width": cs.integer(minimum=1),
        "model.num_classes": cs.integer(minimum=2),
        "model.dtype": cs.one_of(*DTYPES),
        "model.quantizer.kind": cs.one_of(*QUANTIZER_KINDS),
        "model.quantizer.where": cs.one_of(*QUANTIZER_PLACES),
        "model.quantizer.groups": cs.Rule(
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
        "model.quantizer.floor_scale": cs.positive_number(),
        "model.quantizer.learnable_floor_scale": cs.boolean(),
        "model.quantizer.hyper_hidden_features": cs.integer(minimum=1),
        "model.quantizer.activation_bits": cs.integer(minimum=1, maximum=16),
        "loss.label_smoothing": cs.fraction_below_one(),
        "loss.alpha_l1": cs.number(minimum=0.0),
        "loss.alpha_l2": cs.number(minimum=0.0),
        "optimizer.name": cs.one_of(*OPTIMIZERS),
        "optimizer.learning_rate": cs.positive_number(),
        "optimizer.momentum": cs.fraction_below_one(),
        "optimizer.weight_decay": cs.number(minimum=0.0),
        "optimizer.schedule": cs.one_of(*SCHEDULES),
        "optimizer.warmup_steps": cs.Rule(
            lambda v, c: cs.integer(minimum=0).check(v, c) and v < c.get("train.num_steps"),
            lambda c: f"an integer >= 0 and below train.num_steps ({c.get('train.num_steps')})",
        ),
        "optimizer.step_boundaries": cs.Rule(
            _valid_step_boundaries,
            lambda c: (
                "an increasing tuple of fractions of train.num_steps in (0, 1), with "
                "optimizer.schedule = 'step' each after the warm-up "
                f"(> optimizer.warmup_steps / train.num_steps = "
                f"{c.get('optimizer.warmup_steps') / c.get('train.num_steps'):.3g})"
            ),
        ),
        "optimizer.step_factor": cs.Rule(
            lambda v, c: cs.positive_number().check(v, c) and v <= 1, "a number in (0, 1]"
        ),
        "finetune.init_workdir": cs.optional(cs.text()),
        "finetune.trainable": cs.Rule(
            lambda v, c: (
                v in TRAINABLE and (v == "all" or c.get("finetune.init_workdir") is not None)
            ),
            "'all', or 'classifier' together with finetune.init_workdir (the run to fine-tune)",
        ),
        "stability.weight": cs.number(minimum=0.0),
        "stability.noise_std": cs.positive_number(),
        "robustness.model_name": cs.optional(cs.text()),
        "robustness.saliency_workdir": cs.optional(cs.text()),
        "robustness.seed": cs.integer(minimum=0),
    }


def _valid_step_boundaries(boundaries: Any, context: cs.Context) -> bool:
    if not isinstance(boundaries, tuple | list) or not all(
        cs.number().check(b, context) and 0 < b < 1 for b in boundaries
    ):
        return False
    if list(boundaries) != sorted(set(boundaries)):
        return False
    if context.get("optimizer.schedule") != "step":
        return True
    warmup_fraction = context.get("optimizer.warmup_steps") / context.get("train.num_steps")
    return all(b > warmup_fraction for b in boundaries)


def build(config: Mapping[str, Any]) -> ClassifyTask:
    """The task for a validated config (a plain nested dict)."""
    return ClassifyTask(config)


def quantizing_conv(quantizer: Mapping[str, Any]) -> type[nn.Module] | functools.partial:
    """The conv class that applies ``quantizer['kind']`` to its input (``nn.Conv`` for 'none')."""
    kind = quantizer["kind"]
    if kind == "none":
        return nn.Conv
    if kind == "dorefa":
        return functools.partial(DoReFaConv, activation_bits=quantizer["activation_bits"])
    return functools.partial(
        QuantizedConv,
        quantization=kind,
        groups=quantizer["groups"],
        floor_scale=quantizer["floor_scale"],
        learnable_floor_scale=quantizer["learnable_floor_scale"],
        hyper_hidden_features=quantizer["hyper_hidden_features"],
    )


class ClassifyTask:
    """Train / eval steps of the classifier (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        model = config["model"]
        conv = quantizing_conv(model["quantizer"])
        self.model = ResNet(
            depth=model["depth"],
            num_classes=model["num_classes"],
            stem=model["stem"],
            width=model["width"],
            conv3x3=conv,
            conv1x1=conv if model["quantizer"]["where"] == "all" else nn.Conv,
            dtype=jnp.dtype(model["dtype"]),
        )
        self.tx = make_optimizer(config["optimizer"], config["train"]["num_steps"])
        if config["finetune"]["trainable"] == "classifier":
            self.tx = only_classifier(self.tx)

    # --- data -------------------------------------------------------------------------------
    def _source(
        self, train: bool, process_index: int, process_count: int
    ) -> DigitsBatches | TfdsClassificationBatches:
        from noise_research.data.classification import DigitsBatches, TfdsClassificationBatches

        data = self.config["data"]
        common = dict(
            global_batch_size=data["batch_size"] if train else data["eval_batch_size"],
            image_size=data["image_size"],
            train=train,
            seed=data["seed"],
            process_index=process_index,
            process_count=process_count,
        )
        if data["name"] == "digits":
            source = DigitsBatches(**common)
        else:
            source = TfdsClassificationBatches(
                data["name"],
                split=data["train_split"] if train else data["eval_split"],
                data_dir=data["data_dir"],
                **common,
            )
        self._check_against_data(source)
        return source

    def _check_against_data(self, source: DigitsBatches | TfdsClassificationBatches) -> None:
        """The config values only the data set can check (before anything compiles)."""
        num_classes = self.config["model"]["num_classes"]
        if source.num_classes is not None and num_classes != source.num_classes:
            raise cs.ConfigError(
                f"config.model.num_classes = {num_classes!r}: not allowed; data set "
                f"{self.config['data']['name']!r} has {source.num_classes} classes"
            )
        requested = self.config["data"]["num_eval_batches"]
        if not source.train and requested > source.num_batches:
            raise cs.ConfigError(
                f"config.data.num_eval_batches = {requested!r}: not allowed; it must be 0 (all) "
                f"or at most {source.num_batches}, the eval split's batches of "
                f"{self.config['data']['eval_batch_size']}"
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
        return self.config["data"]["num_eval_batches"] or self._eval_source.num_batches

    # --- pure steps -------------------------------------------------------------------------
    def _normalise(self, images: jax.Array) -> jax.Array:
        return (images - IMAGENET_MEAN) / IMAGENET_STD

    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> TrainState:
        params_key, noise_key, state_key = jax.random.split(rng, 3)
        example = jnp.zeros((1, *example_batch["image"].shape[1:]), jnp.float32)
        variables = self.model.init(
            {"params": params_key, "noise": noise_key}, example, train=False
        )
        variables = {k: v for k, v in variables.items() if k not in TRANSIENT_COLLECTIONS}
        return TrainState.create(variables=variables, tx=self.tx, rng=state_key)

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        model = self.model.clone(batch_norm_axis_name=axis_name)
        stability = self.config["stability"]
        rngs = step_rngs(state.rng, state.step, ("noise", "stability_noise"), axis_name)
        stability_noise_key = rngs.pop("stability_noise")
        # A frozen backbone keeps its BatchNorm statistics: running averages, not batch ones.
        backbone_trains = self.config["finetune"]["trainable"] == "all"
        num_classes = self.config["model"]["num_classes"]
        loss_config = self.config["loss"]
        labels = optax.smooth_labels(
            jax.nn.one_hot(batch["label"], num_classes), loss_config["label_smoothing"]
        )

        def forward(params: Any, images: jax.Array) -> tuple[jax.Array, Any]:
            logits, updates = model.apply(
                {"params": params, **state.model_state},
                self._normalise(images),
                train=backbone_trains,
                rngs=rngs,
                mutable=["batch_stats", "penalties"] if backbone_trains else ["penalties"],
            )
            return logits.astype(jnp.float32), updates

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
            logits, updates = forward(params, batch["image"])
            cross_entropy = jnp.mean(optax.softmax_cross_entropy(logits, labels))
            penalty = exponent_penalty(
                updates.get("penalties", {}), loss_config["alpha_l1"], loss_config["alpha_l2"]
            )
            step_metrics = {
                "cross_entropy": cross_entropy,
                "alpha_penalty": penalty,
                "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            }
            loss = cross_entropy + penalty
            if stability["weight"] > 0:
                noise = jax.random.normal(stability_noise_key, batch["image"].shape)
                noisy_logits, _ = forward(params, batch["image"] + stability["noise_std"] * noise)
                divergence = jnp.mean(stability_divergence(logits, noisy_logits))
                step_metrics["stability_kl"] = divergence
                loss = loss + stability["weight"] * divergence
            step_metrics["loss"] = loss
            batch_stats = updates.get("batch_stats", state.model_state.get("batch_stats"))
            return loss, (batch_stats, step_metrics)

        grads, (batch_stats, step_metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = cross_replica_mean(grads, axis_name)
        step_metrics = cross_replica_mean(step_metrics, axis_name)
        model_state = {**state.model_state, "batch_stats": batch_stats}
        return state.apply_gradients(grads, model_state=model_state), step_metrics

    def logits(self, state: TrainState, images: jax.Array) -> jax.Array:
        """Evaluation-mode logits (running BatchNorm statistics) of images in [0, 1]."""
        return self.model.apply(state.variables, self._normalise(images), train=False).astype(
            jnp.float32
        )

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None
    ) -> dict[str, jax.Array]:
        logits = self.logits(state, batch["image"])
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
        sums = cross_replica_sum(sums, axis_name)
        count = jnp.maximum(sums[WEIGHT_KEY], 1.0)
        return {k: (v if k == WEIGHT_KEY else v / count) for k, v in sums.items()}

    # --- host-side report and evaluation modes ----------------------------------------------
    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """A PNG of test images titled 'label → prediction'."""
        batch = self._eval_source.batch(0)
        count = min(16, int(batch["mask"].sum()))
        logits = jax.jit(self.logits)(state, jnp.asarray(batch["image"][:count]))
        predictions = np.asarray(jnp.argmax(logits, -1))
        titles = [
            f"{int(y)} → {int(p)}" for y, p in zip(batch["label"][:count], predictions, strict=True)
        ]
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        save_image_grid(
            os.path.join(out, "predictions.png"),
            list(batch["image"][:count]),
            titles,
            ncols=8,
            value_range=(0.0, 1.0),
        )
        correct = predictions == batch["label"][:count]
        return {"report_batch_accuracy": float(np.mean(correct))}

    def model_name(self) -> str:
        """The Table 2 row name: 'ResNet18', 'ResNet50+HPOW', 'ResNet18+Stability'..."""
        model = self.config["model"]
        kind = model["quantizer"]["kind"]
        name = f"ResNet{model['depth']}"
        if kind != "none":
            name += "+" + kind.upper().replace("_", "-")
        if self.config["stability"]["weight"] > 0:
            name += "+Stability"
        return name

    def warm_start(self, state: TrainState) -> TrainState:
        """Params and BatchNorm statistics from ``finetune.init_workdir``'s latest checkpoint."""
        source = self.config["finetune"]["init_workdir"]
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
        """``config.mode``: ``'robustness'`` writes the distortion benchmark of the checkpoint."""
        if mode != "robustness":
            raise ValueError(f"config.mode = {mode!r}: allowed: {', '.join(MODES)}")
        return self.robustness_report(state, workdir)

    def robustness_report(self, state: TrainState, workdir: str) -> dict[str, float]:
        """Clean and distorted accuracy on the eval split: Table 2, Figure 4 and a gallery.

        The targeted occlusion needs a saliency map: from the model itself (white-box) by default,
        or, as in the paper (a pre-trained Plain-18), from the checkpoint of another run given as
        ``robustness.saliency_workdir`` so that every compared model sees the same occlusions.
        Writes ``workdir/robustness/`` and returns the Table 2 row.
        """
        options = self.config["robustness"]
        logits_fn = jax.jit(functools.partial(self.logits, state))
        reference = options["saliency_workdir"]
        saliency_logits_fn = logits_fn
        if reference is not None:
            reference_task, reference_state = restore_run(
                reference, key="robustness.saliency_workdir"
            )
            saliency_logits_fn = jax.jit(functools.partial(reference_task.logits, reference_state))
        saliency_fn = gradient_saliency(saliency_logits_fn)
        source = self._eval_source
        batches = (source.batch(i) for i in range(self.num_eval_batches))  # streamed, not held
        # The cheap 'rbg' generator: the distortions compile several times faster than threefry.
        key = jax.random.key(options["seed"], impl="rbg")
        result = evaluate_robustness(
            logits_fn, batches, key, saliency_fn, num_batches=self.num_eval_batches
        )
        name = options["model_name"] or self.model_name()
        out = os.path.join(workdir, "robustness")
        write_robustness_report(out, {name: result})
        save_distortion_gallery(
            os.path.join(out, "gallery.png"), source.batch(0)["image"][0], key, saliency_fn
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


def restore_run(workdir: str, *, key: str) -> tuple[ClassifyTask, TrainState]:
    """The task and latest checkpointed state of another classification run (``key`` names the
    config key that pointed at it, for the error message)."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{key} = {workdir!r}: no config.json there (not a run directory)")
    with open(config_path) as f:
        config = json.load(f)
    task = ClassifyTask(config)
    restored = restore_state(task, LoopConfig(**config["train"]), workdir)
    if restored is None:
        raise FileNotFoundError(f"{key} = {workdir!r} has no checkpoint")
    return task, restored[0]


def only_classifier(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` on the classifier's params; every other param is frozen (zero updates)."""

    def labels(params: Any) -> dict[str, str]:  # a prefix of the params tree: one per module
        return {name: "trainable" if name == CLASSIFIER else "frozen" for name in params}

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(config: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
    """SGD with momentum or AdamW; cosine, step or constant schedule after a linear warm-up."""
    peak, warmup = config["learning_rate"], config["warmup_steps"]
    if config["schedule"] == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1)
        )
    else:
        if config["schedule"] == "step":
            # Boundaries are fractions of the whole run; the schedule starts after the warm-up.
            boundaries = {
                max(int(fraction * num_steps) - warmup, 1): config["step_factor"]
                for fraction in config["step_boundaries"]
            }
            after_warmup = optax.piecewise_constant_schedule(peak, boundaries)
        else:
            after_warmup = optax.constant_schedule(peak)
        schedule = (
            optax.join_schedules(
                [optax.linear_schedule(0.0, peak, max(warmup, 1)), after_warmup], [warmup]
            )
            if warmup
            else after_warmup
        )
    if config["name"] == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config["weight_decay"], mask=decays),
            optax.sgd(schedule, momentum=config["momentum"], nesterov=True),
        )
    return optax.adamw(
        schedule, b1=config["momentum"], weight_decay=config["weight_decay"], mask=decays
    )


def decays(params: Any) -> Any:
    """Which params weight decay shrinks: the conv and dense kernels only. Not the biases, the
    BatchNorm scales and offsets, nor the quantizers' exponents α and floor scales log β (a decay
    would pull every α to 0, the identity map, against what the layer learns)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )
