"""The synthetic higher-moment experiment (Table 1): data, labels, and a reduced end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.experiments.higher_moments import (
    HigherMomentsConfig,
    format_markdown,
    run_table1,
    sample_standardized_generalized_normal,
    save_table,
    sign_pattern_labels,
)


def test_generalized_normal_is_standardised_and_skewed_by_kappa():
    kappa = jnp.array([-0.8, 0.0, 0.5])
    samples = np.asarray(
        jax.jit(sample_standardized_generalized_normal, static_argnums=2)(
            jax.random.key(0), kappa, 200_000
        )
    )
    np.testing.assert_allclose(samples.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(samples.std(axis=0), 1.0, rtol=0.03)
    skewness = ((samples - samples.mean(0)) ** 3).mean(0) / samples.std(0) ** 3
    assert skewness[0] > 1.0 and abs(skewness[1]) < 0.05 and skewness[2] < -0.5


def test_labels_count_the_signs_of_the_first_n_features_in_binary():
    features = jnp.array([[1.0, -1.0, 2.0, 5.0], [-1.0, 0.0, -3.0, 5.0], [0.5, 0.5, 0.5, -5.0]])
    np.testing.assert_array_equal(sign_pattern_labels(features, 3), [5, 2, 7])
    np.testing.assert_array_equal(sign_pattern_labels(features, 1), [1, 0, 1])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="rows=\\('Cubic',\\)"):
        HigherMomentsConfig(rows=("Cubic",))
    with pytest.raises(ValueError, match="determinant_features=\\(0,\\)"):
        HigherMomentsConfig(determinant_features=(0,))


def test_reduced_table_runs_and_base_without_divergence_beats_chance(tmp_path):
    rows = ("Base w/o divergence", "BatchNorm + affine", "Power")
    config = HigherMomentsConfig(
        runs=2,
        num_features=16,
        determinant_features=(2,),
        train_size=1000,
        test_size=1000,
        hidden_features=32,
        steps=100,
        batch_size=100,
        rows=rows,
    )
    table = run_table1(config)
    assert table["rows"] == list(rows) and table["determinant_features"] == [2]
    for row in rows:
        cell = table["accuracy"][row]["2"]
        runs = np.asarray(cell["runs"])
        assert runs.shape == (2,)
        # Each run is a share of the 1000 test samples, in %: a multiple of 0.1.
        np.testing.assert_allclose(runs * 10, np.round(runs * 10), atol=1e-3)
        assert np.all((runs >= 0) & (runs <= 100))
        assert cell["mean"] == pytest.approx(runs.mean())
        assert cell["std"] == pytest.approx(runs.std())
    assert table["accuracy"]["Base w/o divergence"]["2"]["mean"] > 70  # 4 classes, chance: 25

    paths = save_table(table, tmp_path)
    assert json.loads(paths["json"].read_text())["accuracy"] == table["accuracy"]
    markdown = paths["markdown"].read_text()
    assert markdown == format_markdown(table) and "| Power |" in markdown and "(98.4)" in markdown
    assert paths["png"].stat().st_size > 0
