"""`bench classify` times the quantizing convs of a bfloat16 model both in float32 (the default,
``model.quantizer.compute_dtype='float32'``) and in bfloat16 ('model'), one row each."""

from __future__ import annotations

import json
import subprocess
import sys


def _bench(cwd, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "noise_research.bench", "classify", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_classify_benchmark_times_float32_and_bfloat16_quantizers(tmp_path):
    out = tmp_path / "classify.json"
    completed = _bench(
        tmp_path, f"--out={out}", "--depths=10", "--variants=sf", "--batch=2", "--size=32",
        "--dtype=bfloat16", "--quantizer-dtypes=float32,model", "--repeats=1",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(out.read_text())
    assert payload["settings"]["quantizer_dtypes"] == ["float32", "model"]
    rows = [(r["variant"], r.get("quantizer_compute_dtype")) for r in payload["train"]]
    assert rows == [("sf", "float32"), ("sf", "bfloat16")]
    assert all(r["dtype"] == "bfloat16" and r["images_per_second"] > 0 for r in payload["train"])


def test_an_unknown_quantizer_dtype_stops_with_one_line(tmp_path):
    completed = _bench(tmp_path, "--quantizer-dtypes=float16", f"--out={tmp_path / 'c.json'}")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--quantizer-dtypes" in lines[0] and "float16" in lines[0], lines
    assert not (tmp_path / "c.json").exists()
