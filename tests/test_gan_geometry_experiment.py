"""`python -m noise_research.experiments.gan_geometry`: the table over seeds, pictures, resume."""

from __future__ import annotations

import json

import numpy as np

from noise_research.experiments import gan_geometry

TINY = [
    "--steps",
    "2",
    "--width",
    "4",
    "--batch-size",
    "8",
    "--condition-pairs",
    "16",
    "--fid-batches",
    "1",
    "--rank-samples",
    "1",
    "--domain-feature-steps",
    "20",
    "--injections",
    "riemannian",
    "--no-progress",
]


def test_table_is_the_mean_and_spread_over_seeds_and_a_rerun_reads_the_finished_runs(tmp_path):
    report = gan_geometry.main(["--seeds", "2", "--out", str(tmp_path), *TINY])
    runs = report["runs"]
    assert sorted((r["injection"], r["seed"]) for r in runs) == [
        ("riemannian", 0),
        ("riemannian", 1),
    ]
    for injection, columns in report["table"].items():
        for column, cell in columns.items():
            values = [r[column] for r in runs if r["injection"] == injection]
            assert cell["n"] == 2
            np.testing.assert_allclose(cell["mean"], np.mean(values))
            np.testing.assert_allclose(cell["std"], np.std(values, ddof=1))
    for run in runs:
        # Lemma 2 with the noise fixed: the image's rank w.r.t. z is at most dim z = 100.
        assert 1 <= run["rank_z"] <= 100
        assert run["mc"] > 0 and run["ttmc"] >= run["mc"] and run["domain_fid"] > 0
        # The injected noise adds inputs: w.r.t. (z, ε) a layer's rank passes dim z, and w.r.t.
        # z alone no layer's does (Lemma 2).
        layers = run["layer_ranks"].values()
        assert max(ranks["z_noise"] for ranks in layers) > 100
        assert max(ranks["z"] for ranks in layers) <= 100
        assert run["rank_z_noise"] == run["layer_ranks"]["image"]["z_noise"]
        assert list(run["layer_ranks"])[-1] == "image"
    # Different seeds train different generators.
    assert runs[0]["mc"] != runs[1]["mc"]
    markdown = (tmp_path / "geometry.md").read_text()
    assert "domain FID" in markdown and "not FID" in markdown and "± " in markdown
    assert json.loads((tmp_path / "geometry.json").read_text())["table"] == report["table"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "samples" / "riemannian_seed1.png").stat().st_size > 0
    # A second invocation trains nothing: every run is read back from its result.json.
    (tmp_path / "runs" / "riemannian" / "seed_0" / "checkpoints").rename(tmp_path / "moved")
    again = gan_geometry.main(["--seeds", "2", "--out", str(tmp_path), *TINY])
    assert again["table"] == report["table"]
