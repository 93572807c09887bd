"""The benchmark command runs end to end and writes its JSON (tiny sizes; no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_main_cli import ROOT


def test_halftone_benchmark_writes_json(tmp_path):
    out = tmp_path / "halftone.json"
    command = [
        sys.executable, "-m", "noise_research.bench", "halftone", f"--out={out}",
        "--models=resnet", "--batch-sizes=2", "--size=16", "--width=4", "--repeats=1",
        "--inference-size=32",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["environment"]["platform"] == "cpu"
    assert [(r["first_layer"], r["batch"]) for r in payload["train"]] == [("conv", 2), ("nib", 2)]
    assert all(r["images_per_second"] > 0 for r in payload["train"])
    assert "nib_overhead_percent" in payload["train"][-1]
    methods = [r["method"] for r in payload["inference_1image"]]
    assert methods == ["conv-resnet", "nib-resnet", "floyd_steinberg"]


def test_classify_benchmark_writes_json_with_overheads(tmp_path):
    out = tmp_path / "classify.json"
    command = [
        sys.executable, "-m", "noise_research.bench", "classify", f"--out={out}",
        "--depths=18", "--variants=none,pow", "--batch=2", "--size=32", "--dtype=float32",
        "--repeats=1",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in payload["train"]] == [
        ("resnet18", "none"),
        ("resnet18", "pow"),
    ]
    assert all(r["images_per_second"] > 0 for r in payload["train"])
    assert "overhead_percent" in payload["train"][1]


def test_input_benchmark_writes_json_with_both_rates(tmp_path):
    out = tmp_path / "input.json"
    command = [
        sys.executable, "-m", "noise_research.bench", "input", f"--out={out}",
        "--num-records=6", "--record-bytes=20000", "--image-size=32", "--batch=4",
        "--seconds=0.2", "--workers=2",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["images_per_second_per_core"] > 0
    assert payload["images_per_second_all_cores"] > 0
    assert payload["workers_all_cores"] == 2
    assert 15_000 < payload["average_record_bytes"] < 25_000
    assert payload["machine"]["cpu_model"] and payload["machine"]["cpu_cores"] >= 1
    assert payload["settings"]["image_size"] == 32
