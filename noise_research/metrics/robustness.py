"""Robustness of a classifier under the twelve distortions (feature-quantization paper, §3.1).

:func:`evaluate_robustness` measures top-1 / top-5 accuracy on clean images and on every distortion
at every strength. :func:`write_robustness_report` lays one or several models out as the paper
does: Table 2 (one row per model, one column per distortion: the accuracy averaged over the four
strengths, top-1 for the targeted occlusion) as CSV and markdown, and Figure 4 (accuracy against
strength, one panel per distortion, one line per model) as PNG.

The table's metric is each result's ``table_metric``: the paper's top-5 on ImageNet (1000
classes), top-1 on small label sets, where top-5 saturates (:func:`default_table_metric`). The
targeted occlusion is top-1 always (section 3.2: it "is only targeted for the ground truth
label"). A result also records ``occlusion_reference``, the model whose saliency made its
occlusions (the paper: one plain ResNet-18 for every row); results of different metrics or
different references are not comparable, and are refused in one table (:func:`check_comparable`).

Merge the results of several runs into one table and figure:

    python -m noise_research.metrics.robustness --out runs/table2 runs/plain runs/pow runs/hpow
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from noise_research.data.distortions import DISTORTIONS, SaliencyFn, apply_distortion
from noise_research.viz import save_line_plot_grid

STRENGTHS = (1, 2, 3, 4)
TOP1_COLUMNS = ("targeted_occlusion",)  # the paper reports top-1 for the targeted occlusion
RESULT_FILE = "robustness.json"
TABLE_METRICS = ("top1", "top5")
METRIC_TITLES = {"top1": "Top-1", "top5": "Top-5"}
TOP5_MIN_CLASSES = 100
"""`default_table_metric`: top-5 from this many classes on (chance top-5 ≤ 5 %)."""
MIXTURE_CAPTION = (
    "Mix.: inpainting, CbCr+N, JPEG and salt and pepper composed on every image, each at the "
    "column's strength."
)

Result = dict[str, Any]
"""{"clean": {"top1", "top5"}, "distortions": {name: {strength: {"top1", "top5"}}},
"num_examples", and, written by the classification task, "table_metric" and
"occlusion_reference": {"workdir", "step", "model", "saliency_class"}}."""


def default_table_metric(num_classes: int) -> str:
    """Table 2's metric for a label set of ``num_classes``: the paper's top-5 (ImageNet) from
    `TOP5_MIN_CLASSES` on, top-1 below (with 10 classes top-5 is ~100 % for any model: Table 2
    would not separate them)."""
    return "top5" if num_classes >= TOP5_MIN_CLASSES else "top1"


def _table_metric(result: Result) -> str:
    """The result's table metric; results written before it was recorded used top-5."""
    return result.get("table_metric", "top5")


def _correct(logits: jax.Array, labels: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    top_k = min(5, logits.shape[-1])
    ranked = np.asarray(jnp.argsort(-logits, axis=-1)[:, :top_k])
    return {
        "top1": float(np.sum(mask * (ranked[:, 0] == labels))),
        "top5": float(np.sum(mask * np.any(ranked == labels[:, None], axis=-1))),
    }


def evaluate_robustness(
    logits_fn: Callable[[jax.Array], jax.Array],
    batches: Iterable[Mapping[str, np.ndarray]],
    key: jax.Array,
    saliency_fn: SaliencyFn,
    *,
    num_batches: int | None = None,
    progress: bool = True,
) -> Result:
    """Accuracy on clean and distorted images; each batch has ``image``, ``label`` and ``mask``.

    ``batches`` is consumed once, one batch at a time (a generator keeps a large eval split out of
    memory); ``num_batches`` (default ``len(batches)`` if it has one) sizes the progress bar.

    The distortion of batch ``b``, distortion ``d`` and strength ``s`` is drawn with
    ``fold_in(key, b, d, s)``, so results are reproducible and every model of a comparison sees the
    same distorted images (give them the same ``key`` and, for the targeted occlusion, the same
    ``saliency_fn``: that of one reference model, which occludes each image's TRUE class, the
    batch's ``label``).
    """
    device_distortions = {
        (name, strength): jax.jit(
            lambda images, labels, k, name=name, strength=strength: apply_distortion(
                name, images, strength, k, saliency_fn, labels=labels
            )
        )
        for name, distortion in DISTORTIONS.items()
        if distortion.kind == "device"
        for strength in STRENGTHS
    }
    totals: dict[str, Any] = {"clean": {"top1": 0.0, "top5": 0.0}, "distortions": {}}
    count = 0.0
    if num_batches is None and isinstance(batches, Sized):
        num_batches = len(batches)
    evaluations_per_batch = 1 + len(DISTORTIONS) * len(STRENGTHS)
    bar = tqdm(
        total=None if num_batches is None else num_batches * evaluations_per_batch,
        disable=not progress,
    )
    for batch_index, batch in enumerate(batches):
        labels, mask = np.asarray(batch["label"]), np.asarray(batch["mask"], np.float32)
        images = jnp.asarray(batch["image"])
        count += float(mask.sum())
        for metric, value in _correct(logits_fn(images), labels, mask).items():
            totals["clean"][metric] += value
        bar.update(1)
        batch_key = jax.random.fold_in(key, batch_index)
        for distortion_index, (name, distortion) in enumerate(DISTORTIONS.items()):
            per_strength = totals["distortions"].setdefault(name, {})
            for strength in STRENGTHS:
                distortion_key = jax.random.fold_in(
                    jax.random.fold_in(batch_key, distortion_index), strength
                )
                if distortion.kind == "device":
                    distorted = device_distortions[name, strength](
                        images, jnp.asarray(labels, jnp.int32), distortion_key
                    )
                else:
                    distorted = apply_distortion(name, np.asarray(images), strength, distortion_key)
                correct = _correct(logits_fn(jnp.asarray(distorted)), labels, mask)
                slot = per_strength.setdefault(strength, {"top1": 0.0, "top5": 0.0})
                for metric, value in correct.items():
                    slot[metric] += value
                bar.update(1)
    bar.close()
    scale = 100.0 / max(count, 1.0)
    result: Result = {
        "num_examples": int(count),
        "clean": {metric: value * scale for metric, value in totals["clean"].items()},
        "distortions": {
            name: {
                str(strength): {metric: value * scale for metric, value in slot.items()}
                for strength, slot in per_strength.items()
            }
            for name, per_strength in totals["distortions"].items()
        },
    }
    return result


def table2_row(result: Result) -> dict[str, float]:
    """One row of Table 2: clean accuracy and, per distortion, the mean over the strengths, in the
    result's ``table_metric`` (top-1 for the targeted occlusion)."""
    table_metric = _table_metric(result)
    row = {"clean": result["clean"][table_metric]}
    for name in DISTORTIONS:
        metric = "top1" if name in TOP1_COLUMNS else table_metric
        row[name] = float(np.mean([result["distortions"][name][str(s)][metric] for s in STRENGTHS]))
    return row


def _reference_identity(result: Result) -> tuple[str, int] | None:
    """(workdir, step) of the result's occlusion reference model; None where it is not recorded
    (results from before the reference was required: each model occluded by its own saliency)."""
    reference = result.get("occlusion_reference")
    if reference is None:
        return None
    return (reference["workdir"], int(reference["step"]))


def check_comparable(results: Mapping[str, Result]) -> None:
    """Raises ValueError (one line) unless every result has the same table metric and its
    targeted occlusions from the same reference model (workdir and checkpoint step), the true
    class's saliency: otherwise the Occ. column would compare different attacks."""
    metrics = {model: _table_metric(result) for model, result in results.items()}
    if len(set(metrics.values())) > 1:
        raise ValueError(
            "the results use different Table 2 metrics ("
            + ", ".join(f"{model}: {metric}" for model, metric in metrics.items())
            + "); evaluate them with the same robustness.table_metric"
        )
    references = {model: _reference_identity(result) for model, result in results.items()}
    unrecorded = [model for model, reference in references.items() if reference is None]
    if unrecorded:
        raise ValueError(
            f"{', '.join(unrecorded)}: no occlusion reference model recorded (each model occluded "
            "by its own saliency, not comparable); re-run --config.mode=robustness with "
            "--config.robustness.saliency_workdir=REFERENCE"
        )
    if len(set(references.values())) > 1:
        raise ValueError(
            "the targeted occlusions come from different reference models ("
            + ", ".join(f"{model}: {ref[0]} step {ref[1]}" for model, ref in references.items())
            + "); re-run them with the same --config.robustness.saliency_workdir"
        )


def caption(results: Mapping[str, Result]) -> str:
    """Table 2's caption: the metric, the occlusion's reference model, the mixture."""
    first = next(iter(results.values()))
    metric = _table_metric(first)
    text = f"{METRIC_TITLES[metric]} accuracy (%) averaged over the four strengths"
    if metric != "top1":
        top1_titles = ", ".join(DISTORTIONS[name].title for name in TOP1_COLUMNS)
        text += f"; top-1 for the targeted occlusion ({top1_titles})"
    text += "."
    reference = first.get("occlusion_reference")
    if reference is not None:
        text += (
            " Occ.: the cells of highest gradient saliency of the true class in one reference "
            f"model for every row, {reference.get('model', 'a classifier')} "
            f"({reference['workdir']}, step {reference['step']})."
        )
    return text + " " + MIXTURE_CAPTION


def write_robustness_report(out_dir: str, results: Mapping[str, Result]) -> dict[str, str]:
    """Writes table2.csv, table2.md, figure4.png and robustness.json for ``{model: result}``.

    Raises ValueError (before writing anything) unless the results are comparable
    (:func:`check_comparable`)."""
    check_comparable(results)
    os.makedirs(out_dir, exist_ok=True)
    rows = {model: table2_row(result) for model, result in results.items()}
    metric_title = METRIC_TITLES[_table_metric(next(iter(results.values())))]
    columns = ["clean", *DISTORTIONS]
    titles = ["Clean", *(d.title for d in DISTORTIONS.values())]
    paths = {name: os.path.join(out_dir, name) for name in ("table2.csv", "table2.md")}
    with open(paths["table2.csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"model ({metric_title} %)", *titles])
        for model, row in rows.items():
            writer.writerow([model, *(f"{row[c]:.2f}" for c in columns)])
    lines = [
        f"| Models ({metric_title} %) | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
        *(f"| {model} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |"
          for model, row in rows.items()),
        "",
        caption(results),
    ]  # fmt: skip
    with open(paths["table2.md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    panels = {}
    for name, distortion in DISTORTIONS.items():

        def metric(result: Result, name: str = name) -> str:
            return "top1" if name in TOP1_COLUMNS else _table_metric(result)

        panels[distortion.title] = {
            model: (
                np.arange(len(STRENGTHS) + 1),
                np.array(
                    [result["clean"][metric(result)]]
                    + [result["distortions"][name][str(s)][metric(result)] for s in STRENGTHS]
                ),
            )
            for model, result in results.items()
        }
    paths["figure4.png"] = str(
        save_line_plot_grid(
            os.path.join(out_dir, "figure4.png"),
            panels,
            xlabel="strength (0 = clean)",
            ylabel=f"{metric_title} accuracy (%) (Occ.: top-1)",
        )
    )
    paths[RESULT_FILE] = os.path.join(out_dir, RESULT_FILE)
    with open(paths[RESULT_FILE], "w") as f:
        json.dump(dict(results), f, indent=2)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Merge robustness results into one Table 2.")
    parser.add_argument("runs", nargs="+", help="workdirs that ran --config.mode=robustness")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    merged = {}
    for run in args.runs:
        path = os.path.join(run, "robustness", RESULT_FILE)
        if not os.path.exists(path):
            parser.error(f"{path} does not exist: run --config.mode=robustness in {run} first")
        with open(path) as f:
            results = json.load(f)
        for model in results:
            if model in merged:
                parser.error(
                    f"two runs give a row named {model!r} ({run} and an earlier one): name them "
                    "apart with --config.robustness.model_name"
                )
        merged.update(results)
    try:
        check_comparable(merged)
    except ValueError as error:
        parser.error(str(error))  # one line, exit status 2
    for name, path in write_robustness_report(args.out, merged).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
