"""Table 1 of the feature-quantization paper (section 2.1): shifted higher moments vs non-linearity.

    python -m noise_research.experiments.higher_moments [--runs 10] [--out DIR]

The data (section 2.1): M = 128 features, each drawn from the generalized normal of eqs. 8–9,
X = (1 − e^(−κZ))/κ with Z ~ N(0, 1) (X = Z at κ = 0; eq. 9 solved for x), then standardised to
zero mean and unit variance with the exact moments E[X] = −expm1(κ²/2)/κ and
Var[X] = e^(κ²)·expm1(κ²)/κ², so that only the skewness and kurtosis depend on κ. Our reading of
"randomly choosing the shape parameter from U(−1, 1)": every feature has its own κ, drawn
independently for the training and the test set ("Base w/o divergence" reuses the training κ for
the test set). The label of a sample is Σ_{n<N} 2^n·1(X_n ≥ 0), 2^N classes; the other M − N
features are noise. Each run draws 10 000 training and 10 000 test samples.

The model: a two-layer ReLU network with 128 hidden units, Dense(128) → ReLU → Dense(2^N). The
Floor and Power rows put the `ScalableFloor` / `SignedPower` layers of
`noise_research.layers.quantization` on the features seen as a (B, 1, 1, M) image, so that
Dense(ψ(X)) is the 1×1 case of eq. 4, U_d = Σ_c W_{c,d} ψ(X_c, α_c) (a `QuantizedConv` with a 1×1
kernel computes the same, about twice slower on CPU than the Dense layer). The rows:
- Base w/o divergence / Base: no transform of the inputs;
- BatchNorm only / BatchNorm + affine: `nn.BatchNorm` on the input vectors, without / with its
  learned scale and shift (the paper's "Trans."), batch statistics in training, running averages
  at test time;
- Base + 1 layer / + 2 layers: one / two more Dense(128) → ReLU layers;
- Floor: τ(x, β) with a fixed β = `floor_scale` (default 4: steps of 0.25 standard deviations; the
  paper does not give β for this experiment);
- Tanh / Softsign: tanh(x) / x/(1+|x|) on the inputs;
- Power: ψ(x, α) with one learnable α per input feature (Λ = 1, init 0), ℓ1 and ℓ2 penalties
  on α with weights `power_l1` and `power_l2`.
Training (our choice; the paper gives none): Adam, `steps` steps on random mini-batches of
`batch_size`, softmax cross-entropy, all runs of a row trained at once with `jax.vmap` over the run
keys inside one jitted `lax.scan`.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research.layers.quantization import ScalableFloor, SignedPower, exponent_penalty
from noise_research.viz.plots import save_line_plot

ROWS = (
    "Base w/o divergence",
    "Base",
    "BatchNorm only",
    "BatchNorm + affine",
    "Base + 1 layer",
    "Base + 2 layers",
    "Floor",
    "Tanh",
    "Softsign",
    "Power",
)
"""Table 1's rows, in the paper's order."""

PAPER_TABLE1 = {
    "Base w/o divergence": (96.4, 92.6, 83.0, 36.3),
    "Base": (93.9, 87.9, 73.7, 26.9),
    "BatchNorm only": (92.1, 84.9, 71.5, 29.3),
    "BatchNorm + affine": (95.2, 89.2, 77.5, 39.1),
    "Base + 1 layer": (93.2, 85.1, 70.5, 27.8),
    "Base + 2 layers": (93.1, 85.3, 69.6, 29.8),
    "Floor": (94.3, 89.2, 75.9, 28.8),
    "Tanh": (97.4, 95.1, 89.4, 59.5),
    "Softsign": (98.4, 96.9, 93.0, 65.7),
    "Power": (99.0, 98.4, 97.5, 77.6),
}
"""The paper's Table 1, accuracy (%) for N = 1, 2, 4, 8 determinant features (M = 128)."""

_INPUT_TRANSFORMS = {"Tanh": jnp.tanh, "Softsign": jax.nn.soft_sign}
_EXTRA_LAYERS = {"Base + 1 layer": 1, "Base + 2 layers": 2}


@dataclasses.dataclass(frozen=True)
class HigherMomentsConfig:
    """The experiment's settings; the defaults reproduce Table 1's protocol.

    Attributes:
      runs: independent runs per cell (the paper: 10), vectorised with `jax.vmap`.
      num_features: M.
      determinant_features: the N values, the table's columns.
      train_size, test_size: samples per run (the paper: 10 000 each).
      hidden_features: width of the hidden layer(s) (the paper: 128).
      steps, batch_size, learning_rate: Adam on random mini-batches.
      floor_scale: β of the Floor row.
      power_l1, power_l2: ℓ1 / ℓ2 penalty weights on α of the Power row.
      rows: the rows to run, a subset of `ROWS`.
      seed: the root seed; run r uses `fold_in(key(seed), r)`.
    """

    runs: int = 10
    num_features: int = 128
    determinant_features: tuple[int, ...] = (1, 2, 4, 8)
    train_size: int = 10_000
    test_size: int = 10_000
    hidden_features: int = 128
    steps: int = 300
    batch_size: int = 128
    learning_rate: float = 3e-3
    floor_scale: float = 4.0
    power_l1: float = 1e-4
    power_l2: float = 1e-4
    rows: tuple[str, ...] = ROWS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("runs", "num_features", "train_size", "test_size", "hidden_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if not self.determinant_features or not all(
            1 <= n <= self.num_features for n in self.determinant_features
        ):
            raise ValueError(
                f"determinant_features={self.determinant_features!r} must be a non-empty tuple of "
                f"integers in [1, num_features={self.num_features}]."
            )
        unknown_rows = [row for row in self.rows if row not in ROWS]
        if not self.rows or unknown_rows:
            raise ValueError(f"rows={self.rows!r}: must be a non-empty subset of {ROWS}.")
        for name in ("learning_rate", "floor_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0.")
        for name in ("power_l1", "power_l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0.")


def sample_standardized_generalized_normal(
    key: jax.Array, kappa: jax.Array, num_samples: int
) -> jax.Array:
    """`num_samples` draws of the generalized normal of eqs. 8–9 per feature, standardised.

    Args:
      key: a PRNG key.
      kappa: (M,) shape parameters, one per feature.
      num_samples: the number of rows.

    Returns:
      (num_samples, M) float32 samples with zero mean and unit variance per feature.
    """
    chex.assert_rank(kappa, 1)
    normal = jax.random.normal(key, (num_samples, kappa.shape[0]), jnp.float32)
    is_normal = kappa == 0
    safe_kappa = jnp.where(is_normal, 1.0, kappa)
    samples = jnp.where(is_normal, normal, -jnp.expm1(-safe_kappa * normal) / safe_kappa)
    mean = jnp.where(is_normal, 0.0, -jnp.expm1(safe_kappa**2 / 2) / safe_kappa)
    variance = jnp.where(
        is_normal, 1.0, jnp.exp(safe_kappa**2) * jnp.expm1(safe_kappa**2) / safe_kappa**2
    )
    return (samples - mean) / jnp.sqrt(variance)


def sign_pattern_labels(features: jax.Array, num_determinant: int) -> jax.Array:
    """Σ_{n<N} 2^n·1(X_n ≥ 0) (section 2.1): the class of each row of (B, M) `features`."""
    powers_of_two = 2 ** jnp.arange(num_determinant)
    return jnp.sum((features[:, :num_determinant] >= 0) * powers_of_two, axis=-1)


def make_run_data(key: jax.Array, config: HigherMomentsConfig) -> dict[str, jax.Array]:
    """One run's features: 'train', 'test' (new κ) and 'test_same_kappa' (the training κ)."""
    kappa_train_key, kappa_test_key, train_key, test_key = jax.random.split(key, 4)
    kappa_shape = (config.num_features,)
    kappa_train = jax.random.uniform(kappa_train_key, kappa_shape, minval=-1.0, maxval=1.0)
    kappa_test = jax.random.uniform(kappa_test_key, kappa_shape, minval=-1.0, maxval=1.0)
    return {
        "train": sample_standardized_generalized_normal(train_key, kappa_train, config.train_size),
        "test": sample_standardized_generalized_normal(test_key, kappa_test, config.test_size),
        "test_same_kappa": sample_standardized_generalized_normal(
            test_key, kappa_train, config.test_size
        ),
    }


class HigherMomentsClassifier(nn.Module):
    """The two-layer ReLU network of Table 1 with the input treatment of `row` (module docstring).

    Attributes:
      row: one of `ROWS`.
      num_classes: 2^N.
      hidden_features: width of the hidden layer(s).
      floor_scale: β of the Floor row.
    """

    row: str
    num_classes: int
    hidden_features: int = 128
    floor_scale: float = 4.0

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        """Maps (B, M) features to (B, num_classes) logits."""
        chex.assert_rank(features, 2)
        if self.row in ("BatchNorm only", "BatchNorm + affine"):
            affine = self.row == "BatchNorm + affine"
            features = nn.BatchNorm(
                use_running_average=not train, use_scale=affine, use_bias=affine
            )(features)
        features = _INPUT_TRANSFORMS.get(self.row, lambda x: x)(features)
        if self.row == "Floor":
            features = ScalableFloor(self.floor_scale)(features[:, None, None, :])[:, 0, 0, :]
        elif self.row == "Power":
            features = SignedPower(groups=1)(features[:, None, None, :])[0, :, 0, 0, :]
        hidden = nn.relu(nn.Dense(self.hidden_features)(features))
        for _ in range(_EXTRA_LAYERS.get(self.row, 0)):
            hidden = nn.relu(nn.Dense(self.hidden_features)(hidden))
        return nn.Dense(self.num_classes, name="classifier")(hidden)


def _train_and_evaluate(
    row: str,
    num_determinant: int,
    config: HigherMomentsConfig,
    run_key: jax.Array,
    train_features: jax.Array,
    test_features: jax.Array,
) -> jax.Array:
    """Trains one network on one run's data; returns its test accuracy (a scalar)."""
    model = HigherMomentsClassifier(
        row, 2**num_determinant, config.hidden_features, config.floor_scale
    )
    train_labels = sign_pattern_labels(train_features, num_determinant)
    test_labels = sign_pattern_labels(test_features, num_determinant)
    init_key, batch_key = jax.random.split(run_key)
    variables = model.init(init_key, train_features[:2], train=False)
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(params, batch_stats, features, labels):
        logits, state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            features,
            train=True,
            mutable=["batch_stats", "penalties"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        penalty = exponent_penalty(state.get("penalties", {}), config.power_l1, config.power_l2)
        return loss + penalty, state.get("batch_stats", {})

    def train_step(carry, step):
        params, batch_stats, optimizer_state = carry
        batch = jax.random.randint(
            jax.random.fold_in(batch_key, step), (config.batch_size,), 0, config.train_size
        )
        gradients, batch_stats = jax.grad(loss_fn, has_aux=True)(
            params, batch_stats, train_features[batch], train_labels[batch]
        )
        updates, optimizer_state = optimizer.update(gradients, optimizer_state, params)
        return (optax.apply_updates(params, updates), batch_stats, optimizer_state), None

    params = variables["params"]
    carry = (params, variables.get("batch_stats", {}), optimizer.init(params))
    (params, batch_stats, _), _ = jax.lax.scan(train_step, carry, jnp.arange(config.steps))
    logits = model.apply({"params": params, "batch_stats": batch_stats}, test_features, train=False)
    return jnp.mean(jnp.argmax(logits, axis=-1) == test_labels)


def run_table1(config: HigherMomentsConfig) -> dict:
    """Runs every (row, N) cell of Table 1 over `config.runs` runs.

    Returns:
      {"determinant_features": [N...], "rows": [row...], "accuracy": {row: {str(N): {"mean",
      "std", "runs"}}} (accuracies in %), "seconds": wall time, "config": the settings}.
    """
    start = time.perf_counter()
    run_keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(config.seed), r))(
        jnp.arange(config.runs)
    )
    split_keys = jax.vmap(jax.random.split)(run_keys)
    data_keys, train_keys = split_keys[:, 0], split_keys[:, 1]
    data = jax.jit(jax.vmap(functools.partial(make_run_data, config=config)))(data_keys)
    accuracy: dict[str, dict[str, dict]] = {}
    for row in config.rows:
        test_features = data["test_same_kappa" if row == "Base w/o divergence" else "test"]
        accuracy[row] = {}
        for num_determinant in config.determinant_features:
            train_all_runs = jax.jit(
                jax.vmap(functools.partial(_train_and_evaluate, row, num_determinant, config))
            )
            per_run = 100 * np.asarray(train_all_runs(train_keys, data["train"], test_features))
            accuracy[row][str(num_determinant)] = {
                "mean": float(per_run.mean()),
                "std": float(per_run.std()),
                "runs": per_run.tolist(),
            }
    return {
        "determinant_features": list(config.determinant_features),
        "rows": list(config.rows),
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "config": dataclasses.asdict(config),
    }


def format_markdown(table: dict) -> str:
    """Table 1 as markdown: mean ± std (%) per row and N, with the paper's value in brackets."""
    columns = table["determinant_features"]
    paper_index = {n: i for i, n in enumerate(HigherMomentsConfig().determinant_features)}
    lines = [
        f"Accuracy (%) over {table['config']['runs']} runs, M = {table['config']['num_features']}"
        " (paper's Table 1 in brackets)",
        "",
        "| model | " + " | ".join(f"N = {n}" for n in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in table["rows"]:
        cells = []
        for n in columns:
            cell = table["accuracy"][row][str(n)]
            paper = f" ({PAPER_TABLE1[row][paper_index[n]]})" if n in paper_index else ""
            cells.append(f"{cell['mean']:.1f} ± {cell['std']:.1f}{paper}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_table(table: dict, out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes table1.md, table1.json and table1.png (accuracy vs N, one line per row) to `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "table1.md", "json": out / "table1.json"}
    paths["markdown"].write_text(format_markdown(table))
    paths["json"].write_text(json.dumps({**table, "paper": PAPER_TABLE1}, indent=2))
    columns = np.array(table["determinant_features"])
    curves = {
        row: (columns, np.array([table["accuracy"][row][str(n)]["mean"] for n in columns]))
        for row in table["rows"]
    }
    paths["png"] = save_line_plot(
        out / "table1.png", curves, "determinant features N", "test accuracy (%)", "Table 1"
    )
    return paths


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line: runs Table 1, prints it and saves it to --out."""
    defaults = HigherMomentsConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--out", default="runs/higher_moments")
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=defaults.test_size)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--floor-scale", type=float, default=defaults.floor_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = HigherMomentsConfig(
        runs=args.runs,
        train_size=args.train_size,
        test_size=args.test_size,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        floor_scale=args.floor_scale,
        seed=args.seed,
    )
    table = run_table1(config)
    print(format_markdown(table))
    paths = save_table(table, args.out)
    print(f"{table['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
