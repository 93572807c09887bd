"""The optimizer and learning-rate schedule of every trainer, and its config section."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from noise_research import config_schema as cs

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


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


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The ``optimizer`` section of every experiment config."""

    name: str = cs.setting(
        "adam",
        cs.one_of(*OPTIMIZERS),
        "'sgd' (Nesterov momentum), 'adam', or 'adamw' (Adam with decoupled weight decay)",
    )
    learning_rate: float = cs.setting(
        1e-4, cs.positive_number(), "the peak learning rate, reached after the warm-up"
    )
    momentum: float = cs.setting(0.9, cs.fraction_below_one(), "SGD's momentum; Adam's β1")
    weight_decay: float = cs.setting(
        0.0,
        cs.Rule(
            lambda v, c: (
                cs.number(minimum=0.0).check(v, c) and (v == 0 or c.get("optimizer.name") != "adam")
            ),
            "a number >= 0, and 0 with optimizer.name = 'adam' (use 'adamw' to decay weights)",
        ),
        "decay of the conv and dense kernels only (not biases, norms, quantizer exponents)",
    )
    schedule: str = cs.setting(
        "constant",
        cs.one_of(*SCHEDULES),
        "after the warm-up: 'constant', 'cosine' decay to 0 at the end, or 'step' drops",
    )
    warmup_steps: int = cs.setting(
        0,
        cs.Rule(
            lambda v, c: cs.integer(minimum=0).check(v, c) and v < c.get("train.num_steps"),
            lambda c: f"an integer >= 0 and below train.num_steps ({c.get('train.num_steps')})",
        ),
        "steps of linear warm-up from 0 to learning_rate",
    )
    step_boundaries: tuple[float, ...] = cs.setting(
        (0.3, 0.6, 0.9),
        cs.Rule(
            _valid_step_boundaries,
            lambda c: (
                "an increasing tuple of fractions of train.num_steps in (0, 1), with "
                "optimizer.schedule = 'step' each after the warm-up "
                f"(> optimizer.warmup_steps / train.num_steps = "
                f"{c.get('optimizer.warmup_steps') / c.get('train.num_steps'):.3g})"
            ),
        ),
        "with schedule 'step': where the rate is multiplied by step_factor, as run fractions",
    )
    step_factor: float = cs.setting(
        0.1,
        cs.Rule(lambda v, c: cs.positive_number().check(v, c) and v <= 1, "a number in (0, 1]"),
        "with schedule 'step': the factor at each boundary",
    )


def learning_rate_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0, then constant, cosine decay to 0 at ``num_steps``, or step drops."""
    peak, warmup = config.learning_rate, config.warmup_steps
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1)
        )
    if config.schedule == "step":
        # Boundaries are fractions of the whole run; the schedule starts after the warm-up.
        boundaries = {
            max(int(fraction * num_steps) - warmup, 1): config.step_factor
            for fraction in config.step_boundaries
        }
        after_warmup = optax.piecewise_constant_schedule(peak, boundaries)
    else:
        after_warmup = optax.constant_schedule(peak)
    if not warmup:
        return after_warmup
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after_warmup], [warmup])


def schedule_depends_on_num_steps(config: OptimizerConfig) -> bool:
    """Whether the learning rate at a step depends on the run's length (cosine and step drops
    are placed relative to ``train.num_steps``; a constant rate after the warm-up is not)."""
    return config.schedule != "constant"


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    """The optax transformation of an ``optimizer`` section for a run of ``num_steps`` steps."""
    schedule = learning_rate_schedule(config, num_steps)
    if config.name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decays),
            optax.sgd(schedule, momentum=config.momentum, nesterov=True),
        )
    if config.name == "adam":
        return optax.adam(schedule, b1=config.momentum)
    return optax.adamw(schedule, b1=config.momentum, weight_decay=config.weight_decay, mask=decays)


def decays(params: Any) -> Any:
    """Which params weight decay shrinks: the conv and dense kernels only. Not the biases, the
    norm scales and offsets, nor the quantizers' exponents α and floor scales log β (a decay
    would pull every α to 0, the identity map, against what the layer learns)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )
