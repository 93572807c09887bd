"""The benchmark command: it runs end to end from outside the checkout and writes its JSON (tiny
sizes; no timing asserted); a bad option stops it with one line before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from noise_research.bench import __main__ as bench
from noise_research.bench import classify as classify_bench
from noise_research.bench import halftone as halftone_bench
from noise_research.bench import input as input_bench

EVEN_BATCH = (
    "it must be an even integer >= 2: a halftoning step takes half comic crops, half "
    "constant-gray images"
)


def _bench(cwd, *args: str) -> subprocess.CompletedProcess:
    """``python -m noise_research.bench ARGS`` run in ``cwd`` (a folder outside the checkout, so
    the top-level ``configs`` package cannot be imported)."""
    command = [sys.executable, "-m", "noise_research.bench", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_halftone_benchmark_writes_json(tmp_path):
    out = tmp_path / "halftone.json"
    completed = _bench(
        tmp_path, "halftone", f"--out={out}", "--models=resnet", "--batch-sizes=2", "--size=16",
        "--width=4", "--repeats=1", "--inference-size=32",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["environment"]["platform"] == "cpu"
    assert [(r["first_layer"], r["batch"]) for r in payload["train"]] == [("conv", 2), ("nib", 2)]
    for row in payload["train"]:  # the rate counts the images the step put through the network
        assert row["images_per_step"] == row["batch"]
        assert row["images_per_second"] == pytest.approx(row["batch"] / row["step_seconds"])
    assert "nib_overhead_percent" in payload["train"][-1]
    methods = [r["method"] for r in payload["inference_1image"]]
    assert methods == ["conv-resnet", "nib-resnet", "floyd_steinberg"]


def test_classify_benchmark_writes_json_with_overheads(tmp_path):
    out = tmp_path / "classify.json"
    completed = _bench(
        tmp_path, "classify", f"--out={out}", "--depths=10", "--variants=none,pow", "--batch=2",
        "--size=32", "--dtype=float32", "--repeats=1",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in payload["train"]] == [
        ("resnet10", "none"),
        ("resnet10", "pow"),
    ]
    assert all(r["images_per_second"] > 0 for r in payload["train"])
    assert "overhead_percent" in payload["train"][1]


def test_input_benchmark_writes_json_with_both_rates(tmp_path):
    out = tmp_path / "input.json"
    completed = _bench(
        tmp_path, "input", f"--out={out}", "--num-records=6", "--record-bytes=20000",
        "--image-size=32", "--batch=4", "--seconds=0.2", "--workers=2",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["images_per_second_per_core"] > 0
    assert payload["images_per_second_all_cores"] > 0
    assert payload["workers_all_cores"] == 2
    assert 15_000 < payload["average_record_bytes"] < 25_000
    assert payload["machine"]["cpu_model"] and payload["machine"]["cpu_cores"] >= 1
    assert payload["settings"]["image_size"] == 32


BAD_OPTIONS = [
    (["halftone", "--batch-sizes=3"], f"--batch-sizes: 3 is not allowed; {EVEN_BATCH}"),
    (["halftone", "--batch-sizes=a,2"], f"--batch-sizes: 'a' is not an integer; {EVEN_BATCH}"),
    (["halftone", "--batch-sizes=0"], f"--batch-sizes: 0 is not allowed; {EVEN_BATCH}"),
    (["halftone", "--batch-sizes=-2"], f"--batch-sizes: -2 is not allowed; {EVEN_BATCH}"),
    (
        ["halftone", "--batch-sizes="],
        "--batch-sizes: '' is not allowed; it must be one value or more, separated by commas",
    ),
    (
        ["halftone", "--size=5"],
        "--size: config.data.crop_size = 5: not allowed; it must be an integer >= 16",
    ),
    (
        ["halftone", "--models=unet", "--size=24"],
        "--size: config.data.crop_size = 24: not allowed; it must be an integer >= 16, a "
        "multiple of 16 with model.name = 'unet' (it halves the image 4 times)",
    ),
    (
        ["halftone", "--models=resnet,foo"],
        "--models: config.model.name = 'foo': not allowed; it must be one of 'resnet', 'unet'",
    ),
    (
        ["halftone", "--width=0"],
        "--width: config.model.width = 0: not allowed; it must be an integer >= 1",
    ),
    (
        ["halftone", "--dtype=float16"],
        "--dtype: config.model.dtype = 'float16': not allowed; it must be one of 'float32', "
        "'bfloat16'",
    ),
    (
        ["classify", "--variants=none,foo"],
        "--variants: 'foo' is not allowed; it must be one of 'none', 'sf', 'pow', 'hpow', 'sf_pow'",
    ),
    (
        ["classify", "--depths=19"],
        "--depths: config.model.depth = 19: not allowed; it must be one of 10, 18, 34, 50, 101",
    ),
    (
        ["classify", "--batch=0"],
        "--batch: config.data.batch_size = 0: not allowed; it must be a positive integer "
        "divisible by the device count (1)",
    ),
    (["input", "--workers=0"], "--workers: 0 is not allowed; it must be an integer >= 1"),
    (
        ["input", "--image-size=4"],
        "--image-size: config.data.image_size = 4: not allowed; it must be an integer >= 8",
    ),
    (
        ["input", "--out=."],
        "--out: '.' is a folder; it must be the path of the JSON file to write",
    ),
]
"""A bad option of each kind, and the line it prints after ``error: ``."""


@pytest.mark.parametrize(
    ("args", "expected"), [pytest.param(*case, id=" ".join(case[0])) for case in BAD_OPTIONS]
)
def test_a_bad_option_stops_with_one_line_before_the_benchmark_starts(
    args, expected, monkeypatch, capsys
):
    def started(*_, **__):
        raise AssertionError("the benchmark started")

    # The first work of each benchmark: compiling a train step, writing the JPEGs.
    monkeypatch.setattr(halftone_bench, "train_images_per_second", started)
    monkeypatch.setattr(classify_bench, "train_images_per_second", started)
    monkeypatch.setattr(input_bench, "mock_imagenet_jpegs", started)
    with pytest.raises(SystemExit) as stopped:
        bench.main(args)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {expected}"]
    assert captured.out == ""


def test_the_defaults_pass_the_checks():
    parser = bench.build_parser()
    halftone = halftone_bench.checked_settings(parser.parse_args(["halftone"]))
    assert halftone["batch_sizes"] == [2, 4] and halftone["size"] == 64  # the CPU's defaults
    assert halftone["models"] == ["resnet", "unet"] and halftone["inference_size"] == 1024
    classify = classify_bench.checked_settings(parser.parse_args(["classify"]))
    assert classify["depths"] == [18, 50] and classify["batch"] == 8
    assert input_bench.checked_settings(parser.parse_args(["input"]))["workers"] >= 1


def test_a_bad_option_outside_the_checkout_prints_only_its_line(tmp_path):
    completed = _bench(tmp_path, "halftone", "--size=5", f"--out={tmp_path / 'halftone.json'}")
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "error: --size: config.data.crop_size = 5: not allowed; it must be an integer >= 16"
    ]
    assert completed.stdout == ""
    assert not (tmp_path / "halftone.json").exists()


def test_gan_benchmark_writes_every_injection_and_the_ratios_of_its_times(tmp_path):
    """An 8² StyleGAN2 pair (≤ 8 channels), batch 4, 2 timed steps of the plain kinds. XLA's
    backend optimisation is off in the subprocess: the test checks the JSON, not the speed, and
    compiling the nine programs (three inits, three D and three G steps) takes a third as long."""
    import os

    out = tmp_path / "gan.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    command = [
        sys.executable, "-m", "noise_research.bench", "gan", f"--out={out}", "--resolution=8",
        "--channel-base=32", "--channel-max=8", "--latent-dim=8", "--w-dim=8",
        "--mapping-layers=1", "--batch-size=4", "--steps=2", "--warmup=0", "--no-regularised",
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "gan"
    assert payload["environment"]["platform"] == "cpu" and payload["environment"]["jax_version"]
    settings = payload["settings"]
    assert (settings["resolution"], settings["batch_size"], settings["channel_max"]) == (8, 4, 8)
    assert settings["inject_at"] == [4, 8] and settings["regularised"] is False
    results = payload["injections"]
    assert list(results) == ["none", "euclidean", "riemannian"]
    for entry in results.values():
        assert set(entry["step_ms"]) == {"discriminator", "generator"}
        assert all(ms > 0 for ms in entry["step_ms"].values())
        assert entry["iteration_ms"] == pytest.approx(
            entry["step_ms"]["discriminator"] + entry["step_ms"]["generator"]
        )
        assert entry["iterations_per_second"] == pytest.approx(1e3 / entry["iteration_ms"])
        assert all(seconds > 0 for seconds in entry["compile_seconds"].values())
        assert "amortised_iteration_ms" not in entry
    for name, (top, bottom) in {
        "riemannian_over_euclidean": ("riemannian", "euclidean"),
        "euclidean_over_none": ("euclidean", "none"),
    }.items():
        ratios = payload["ratios"][name]
        assert set(ratios) == {"discriminator", "generator", "iteration"}
        for kind in ("discriminator", "generator"):
            expected = results[top]["step_ms"][kind] / results[bottom]["step_ms"][kind]
            assert ratios[kind] == pytest.approx(expected)
        expected = results[top]["iteration_ms"] / results[bottom]["iteration_ms"]
        assert ratios["iteration"] == pytest.approx(expected)
    target = payload["target"]
    assert target["max_ratio"] == 1.10 and target["met"] is None  # judged on a GPU only
    assert target["ratio"] == payload["ratios"]["riemannian_over_euclidean"]["iteration"]
    assert target["amortised_ratio"] is None  # --no-regularised


def test_gan_target_is_judged_on_a_gpu_only():
    from noise_research.bench import gan as gan_bench

    ratios = {"riemannian_over_euclidean": {"iteration": 1.08, "amortised_iteration": 1.12}}
    on_gpu = gan_bench.target(ratios, "gpu")
    assert (on_gpu["met"], on_gpu["amortised_met"]) == (True, False)
    on_cpu = gan_bench.target(ratios, "cpu")
    assert (on_cpu["ratio"], on_cpu["met"], on_cpu["amortised_met"]) == (1.08, None, None)


def test_gan_amortised_iteration_counts_one_r1_step_in_16_and_one_path_length_step_in_4():
    from noise_research.bench import gan as gan_bench

    step_ms = {
        "discriminator": 2.0,
        "generator": 3.0,
        "discriminator_r1": 18.0,
        "generator_path_length": 7.0,
    }
    settings = {"batch_size": 4, "r1_every": 16, "path_length_every": 4}
    amortised = gan_bench.amortised_iteration_ms(step_ms, settings)
    assert amortised == pytest.approx((15 * 2.0 + 18.0) / 16 + (3 * 3.0 + 7.0) / 4)


GAN_BAD_OPTIONS = [
    (
        ["gan", "--resolution=48"],
        "--resolution: config.data.resolution = 48: not allowed; it must be a power of two ≥ 4 "
        "for model.architecture='stylegan2'",
    ),
    (
        ["gan", "--batch-size=6"],
        "--batch-size: config.model.mbstd_group_size = 4: not allowed; it must be a positive "
        "integer dividing data.batch_size",
    ),
    (
        ["gan", "--injections=none,gaussian"],
        "--injections: 'gaussian' is not allowed; it must be one of 'none', 'euclidean', "
        "'riemannian'",
    ),
    (["gan", "--channel-max=0"], "--channel-max: 0 is not allowed; it must be an integer >= 1"),
    (["gan", "--steps=0"], "--steps: 0 is not allowed; it must be an integer >= 1"),
]
"""A bad option of the GAN benchmark, and the line it prints after ``error: ``."""


@pytest.mark.parametrize(
    ("args", "expected"), [pytest.param(*case, id=" ".join(case[0])) for case in GAN_BAD_OPTIONS]
)
def test_a_bad_gan_option_stops_with_one_line_before_anything_compiles(
    args, expected, monkeypatch, capsys
):
    from noise_research.bench import gan as gan_bench

    def started(*_, **__):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(gan_bench, "prepare_injection", started)
    with pytest.raises(SystemExit) as stopped:
        bench.main(args)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {expected}"]
    assert captured.out == ""


def test_the_gan_defaults_are_the_papers_size_and_demo_is_the_tasks_cpu_size():
    from noise_research.bench import gan as gan_bench

    parser = bench.build_parser()
    full = gan_bench.checked_settings(parser.parse_args(["gan"]))
    assert (full["resolution"], full["batch_size"], full["channel_base"]) == (128, 32, 16384)
    assert full["inject_at"] == [4, 8, 16, 32, 64, 128] and full["regularised"] is True
    assert full["injections"] == ["none", "euclidean", "riemannian"]
    demo = gan_bench.checked_settings(parser.parse_args(["gan", "--demo", "--batch-size=8"]))
    assert (demo["resolution"], demo["batch_size"], demo["channel_max"]) == (32, 8, 64)
