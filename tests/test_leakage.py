"""The leakage audit (metrics/leakage.py) on toy predictors: a per-sample linear classifier, the
same classifier with the positive-noise roll over the batch (row i takes α = 0.4 of row i − 1),
and a recording predictor that checks the partial batches (issue 13, "The leakage audit")."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.metrics import leakage

NUM_SAMPLES = 300  # 256 + a partial batch of 44; 18 × 16 + 12
NUM_CLASSES = 3
ALPHA = 0.4
DEFAULT_SETTINGS = ("off", "batch1", "batch16", "batch256_shuffled", "batch256_sorted")


def _toy_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 4, 4, 1), labels (N,), class means (K, 16)): Gaussian classes close enough that
    the linear classifier errs on ~1/6 of the samples (84 % correct)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(NUM_CLASSES, 16)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=NUM_SAMPLES)
    images = means[labels] + 2.0 * rng.normal(size=(NUM_SAMPLES, 16)).astype(np.float32)
    return images.reshape(NUM_SAMPLES, 4, 4, 1), labels, means


def _linear(means: np.ndarray):
    """A fixed per-sample linear classifier (jax): logits = x · meansᵀ."""
    weights = jnp.asarray(means.T)

    @jax.jit
    def predict(images, positions):
        del positions
        return images.reshape(images.shape[0], -1) @ weights

    return predict


def _rolling(means: np.ndarray):
    """The linear classifier with the linear-transform noise on its logits, in numpy:
    f(x_i) + α(f(x_{i−1}) − f(x_i)), row 0 taking from the last row (a batch of one: itself)."""

    def predict(images, positions):
        del positions
        logits = np.asarray(images).reshape(len(images), -1) @ means.T
        return logits + ALPHA * (np.roll(logits, 1, axis=0) - logits)

    return predict


def test_per_sample_predictor_every_setting_equals_off_and_is_independent():
    images, labels, means = _toy_set()
    predict = _linear(means)
    result = leakage.leakage_audit(predict, predict, images, labels, progress=False)
    accuracies = {name: result[name] for name in DEFAULT_SETTINGS}
    assert 40 < result["off"] < 95  # a classifier that errs, so the settings could differ
    chex.assert_trees_all_close(accuracies, dict.fromkeys(DEFAULT_SETTINGS, result["off"]))
    for model in ("on", "off"):
        change = result["independence"][model]
        assert change["independent"], change
        assert change["max_relative_delta"] <= leakage.INDEPENDENCE_TOLERANCE
        assert change["fraction_changed"] == 0.0
    for name, verdict in result["verdicts"].items():
        assert verdict.startswith(f"{name}: ")
        assert "no cross-sample dependence measured" in verdict, verdict


def test_batch_mixing_predictor_leaks_in_sorted_batches():
    images, labels, means = _toy_set()
    result = leakage.leakage_audit(_rolling(means), _linear(means), images, labels, progress=False)
    assert result["batch1"] == result["off"]  # a batch of one rolls onto itself
    # class-sorted neighbours share the label: α of a same-class neighbour votes for the truth
    assert result["batch256_sorted"] > result["batch256_shuffled"] + 5, result
    assert result["batch256_sorted"] > result["off"] + 5, result
    on, off = result["independence"]["on"], result["independence"]["off"]
    assert not on["independent"]
    assert on["mean_abs_delta"] > 0.5 and on["max_relative_delta"] > 0.1, on
    assert on["fraction_changed"] > 0.05, on
    assert off["independent"] and off["max_abs_delta"] <= 1e-5 * off["logit_scale"], off
    verdicts = result["verdicts"]
    assert "predictions depend on the batch" in verdicts["batch256_sorted"]
    assert "over shuffled" in verdicts["batch256_sorted"]
    assert "predictions depend on the batch" in verdicts["batch16"]
    assert "a batch of one" in verdicts["batch1"]
    assert "no cross-sample dependence measured" in verdicts["off"]
    # deterministic given the seed (shuffled orders and independence draws); another seed differs
    again = leakage.leakage_audit(_rolling(means), _linear(means), images, labels, progress=False)
    assert again == result
    other = leakage.leakage_audit(
        _rolling(means), _linear(means), images, labels, seed=1, progress=False
    )
    assert (
        other["batch16"] != result["batch16"]
        or other["batch256_shuffled"] != result["batch256_shuffled"]
    )
    assert other["independence"] != result["independence"]


def test_independence_batches_share_only_the_probed_sample():
    samples, rows, batches_a, batches_b = leakage.independence_probes(40, 64, 16, seed=3)
    assert len(samples) == len(set(samples.tolist())) == 40  # capped at N, distinct
    chex.assert_shape([batches_a, batches_b], (40, 16))
    for sample, row, a, b in zip(samples, rows, batches_a, batches_b, strict=True):
        assert a[row] == b[row] == sample
        assert len(set(a.tolist()) | set(b.tolist())) == 31  # disjoint otherwise, no repeats
    assert set(rows.tolist()) != {rows[0]}  # the probed row varies


class _Recorder:
    """A predictor that records every call's positions and refuses any row that is not the real
    test sample at its position (a padding row) or a repeated row."""

    def __init__(self, images: np.ndarray, means: np.ndarray):
        self.images, self.means, self.calls = images, means, []

    def __call__(self, images, positions):
        images, positions = np.asarray(images), np.asarray(positions)
        if len(set(positions.tolist())) != len(positions):
            raise AssertionError(f"a batch repeats a sample: {positions}")
        np.testing.assert_array_equal(images, self.images[positions])  # only real rows
        self.calls.append(positions)
        return images.reshape(len(images), -1) @ self.means.T


@pytest.mark.parametrize("batch_size", [1, 16, 256, 300, 512])
def test_partial_batch_holds_only_its_real_rows(batch_size):
    images, labels, means = _toy_set()
    recorder = _Recorder(images, means)
    order = np.random.default_rng(1).permutation(NUM_SAMPLES)
    accuracy = leakage.batched_accuracy(
        recorder, images, labels, np.arange(NUM_SAMPLES), order, batch_size
    )
    full, rest = divmod(NUM_SAMPLES, batch_size)
    assert [len(c) for c in recorder.calls] == [batch_size] * full + ([rest] if rest else [])
    np.testing.assert_array_equal(np.concatenate(recorder.calls), order)  # each once, in order
    predictions = (images.reshape(NUM_SAMPLES, -1) @ means.T).argmax(-1)
    assert accuracy == pytest.approx(100 * np.mean(predictions == labels))


def test_audit_counts_every_sample_once_per_setting():
    images, labels, means = _toy_set()
    on, off = _Recorder(images, means), _Recorder(images, means)
    leakage.leakage_audit(
        on, off, images, labels, positions=None, independence_samples=8,
        independence_batch_size=5, progress=False,
    )  # fmt: skip
    # setting calls come first; the independence check then makes 2 × 8 calls of 5 rows
    for recorder, settings in ((off, 1), (on, 4)):
        setting_calls, independence_calls = recorder.calls[:-16], recorder.calls[-16:]
        assert {len(c) for c in independence_calls} == {5}
        counts = np.bincount(np.concatenate(setting_calls), minlength=NUM_SAMPLES)
        np.testing.assert_array_equal(counts, settings)
    sizes = [len(c) for c in on.calls[:-16]]
    assert sizes == [1] * 300 + [16] * 18 + [12] + [256, 44] * 2


def test_outputs_written_with_the_specified_keys(tmp_path):
    images, labels, means = _toy_set()
    result = leakage.leakage_audit(
        _rolling(means), _linear(means), images, labels, out_dir=str(tmp_path / "leakage"),
        title="toy roll", progress=False,
    )  # fmt: skip
    written = json.loads((tmp_path / "leakage" / "audit.json").read_text())
    assert written == result
    assert set(written) == {*DEFAULT_SETTINGS, "independence", "verdicts", "num_samples"}
    assert set(written["verdicts"]) == set(DEFAULT_SETTINGS)
    assert written["num_samples"] == NUM_SAMPLES
    independence = written["independence"]
    assert independence["num_samples"] == 64 and independence["batch_size"] == 16
    assert len(independence["per_sample"]["on_abs_delta"]) == 64
    table = (tmp_path / "leakage" / "audit.md").read_text()
    assert "| setting | batch size | order | accuracy (%) | Δ vs off (points) | verdict |" in table
    for name in DEFAULT_SETTINGS:
        assert f"| {name} | " in table
    assert "| batch256_sorted | 256 | sorted | " in table
    for row in table.splitlines():
        if row.startswith("| batch"):  # six cells: the verdict's |Δlogit| is escaped
            assert row.replace("\\|", "").count("|") == 7, row
    assert "| on | " in table and "| off | " in table
    png = (tmp_path / "leakage" / "audit.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_other_batch_sizes_follow_the_pattern():
    names = [s.name for s in leakage.audit_settings((8, 1, 32))]
    assert names == ["off", "batch1", "batch8", "batch32_shuffled", "batch32_sorted"]
    with pytest.raises(ValueError, match="distinct positive"):
        leakage.audit_settings((16, 16))
