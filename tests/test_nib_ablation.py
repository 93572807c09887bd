"""`python -m noise_research.experiments.nib_ablation`: Figure 4's variants, the table, resume."""

from __future__ import annotations

import json
import shlex

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.experiments import nib_ablation, runs
from noise_research.layers.nib import NibConfig
from noise_research.tasks import halftone

# The paper, section 3.2 and Figure 4, written out here independently of the module's table:
# S/D = stationary / dynamic, N/U/B = normal / uniform / Bernoulli, the number = std, half-width or
# P(1); F = feature-domain f1(I) + f2(N); the impulse paradigm f1(I·B) + f2(I·(1−B)) for B.
PAPER = {
    name: NibConfig(combine=combine, distribution=distribution, noise_scale=scale, stationary=s)
    for name, (combine, distribution, scale, s) in {
        "S-N-0.3": ("symmetric", "normal", 0.3, True),
        "D-N-0.3": ("symmetric", "normal", 0.3, False),
        "S-N-0.03": ("symmetric", "normal", 0.03, True),
        "S-U-0.3": ("symmetric", "uniform", 0.3, True),
        "regular-grid": ("symmetric", "grid", 0.3, True),
        "D-B-0.5": ("impulse", "bernoulli", 0.5, False),
        "F-D-N-0.3": ("feature", "normal", 0.3, False),
    }.items()
}

TINY = ["--steps", "2", "--crop-size", "16", "--width", "4", "--no-progress"]


def _args(*argv: str):
    return nib_ablation.parse_args(["--out", "unused", *argv])


def _nib_modules(params) -> list[str]:
    return [name for name in params if "nib" in name.lower()]


@pytest.mark.parametrize("paper_sizes", [False, True])
def test_each_variant_is_the_papers_definition_and_no_nib_has_none(paper_sizes):
    args = _args(*(["--paper"] if paper_sizes else []))
    assert list(nib_ablation.VARIANTS) == [nib_ablation.NO_NIB, *PAPER]
    for variant, expected in PAPER.items():
        task = halftone.build(nib_ablation.run_config(variant, 0, args))
        assert task.model_config.first_layer == "nib", variant
        assert task.model_config.nib == expected, variant
    task = halftone.build(nib_ablation.run_config(nib_ablation.NO_NIB, 0, args))
    assert task.model_config.first_layer == "conv"
    example = jnp.zeros((1, 16, 16, 1))
    variables = jax.eval_shape(task.model.init, jax.random.PRNGKey(0), example)
    assert _nib_modules(variables["params"]) == []
    assert "noise_keys" not in variables
    nib_task = halftone.build(nib_ablation.run_config("S-N-0.3", 0, args))
    nib_variables = jax.eval_shape(nib_task.model.init, jax.random.PRNGKey(0), example)
    assert _nib_modules(nib_variables["params"]) == ["nib"]


def test_the_printed_commands_give_each_runs_config_in_its_workdir(tmp_path):
    args = _args("--seeds", "2", "--out", str(tmp_path), "--paper")
    commands = nib_ablation.main(
        ["--seeds", "2", "--out", str(tmp_path), "--paper", "--print-commands"]
    )["commands"]
    assert len(commands) == 2 * len(nib_ablation.VARIANTS)
    for seed in range(2):
        for variant in nib_ablation.VARIANTS:
            words = shlex.split(commands.pop(0))
            assert words[:4] == [
                "python",
                "-m",
                "noise_research.main",
                "--config=configs/halftone/nib_resnet.py",
            ]
            assert words[4] == f"--workdir={tmp_path}/runs/{variant}/seed_{seed}"
            config = halftone.experiment_config(model="resnet", first_layer="nib").to_dict()
            for word in words[5:]:
                key, _, text = word.removeprefix("--config.").partition("=")
                *sections, leaf = key.split(".")
                section = config
                for name in sections:
                    section = section[name]
                old = section[leaf]
                section[leaf] = (text == "True") if isinstance(old, bool) else type(old)(text)
            assert config == nib_ablation.run_config(variant, seed, args)
    sweeps = nib_ablation.main(["--seeds", "3", "--out", str(tmp_path), "--print-sweep"])
    assert len(sweeps["commands"]) == len(nib_ablation.VARIANTS)
    assert all(c.endswith("--grid=train.seed=0,1,2") for c in sweeps["commands"])


def test_table_is_the_mean_and_spread_over_seeds_and_a_rerun_reads_the_finished_runs(
    tmp_path, monkeypatch
):
    argv = ["--seeds", "2", "--out", str(tmp_path), "--variants", "no-NIB,D-B-0.5", *TINY]
    report = nib_ablation.main(argv)
    trained = report["runs"]
    assert sorted((r["variant"], r["seed"]) for r in trained) == [
        ("D-B-0.5", 0),
        ("D-B-0.5", 1),
        ("no-NIB", 0),
        ("no-NIB", 1),
    ]
    for run in trained:
        on_disk = json.loads(
            (tmp_path / "runs" / run["variant"] / f"seed_{run['seed']}" / "result.json").read_text()
        )
        assert on_disk == run
        assert run["steps"] == 2
    assert list(report["table"]) == ["no-NIB", "D-B-0.5"]
    for variant, columns in report["table"].items():
        assert list(columns) == ["comic_tone_psnr", "constant_tone_psnr"]
        for column, cell in columns.items():
            values = [r[column] for r in trained if r["variant"] == variant]
            assert cell["n"] == 2
            np.testing.assert_allclose(cell["mean"], np.mean(values))
            np.testing.assert_allclose(cell["std"], np.std(values, ddof=1))
    # Different seeds train different networks.
    assert trained[0]["comic_tone_psnr"] != trained[2]["comic_tone_psnr"]
    chex.assert_trees_all_equal(
        json.loads((tmp_path / "ablation.json").read_text())["table"], report["table"]
    )
    markdown = (tmp_path / "ablation.md").read_text()
    cell = report["table"]["D-B-0.5"]["constant_tone_psnr"]
    assert "| D-B-0.5 | " in markdown and f"{cell['mean']:.2f} ± {cell['std']:.2f}" in markdown
    png = (tmp_path / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000

    # A second invocation trains nothing: every run is read back from its result.json.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runs, "train", no_training)
    again = nib_ablation.main(argv)
    assert again["table"] == report["table"]
    monkeypatch.undo()

    # A run finished elsewhere (a cluster job) has no result.json and no train_seconds.json: its
    # final evaluation is read from its metrics file, without training a step.
    workdir = tmp_path / "runs" / "D-B-0.5" / "seed_1"
    (workdir / "result.json").unlink()
    (workdir / "train_seconds.json").unlink()
    collected = nib_ablation.main(argv)
    assert collected["table"] == report["table"]
    assert np.isnan(json.loads((workdir / "result.json").read_text())["train_seconds"])


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        nib_ablation.main(["--variants", "S-N-0.3,X-N-0.3", "--print-commands"])


def test_a_variant_override_sets_an_existing_key_and_names_an_unknown_one():
    config = {"model": {"nib": {"noise_scale": 0.3}}}
    runs.set_key(config, "model.nib.noise_scale", 0.03)
    assert config == {"model": {"nib": {"noise_scale": 0.03}}}
    with pytest.raises(KeyError, match=r"no config key 'model\.nib\.noise_scal'"):
        runs.set_key(config, "model.nib.noise_scal", 0.5)
    assert runs.chosen("S-N-0.3,no-NIB", nib_ablation.VARIANTS) == ["S-N-0.3", "no-NIB"]
    assert runs.chosen("S-N-0.3,X", nib_ablation.VARIANTS) is None
    assert runs.chosen(",", nib_ablation.VARIANTS) is None


def test_bar_chart_has_a_group_per_variant_with_std_bars_and_the_no_nib_lines(tmp_path):
    columns = nib_ablation.COLUMNS
    table = {
        variant: {
            c: {"mean": 20.0 + i + 5 * j, "std": 0.5 + i, "n": 3} for j, c in enumerate(columns)
        }
        for i, variant in enumerate(nib_ablation.VARIANTS)
    }
    axes = nib_ablation.bar_chart(table).axes[0]
    nib_variants = list(PAPER)
    assert [t.get_text() for t in axes.get_xticklabels()] == nib_variants
    bars = [c for c in axes.containers if c.__class__.__name__ == "BarContainer"]
    assert len(bars) == len(columns)
    for container, column in zip(bars, columns, strict=True):
        heights = [patch.get_height() for patch in container.patches]
        np.testing.assert_allclose(heights, [table[v][column]["mean"] for v in nib_variants])
        segments = container.errorbar.lines[2][0].get_segments()
        np.testing.assert_allclose(
            [s[1][1] - s[0][1] for s in segments],
            [2 * table[v][column]["std"] for v in nib_variants],
        )
    lines = [line.get_ydata()[0] for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert lines == [table["no-NIB"][c]["mean"] for c in columns]
    path = nib_ablation.save_bar_chart(table, tmp_path / "chart.png")
    assert path.read_bytes().startswith(b"\x89PNG")
