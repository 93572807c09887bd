"""Leakage audit: does a classifier's prediction for one test sample depend on the other samples of
its evaluation batch? (positive-noise paper; issue 13, "The leakage audit").

The positive-noise authors apply their linear-transform noise ``x_i + α(x_{i−1} − x_i)`` — a roll
over the **batch** axis — at evaluation too, and evaluate on unshuffled, class-sorted test sets.
Public reviews argue that this leaks information between test samples: a sample's logits then
carry α of its batch neighbour's representation, and in a class-sorted batch that neighbour almost
always has the same label, so the neighbour's evidence votes for the right class. The audit makes
that measurable for **any** model (the shift or optimal Q of `layers.LinearTransformNoise`,
BatchNorm in training mode, anything else that mixes rows), given only two predictors:

* ``predict_on``: the model with its sample-mixing layers active at evaluation;
* ``predict_off``: the plain evaluation model (no mixing), the reference.

Each is ``predict(images (B, H, W, C), positions (B,) int) -> logits (B, K)``, called only with
real test rows. ``positions`` are each row's index in the test set (or the caller's own
``positions``): a model whose per-sample noise is keyed by position (`noise_maps.per_example`)
then draws the same noise for a sample whichever batch and row it lands in, so only genuine
cross-sample mixing shows up below.

Settings (each a top-1 accuracy in percent over **all** given test samples):

* ``off``: ``predict_off`` at the largest batch size (256 by default) in the given order — the
  reference accuracy of a per-sample model.
* ``batch{b}`` for every batch size but the largest (``batch1``, ``batch16``): ``predict_on`` on
  the test set in one shuffled order (``seed``). At batch 1 a batch holds no other sample, so
  nothing can leak in: a mixing model that is still right at batch 1 only as often as ``off`` is
  right shows that its gains elsewhere came from the other rows.
* ``batch{B}_shuffled`` (``batch256_shuffled``): the largest batch, shuffled order — neighbours are
  random samples, mostly of other classes.
* ``batch{B}_sorted`` (``batch256_sorted``): the largest batch with the test set sorted by label
  (stable sort) — the authors' unshuffled, class-ordered evaluation, in which neighbours share the
  label. A gain of sorted over shuffled is the leak.

Partial batches: when ``b`` does not divide the number of samples, the last batch is evaluated as a
smaller batch of only its real rows, **never padded**: a padding row would be mixed into the real
ones (the roll gives row 0 α of the last row). So the predictor is called with up to two batch
shapes per setting (a jitted predictor compiles both), and every sample is counted exactly once.
In that last, smaller batch a mixing model mixes fewer rows (its first row takes from its own last
real row); that is the model's true behaviour on that batch.

Independence (the per-sample figure): for ``independence_samples`` test samples i (seeded draw),
i is evaluated inside two batches of ``independence_batch_size`` rows whose other rows are
disjoint random draws of other test samples, i at the same (random) row in both. The change of
i's logits between the two batches, ``max_k |Δlogit_k|``, and whether its top-1 prediction changes
are reported per sample and summarised (mean and max |Δlogit|, the same relative to the sample's
logit scale ``max_k |logit_k|``, the fraction of predictions that change), for ``predict_on`` and
for ``predict_off`` as the control. A per-sample model gives 0 up to float32 reduction-order noise:
the audit calls a model independent when the max relative change is at most ``tolerance``
(`INDEPENDENCE_TOLERANCE`, 1e-5 of the sample's logit scale by default).

Output: the result dict (and, with ``out_dir``, ``audit.json`` holding the same dict) maps each
setting name to its accuracy (%) and has ``independence`` (the summary), ``verdicts`` (one line per
setting) and ``num_samples``; ``audit.md`` is a table of the settings and the independence numbers;
``audit.png`` a bar chart of the accuracies with the ``off`` accuracy as a line.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

Predict = Callable[[np.ndarray | jax.Array, np.ndarray | jax.Array], np.ndarray | jax.Array]
"""``predict(images (B, H, W, C), positions (B,) int) -> logits (B, K)``; only real rows."""

INDEPENDENCE_TOLERANCE = 1e-5
"""Largest change of a sample's logits, relative to its logit scale ``max_k |logit_k|``, that the
audit still calls "no cross-sample dependence" (float32 reduction-order noise is ~1e-7 of it)."""

OFF = "off"
ORDERS = ("given", "shuffled", "sorted")
RESULT_FILE = "audit.json"
TABLE_FILE = "audit.md"
CHART_FILE = "audit.png"


class Setting(NamedTuple):
    """One evaluation of the audit: its name, the predictor used (``'on'``/``'off'``), the batch
    size and the order of the test samples (``'given'``, ``'shuffled'`` or ``'sorted'``)."""

    name: str
    model: str
    batch_size: int
    order: str


def audit_settings(batch_sizes: Sequence[int] = (1, 16, 256)) -> list[Setting]:
    """The audit's settings for ``batch_sizes``: ``off`` at the largest batch size, ``batch{b}``
    (shuffled) for the others, ``batch{B}_shuffled`` and ``batch{B}_sorted`` for the largest B."""
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes must be distinct positive integers; got {batch_sizes!r}.")
    largest = max(sizes)
    settings = [Setting(OFF, "off", largest, "given")]
    for size in sorted(sizes):
        if size == largest:
            settings.append(Setting(f"batch{size}_shuffled", "on", size, "shuffled"))
            settings.append(Setting(f"batch{size}_sorted", "on", size, "sorted"))
        else:
            settings.append(Setting(f"batch{size}", "on", size, "shuffled"))
    return settings


def _logits(predict: Predict, images: np.ndarray, positions: np.ndarray, rows: np.ndarray):
    """``predict`` on the rows ``rows`` of the test set, as a float64 numpy (len(rows), K)."""
    logits = np.asarray(predict(images[rows], positions[rows]), dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] != len(rows):
        raise ValueError(
            f"predict must return logits of shape ({len(rows)}, K) for a batch of {len(rows)}; "
            f"got {logits.shape}."
        )
    return logits


def batched_accuracy(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    bar: Any = None,
) -> float:
    """Top-1 accuracy (%) of ``predict`` over the samples ``order`` (a permutation of the test
    set), in consecutive batches of ``batch_size``; the last partial batch holds only its real
    rows (no padding), so every sample is predicted and counted exactly once."""
    correct = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        correct += int(np.sum(_logits(predict, images, positions, rows).argmax(-1) == labels[rows]))
        if bar is not None:
            bar.update(1)
    return 100.0 * correct / len(order)


def _change_summary(
    logits_a: np.ndarray, logits_b: np.ndarray, tolerance: float
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Summary of the change of each probed sample's logits between its two batches, and the
    per-sample max |Δlogit| and 'prediction changed' arrays."""
    delta = np.max(np.abs(logits_a - logits_b), axis=-1)
    scale = np.maximum(np.max(np.abs(logits_a), -1), np.max(np.abs(logits_b), -1))
    relative = np.where(delta > 0, delta / np.maximum(scale, np.finfo(np.float32).tiny), 0.0)
    changed = logits_a.argmax(-1) != logits_b.argmax(-1)
    summary = {
        "mean_abs_delta": float(delta.mean()),
        "max_abs_delta": float(delta.max()),
        "mean_relative_delta": float(relative.mean()),
        "max_relative_delta": float(relative.max()),
        "fraction_changed": float(changed.mean()),
        "logit_scale": float(scale.mean()),
        "independent": bool(relative.max() <= tolerance),
    }
    return summary, delta, changed


def independence_probes(
    num_samples: int, probes: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The independence check's batches: ``probes`` distinct samples i (seeded), and for each two
    batches (probes, batch_size) of test-set rows, i at the same random row in both and the other
    rows disjoint draws of other samples. Returns (samples, rows, batches_a, batches_b)."""
    if batch_size < 2:
        raise ValueError(f"independence_batch_size must be at least 2; got {batch_size}.")
    if num_samples < 2 * batch_size - 1:
        raise ValueError(
            f"the independence check needs 2·{batch_size} − 1 = {2 * batch_size - 1} test samples "
            f"(two batches of {batch_size} sharing one sample); got {num_samples}: lower "
            "independence_batch_size."
        )
    if probes < 1:
        raise ValueError(f"independence_samples must be at least 1; got {probes}.")
    rng = np.random.default_rng((seed, 1))
    samples = rng.choice(num_samples, size=min(probes, num_samples), replace=False)
    rows = rng.integers(0, batch_size, size=len(samples))
    batches = np.empty((2, len(samples), batch_size), dtype=np.int64)
    for probe, (sample, row) in enumerate(zip(samples, rows, strict=True)):
        others = rng.choice(num_samples - 1, size=2 * (batch_size - 1), replace=False)
        others = others + (others >= sample)  # skip the sample itself
        for which, fill in enumerate(np.split(others, 2)):
            batches[which, probe] = np.insert(fill, row, sample)
    return samples, rows, batches[0], batches[1]


def _independence(
    predictors: dict[str, Predict],
    images: np.ndarray,
    positions: np.ndarray,
    probes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tolerance: float,
    bar: Any,
) -> dict[str, Any]:
    samples, rows, batches_a, batches_b = probes
    summary: dict[str, Any] = {
        "num_samples": len(samples),
        "batch_size": batches_a.shape[1],
        "tolerance_relative": tolerance,
    }
    per_sample: dict[str, list] = {"index": samples.tolist(), "row": rows.tolist()}
    for model, predict in predictors.items():
        logits = []
        for batches in (batches_a, batches_b):
            sample_logits = []
            for batch, row in zip(batches, rows, strict=True):
                sample_logits.append(_logits(predict, images, positions, batch)[row])
                bar.update(1)
            logits.append(np.stack(sample_logits))
        summary[model], delta, changed = _change_summary(*logits, tolerance)
        per_sample[f"{model}_abs_delta"] = delta.tolist()
        per_sample[f"{model}_changed"] = changed.tolist()
    summary["per_sample"] = per_sample
    return summary


def _format_change(change: dict[str, Any]) -> str:
    return (
        f"max |Δlogit| {change['max_abs_delta']:.3g} "
        f"({change['max_relative_delta']:.2g} of the logit scale), "
        f"{100 * change['fraction_changed']:.0f} % of predictions change"
    )


def _verdict(
    setting: Setting, accuracies: dict[str, float], independence: dict[str, Any], largest: int
) -> str:
    """One line on ``setting``: its accuracy against ``off`` and what the independence check
    says about the predictor it used."""
    off = accuracies[OFF]
    tolerance = independence["tolerance_relative"]
    if setting.model == "off":
        control = independence["off"]
        if control["independent"]:
            return (
                f"{OFF}: {off:.1f} % (reference, plain model): no cross-sample dependence measured "
                f"(control: max relative |Δlogit| {control['max_relative_delta']:.2g} ≤ "
                f"{tolerance:g})"
            )
        return (
            f"{OFF}: {off:.1f} % (reference): the plain model itself depends on the batch "
            f"(control: {_format_change(control)}); it is not a per-sample reference"
        )
    accuracy = accuracies[setting.name]
    head = f"{setting.name}: {accuracy:.1f} % vs off {off:.1f} % ({accuracy - off:+.1f} points)"
    change = independence["on"]
    if change["independent"]:
        return (
            f"{head}: no cross-sample dependence measured (independence: max relative |Δlogit| "
            f"{change['max_relative_delta']:.2g} ≤ {tolerance:g})"
        )
    if setting.batch_size == 1:
        return (
            f"{head}: a batch of one holds no other test sample, nothing leaks in "
            f"(but the model depends on its batch: {_format_change(change)})"
        )
    text = f"{head}: predictions depend on the batch (independence: {_format_change(change)})"
    if setting.order == "sorted":
        gain = accuracy - accuracies[f"batch{largest}_shuffled"]
        text += f"; {gain:+.1f} points over shuffled: class-sorted neighbours share the label"
    return text


def _cell(text: str) -> str:
    """``text`` as a markdown table cell: its pipes (|Δlogit|) escaped."""
    return text.replace("|", "\\|")


def _markdown(result: dict[str, Any], settings: list[Setting], title: str) -> str:
    off = result[OFF]
    lines = [f"# Leakage audit{': ' + title if title else ''}", ""]
    lines += [
        f"{result['num_samples']} test samples; top-1 accuracy (%). `off`: the plain model; "
        "the others: the model with its sample-mixing layers on at evaluation. A last partial "
        "batch is evaluated with only its real rows (no padding).",
        "",
        "| setting | batch size | order | accuracy (%) | Δ vs off (points) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for setting in settings:
        accuracy = result[setting.name]
        lines.append(
            f"| {setting.name} | {setting.batch_size} | {setting.order} | {accuracy:.2f} | "
            f"{accuracy - off:+.2f} | {_cell(result['verdicts'][setting.name])} |"
        )
    independence = result["independence"]
    lines += [
        "",
        "## Independence",
        "",
        f"{independence['num_samples']} samples, each evaluated in two batches of "
        f"{independence['batch_size']} with disjoint other rows (same row for the sample). "
        f"Independent: max relative |Δlogit| ≤ {independence['tolerance_relative']:g} of the "
        "sample's logit scale max_k |logit_k|.",
        "",
        "| model | mean abs Δlogit | max abs Δlogit | mean rel. | max rel. | predictions changed "
        "(%) | logit scale | independent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in ("on", "off"):
        c = independence[model]
        lines.append(
            f"| {model} | {c['mean_abs_delta']:.3g} | {c['max_abs_delta']:.3g} | "
            f"{c['mean_relative_delta']:.2g} | {c['max_relative_delta']:.2g} | "
            f"{100 * c['fraction_changed']:.1f} | {c['logit_scale']:.3g} | "
            f"{'yes' if c['independent'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _save_bar_chart(path: str, accuracies: dict[str, float], title: str) -> None:
    """The accuracies as bars with ``off`` as a horizontal line, drawn without pyplot (as
    `viz.plots` does: own Figure and Agg canvas, no global state). `viz.plots` has line plots
    only; this belongs there as a ``save_bar_chart`` once a second caller wants bars."""
    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = list(accuracies)
    values = [accuracies[name] for name in names]
    bars = axes.bar(names, values, color=["C7" if n == OFF else "C0" for n in names])
    axes.bar_label(bars, fmt="%.1f", fontsize="small")
    axes.axhline(accuracies[OFF], color="C3", linestyle="--", label=f"off ({accuracies[OFF]:.1f})")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_ylim(0, 105)
    axes.set_title(f"Leakage audit{': ' + title if title else ''}")
    axes.tick_params(axis="x", labelrotation=20)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)


def leakage_audit(
    predict_on: Predict,
    predict_off: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 16, 256),
    seed: int = 0,
    independence_samples: int = 64,
    independence_batch_size: int = 16,
    out_dir: str | None = None,
    title: str = "",
    progress: bool = True,
    tolerance: float = INDEPENDENCE_TOLERANCE,
) -> dict[str, Any]:
    """Runs the audit (module docstring) and returns its result; writes it with ``out_dir``.

    Args:
      predict_on: the model with its sample-mixing layers active at evaluation.
      predict_off: the plain evaluation model (no mixing).
      images: (N, H, W, C) test images, in the order of the ``off`` setting.
      labels: (N,) integer labels.
      positions: (N,) positions passed to the predictors with each row (default ``arange(N)``).
      batch_sizes: the batch sizes of the ``on`` settings; the largest is evaluated shuffled and
        class-sorted, and is the batch size of ``off``.
      seed: the shuffled order (shared by every shuffled setting) and the independence draws.
      independence_samples: how many samples the independence check probes (at most N).
      independence_batch_size: the batch size of its two batches (needs N ≥ 2·it − 1).
      out_dir: if given, ``audit.json``, ``audit.md`` and ``audit.png`` are written there.
      title: a title for the table and the chart.
      progress: a tqdm bar over the predictor calls.
      tolerance: max relative |Δlogit| still called independent (`INDEPENDENCE_TOLERANCE`).

    Returns:
      ``{setting name: accuracy (%), "independence": summary, "verdicts": {name: line},
      "num_samples": N}``; the summary has ``num_samples``, ``batch_size``,
      ``tolerance_relative``, ``on`` and ``off`` (mean/max abs and relative |Δlogit|,
      ``fraction_changed``, ``logit_scale``, ``independent``) and ``per_sample`` lists.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    num_samples = len(labels)
    positions = np.arange(num_samples) if positions is None else np.asarray(positions)
    if num_samples == 0 or labels.shape != (num_samples,) or positions.shape != labels.shape:
        raise ValueError(
            f"labels and positions must be (N,) with N ≥ 1 and images (N, ...); got labels "
            f"{labels.shape}, positions {positions.shape}, images {images.shape}."
        )
    if images.shape[0] != num_samples:
        raise ValueError(f"images has {images.shape[0]} rows for {num_samples} labels.")
    settings = audit_settings(batch_sizes)
    largest = max(s.batch_size for s in settings)
    probes = independence_probes(num_samples, independence_samples, independence_batch_size, seed)
    orders = {
        "given": np.arange(num_samples),
        "shuffled": np.random.default_rng((seed, 0)).permutation(num_samples),
        "sorted": np.argsort(labels, kind="stable"),
    }
    predictors = {"on": predict_on, "off": predict_off}
    calls = sum(-(-num_samples // s.batch_size) for s in settings) + 4 * len(probes[0])
    accuracies: dict[str, float] = {}
    with tqdm(total=calls, desc="leakage audit", disable=not progress, unit="batch") as bar:
        for setting in settings:
            bar.set_postfix_str(setting.name)
            accuracies[setting.name] = batched_accuracy(
                predictors[setting.model],
                images,
                labels,
                positions,
                orders[setting.order],
                setting.batch_size,
                bar,
            )
        bar.set_postfix_str("independence")
        independence = _independence(predictors, images, positions, probes, tolerance, bar)
    result: dict[str, Any] = dict(accuracies)
    result["independence"] = independence
    result["verdicts"] = {s.name: _verdict(s, accuracies, independence, largest) for s in settings}
    result["num_samples"] = num_samples
    if out_dir is not None:
        write_audit(out_dir, result, settings, title)
    return result


def write_audit(
    out_dir: str, result: dict[str, Any], settings: list[Setting], title: str = ""
) -> dict[str, str]:
    """Writes ``audit.json`` (the result), ``audit.md`` and ``audit.png`` into ``out_dir``;
    returns {file name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in (RESULT_FILE, TABLE_FILE, CHART_FILE)}
    pathlib.Path(paths[RESULT_FILE]).write_text(json.dumps(result, indent=2) + "\n")
    pathlib.Path(paths[TABLE_FILE]).write_text(_markdown(result, settings, title))
    _save_bar_chart(paths[CHART_FILE], {s.name: result[s.name] for s in settings}, title)
    return paths
