"""GAN: StyleGAN2 discriminator + generator step time, no / Euclidean / Riemannian noise injection.

The issue's target: on a GPU, Riemannian noise injection costs at most 10 % over Euclidean, i.e. a
D+G iteration (one discriminator step plus one generator step) of the Riemannian model takes at
most 1.10 times the Euclidean one's. On a CPU the ratio is reported, not judged.

Each model is the GAN task's StyleGAN2 experiment (``gan.experiment_config(architecture=
'stylegan2')``: 128², config E, batch 32; ``--demo``: the task's CPU demo size, 32²), with the
options' sizes, injecting at every synthesis side. Its steps are the task's own
(``task.train_steps()``) compiled as the train loop compiles them (the jit backend on one
device, state donated), on a synthetic batch (random images in [−1, 1] and their positions; no
data set is opened). All injections are compiled first, then timed in interleaved rounds (each
round runs every kind of every injection once, so a change of a shared machine's load slows all
alike); each time is the median over ``--steps`` rounds after ``--warmup`` rounds, blocking on the
new state and the metrics:

* ``discriminator`` and ``generator``: the plain steps; their sum is the D+G iteration;
* with ``--regularised`` (the default): ``discriminator_r1`` and ``generator_path_length``, the
  lazy regularisers, and the amortised iteration as training runs it: one D step in
  ``loss.r1_every`` (16) is an R1 step, one G step in ``loss.path_length_every`` (4) a
  path-length step.

The JSON holds, per injection, the step times (ms), steps/s, each kind's compile time (tracing,
lowering and XLA compilation; a persistent compilation cache, when one is set, shortens it: its
folder is in ``environment.compilation_cache``), the state's init time (its compilation
included), the parameter counts, the iterations' ms, iterations/s and images/s (real images, one
batch per iteration); the ratios riemannian/euclidean and euclidean/none of every time; the
target and whether it is met (on a GPU; elsewhere ``met`` is null); the device, the JAX version
and every size.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from noise_research import config_schema as cs
from noise_research.bench.arguments import (
    BENCH_DEVICES,
    allowed_by,
    comma_separated,
    default_for_platform,
    options_named,
    output_path,
)
from noise_research.bench.timing import environment, interleaved_median_seconds, write_json

INJECTIONS = ("none", "euclidean", "riemannian")
"""The injections compared (``config.model.injection``), in the order they are timed."""

PLAIN_KINDS = ("discriminator", "generator")
REGULARISED_KINDS = ("discriminator_r1", "generator_path_length")

TARGET_MAX_RATIO = 1.10
"""The issue's bound on riemannian / euclidean D+G iteration time, on a GPU."""
TARGET_PLATFORMS = ("gpu",)

RATIOS = {
    "riemannian_over_euclidean": ("riemannian", "euclidean"),
    "euclidean_over_none": ("euclidean", "none"),
}
"""The ratios written: name -> (numerator injection, denominator injection)."""

OPTIONS = {
    "data.resolution": "--resolution",
    "data.batch_size": "--batch-size",
    "model.mbstd_group_size": "--batch-size",
    "loss.path_length_batch_shrink": "--batch-size",
    "model.channel_base": "--channel-base",
    "model.channel_max": "--channel-max",
    "model.latent_dim": "--latent-dim",
    "model.w_dim": "--w-dim",
    "model.mapping_layers": "--mapping-layers",
    "model.injection": "--injections",
}
"""The option that sets (or decides) each config key the benchmark changes."""

SIZE_KEYS = {
    "resolution": ("data", "resolution"),
    "batch_size": ("data", "batch_size"),
    "channel_base": ("model", "channel_base"),
    "channel_max": ("model", "channel_max"),
    "latent_dim": ("model", "latent_dim"),
    "w_dim": ("model", "w_dim"),
    "mapping_layers": ("model", "mapping_layers"),
}
"""Each size option's name in ``settings`` (and its argparse dest) -> its config section and key."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, on its subcommand's ``parser``."""
    parser.add_argument("--out", type=output_path, default="bench_results/gan.json")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start from the task's CPU demo config (32², channel_base 512, channel_max 64, "
        "latent/w 64, 2 mapping layers, batch 32) instead of the paper's 128² config E",
    )
    parser.add_argument(
        "--injections",
        type=comma_separated(allowed_by(cs.one_of(*INJECTIONS), str)),
        default=",".join(INJECTIONS),
        help=f"comma separated, of {', '.join(INJECTIONS)} (a ratio needs both its injections)",
    )
    size_help = {
        "resolution": "image side, a power of two >= 4 (config.data.resolution); default 128",
        "batch_size": "images per step (config.data.batch_size), divisible by the minibatch-std "
        "group (4) and the path-length shrink (2); default 32",
        "channel_base": "config.model.channel_base; default 16384 (C(side) = min(max, base/side))",
        "channel_max": "config.model.channel_max; default 512",
        "latent_dim": "dimension of z (config.model.latent_dim); default 512",
        "w_dim": "dimension of w (config.model.w_dim); default 512",
        "mapping_layers": "mapping network depth (config.model.mapping_layers); default 8",
    }
    for dest, text in size_help.items():
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=allowed_by(cs.integer(minimum=1)),
            default=None,
            help=text + " (--demo: the demo config's)",
        )
    parser.add_argument(
        "--steps",
        type=allowed_by(cs.integer(minimum=1)),
        default=None,
        help="timed rounds, each one step of every kind of every injection (the median is "
        "reported); default 20 (CPU: 3)",
    )
    parser.add_argument(
        "--warmup",
        type=allowed_by(cs.integer(minimum=0)),
        default=None,
        help="untimed rounds before them; default 3 (CPU: 1)",
    )
    parser.add_argument(
        "--regularised",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the R1 and path-length steps and the amortised iteration (off: two "
        "compilations fewer per injection, each the slowest to compile)",
    )


def _sides(resolution: int) -> tuple[int, ...]:
    """The synthesis sides 4, 8, …, ``resolution`` (injected at all of them, as config E is)."""
    sides, side = [], 4
    while side <= resolution:
        sides.append(side)
        side *= 2
    return tuple(sides)


def _config(injection: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The GAN config of one injection: the StyleGAN2 experiment's with the benchmark's sizes."""
    from noise_research.tasks import gan

    config = gan.experiment_config(
        architecture="stylegan2", injection=injection, demo=settings["demo"]
    ).to_dict()
    for name, (section, key) in SIZE_KEYS.items():
        config[section][key] = settings[name]
    resolution = settings["resolution"]
    if isinstance(resolution, int) and resolution >= 4 and resolution & (resolution - 1) == 0:
        config["model"]["inject_at"] = _sides(resolution)
    return config


def checked_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's settings (the options; the experiment's sizes and this machine's step
    counts for those not given), after every config it will build has passed the GAN config
    rules, before anything compiles.

    Raises ``ConfigError`` naming the option, the config key, the value and what is allowed.
    """
    from noise_research.tasks import gan

    base = gan.experiment_config(architecture="stylegan2", demo=args.demo).to_dict()
    settings: dict[str, Any] = dict(demo=args.demo, injections=args.injections)
    for name, (section, key) in SIZE_KEYS.items():
        given = getattr(args, name)
        settings[name] = base[section][key] if given is None else given
    settings.update(
        steps=default_for_platform(args.steps, accelerator=20, cpu=3),
        warmup=default_for_platform(args.warmup, accelerator=3, cpu=1),
        regularised=args.regularised,
    )
    rules = gan.config_rules()
    with options_named(OPTIONS):
        for injection in settings["injections"]:
            cs.validate(_config(injection, settings), rules, num_devices=BENCH_DEVICES)
    loss = base["loss"]
    settings.update(
        inject_at=list(_sides(settings["resolution"])),
        r1_every=loss["r1_every"],
        path_length_every=loss["path_length_every"],
    )
    return settings


def synthetic_batch(batch_size: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A GAN training batch without a data set: ``image`` uniform in [−1, 1], (B, R, R, 3)
    float32, and the rows' global ``position`` (int32), as the task's sources give them."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1.0, 1.0, (batch_size, resolution, resolution, 3)).astype(np.float32),
        "position": np.arange(batch_size, dtype=np.int32),
    }


def _parameter_count(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


@dataclasses.dataclass
class PreparedInjection:
    """One injection's task, its state on the device, the synthetic batch, and its step kinds
    compiled; ``state`` is replaced by every step (the old one is donated)."""

    injection: str
    state: Any
    batch: Any
    compiled: dict[str, Callable]
    compile_seconds: dict[str, float]
    init_seconds: float
    parameters: dict[str, int]

    def step(self, kind: str) -> None:
        """One step of ``kind``, blocking until the new state and the metrics are ready."""
        self.state, metrics = self.compiled[kind](self.state, self.batch)
        jax.block_until_ready((self.state, metrics))


def step_kinds(settings: dict[str, Any]) -> tuple[str, ...]:
    """The step kinds timed: the plain ones, and with ``regularised`` the lazy R1 / path length."""
    return PLAIN_KINDS + (REGULARISED_KINDS if settings["regularised"] else ())


def prepare_injection(injection: str, settings: dict[str, Any]) -> PreparedInjection:
    """Builds one injection's task, inits its state on the synthetic batch and compiles its step
    kinds as the train loop does (the jit backend on one device, state donated)."""
    from noise_research.tasks import gan
    from noise_research.train.parallel import make_backend

    task = gan.build(_config(injection, settings))
    backend = make_backend("jit", jax.devices()[:BENCH_DEVICES])
    host_batch = synthetic_batch(settings["batch_size"], settings["resolution"])
    batch = backend.put_batch(host_batch)
    start = time.perf_counter()
    state = jax.block_until_ready(backend.init(task.init, jax.random.PRNGKey(0), host_batch))
    init_seconds = time.perf_counter() - start

    steps = task.train_steps()
    missing = [kind for kind in step_kinds(settings) if kind not in steps]
    if missing:
        raise RuntimeError(f"the GAN task has no step kinds {missing}; it has {sorted(steps)}")
    compiled, compile_seconds = {}, {}
    for kind in step_kinds(settings):
        start = time.perf_counter()
        compiled[kind] = backend.compile_train_step(steps[kind]).lower(state, batch).compile()
        compile_seconds[kind] = time.perf_counter() - start
    print(f"  {injection}: init {init_seconds:.1f} s, compiled {compile_seconds}", flush=True)
    return PreparedInjection(
        injection=injection,
        state=state,
        batch=batch,
        compiled=compiled,
        compile_seconds=compile_seconds,
        init_seconds=init_seconds,
        parameters={
            "generator": _parameter_count(state.generator),
            "discriminator": _parameter_count(state.discriminator),
        },
    )


def time_steps(
    prepared: list[PreparedInjection], settings: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Median ms of every (injection, kind), timed in interleaved rounds (each round runs every
    kind of every injection once): a change of the machine's load touches every injection alike.
    Returns injection -> kind -> ms."""
    fns = {
        f"{entry.injection}/{kind}": functools.partial(entry.step, kind)
        for entry in prepared
        for kind in step_kinds(settings)
    }
    seconds = interleaved_median_seconds(fns, warmup=settings["warmup"], repeats=settings["steps"])
    return {
        entry.injection: {
            kind: 1e3 * seconds[f"{entry.injection}/{kind}"] for kind in step_kinds(settings)
        }
        for entry in prepared
    }


def injection_entry(
    prepared: PreparedInjection, step_ms: dict[str, float], settings: dict[str, Any]
) -> dict[str, Any]:
    """One injection's JSON entry: step times, steps/s, compile and init times, parameter counts
    and the iterations."""
    entry: dict[str, Any] = {
        "step_ms": step_ms,
        "steps_per_second": {kind: 1e3 / ms for kind, ms in step_ms.items()},
        "compile_seconds": prepared.compile_seconds,
        "init_seconds": prepared.init_seconds,
        "parameters": prepared.parameters,
        **_iteration("iteration", step_ms["discriminator"] + step_ms["generator"], settings),
    }
    if settings["regularised"]:
        amortised_ms = amortised_iteration_ms(step_ms, settings)
        entry.update(_iteration("amortised_iteration", amortised_ms, settings))
    return entry


def amortised_iteration_ms(step_ms: dict[str, float], settings: dict[str, Any]) -> float:
    """The mean time of a D+G iteration in training: one discriminator step in ``r1_every`` is
    an R1 step, one generator step in ``path_length_every`` a path-length step."""
    r1_every, pl_every = settings["r1_every"], settings["path_length_every"]
    discriminator = (
        (r1_every - 1) * step_ms["discriminator"] + step_ms["discriminator_r1"]
    ) / r1_every
    generator = (
        (pl_every - 1) * step_ms["generator"] + step_ms["generator_path_length"]
    ) / pl_every
    return discriminator + generator


def _iteration(name: str, milliseconds: float, settings: dict[str, Any]) -> dict[str, float]:
    """``<name>_ms``, ``<name>s_per_second`` and ``<name>_images_per_second`` (real images seen by
    the discriminator: one batch per iteration)."""
    return {
        f"{name}_ms": milliseconds,
        f"{name}s_per_second": 1e3 / milliseconds,
        f"{name}_images_per_second": settings["batch_size"] * 1e3 / milliseconds,
    }


def _times(entry: dict[str, Any]) -> dict[str, float]:
    """Every time of an injection's entry, by name: its step kinds and its iterations."""
    times = dict(entry["step_ms"])
    for name in ("iteration", "amortised_iteration"):
        if f"{name}_ms" in entry:
            times[name] = entry[f"{name}_ms"]
    return times


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """riemannian/euclidean and euclidean/none of every time, where both injections were timed."""
    out = {}
    for name, (numerator, denominator) in RATIOS.items():
        if numerator in results and denominator in results:
            top, bottom = _times(results[numerator]), _times(results[denominator])
            out[name] = {key: top[key] / bottom[key] for key in top}
    return out


def target(all_ratios: dict[str, dict[str, float]], platform: str) -> dict[str, Any]:
    """The issue's target and, on a GPU, whether it is met (None elsewhere: only reported)."""
    measured = all_ratios.get("riemannian_over_euclidean", {})
    judged = platform in TARGET_PLATFORMS

    def met(ratio: float | None) -> bool | None:
        return ratio <= TARGET_MAX_RATIO if judged and ratio is not None else None

    ratio, amortised = measured.get("iteration"), measured.get("amortised_iteration")
    return {
        "quantity": "riemannian_over_euclidean.iteration (D+G step time)",
        "max_ratio": TARGET_MAX_RATIO,
        "applies_on": list(TARGET_PLATFORMS),
        "platform": platform,
        "ratio": ratio,
        "met": met(ratio),
        "amortised_ratio": amortised,
        "amortised_met": met(amortised),
    }


def _print_table(results: dict[str, dict[str, Any]], all_ratios: dict[str, Any]) -> None:
    columns = list(_times(next(iter(results.values()))))
    print(f"{'ms':>22}" + "".join(f"{column[:22]:>23}" for column in columns))
    for injection, entry in results.items():
        times = _times(entry)
        print(f"{injection:>22}" + "".join(f"{times[column]:23.2f}" for column in columns))
    for name, values in all_ratios.items():
        print(f"{name:>22}" + "".join(f"{values[column]:23.3f}" for column in columns))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark (after :func:`checked_settings`) and writes its JSON to ``--out``;
    returns the JSON's content."""
    settings = checked_settings(args)
    env = environment()
    print(f"gan benchmark on {env['device_kind']}: {settings}", flush=True)
    prepared = [prepare_injection(injection, settings) for injection in settings["injections"]]
    step_ms = time_steps(prepared, settings)
    results = {
        entry.injection: injection_entry(entry, step_ms[entry.injection], settings)
        for entry in prepared
    }
    all_ratios = ratios(results)
    payload = {
        "benchmark": "gan",
        "environment": {
            **env,
            "compilation_cache": jax.config.jax_compilation_cache_dir or None,
        },
        "settings": settings,
        "injections": results,
        "ratios": all_ratios,
        "target": target(all_ratios, env["platform"]),
    }
    _print_table(results, all_ratios)
    print(f"target: {payload['target']}")
    write_json(args.out, payload)
    return payload
