"""Robustness of a classifier under the twelve distortions (feature-quantization paper, §3.1).

:func:`evaluate_robustness` measures top-1 / top-5 accuracy on clean images and on every distortion
at every strength. :func:`write_robustness_report` lays one or several models out as the paper
does: Table 2 (one row per model, one column per distortion: top-5 accuracy averaged over the four
strengths, top-1 for the targeted occlusion) as CSV and markdown, and Figure 4 (accuracy against
strength, one panel per distortion, one line per model) as PNG.

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

Result = dict[str, Any]  # {"clean": {"top1", "top5"}, "distortions": {name: {strength: {...}}}}


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
    ``saliency_fn``).
    """
    device_distortions = {
        (name, strength): jax.jit(
            lambda images, k, name=name, strength=strength: apply_distortion(
                name, images, strength, k, saliency_fn
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
                    distorted = device_distortions[name, strength](images, distortion_key)
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
    """One row of Table 2: clean top-5 and, per distortion, the mean over strengths."""
    row = {"clean": result["clean"]["top5"]}
    for name in DISTORTIONS:
        metric = "top1" if name in TOP1_COLUMNS else "top5"
        row[name] = float(np.mean([result["distortions"][name][str(s)][metric] for s in STRENGTHS]))
    return row


def write_robustness_report(out_dir: str, results: Mapping[str, Result]) -> dict[str, str]:
    """Writes table2.csv, table2.md, figure4.png and robustness.json for ``{model: result}``."""
    os.makedirs(out_dir, exist_ok=True)
    rows = {model: table2_row(result) for model, result in results.items()}
    columns = ["clean", *DISTORTIONS]
    titles = ["Clean", *(d.title for d in DISTORTIONS.values())]
    paths = {name: os.path.join(out_dir, name) for name in ("table2.csv", "table2.md")}
    with open(paths["table2.csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *titles])
        for model, row in rows.items():
            writer.writerow([model, *(f"{row[c]:.2f}" for c in columns)])
    lines = [
        "| Models | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
        *(f"| {model} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |"
          for model, row in rows.items()),
        "",
        "Top-5 accuracy (%) averaged over the four strengths; top-1 for "
        + ", ".join(DISTORTIONS[name].title for name in TOP1_COLUMNS) + ".",
    ]  # fmt: skip
    with open(paths["table2.md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    panels = {}
    for name, distortion in DISTORTIONS.items():
        metric = "top1" if name in TOP1_COLUMNS else "top5"
        panels[distortion.title] = {
            model: (
                np.arange(len(STRENGTHS) + 1),
                np.array(
                    [result["clean"][metric]]
                    + [result["distortions"][name][str(s)][metric] for s in STRENGTHS]
                ),
            )
            for model, result in results.items()
        }
    paths["figure4.png"] = str(
        save_line_plot_grid(
            os.path.join(out_dir, "figure4.png"),
            panels,
            xlabel="strength (0 = clean)",
            ylabel="accuracy (%)",
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
            merged.update(json.load(f))
    for name, path in write_robustness_report(args.out, merged).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
