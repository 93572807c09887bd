"""Table 2 of several runs (metrics/robustness.py): one metric and one occlusion reference model
per table, said in its header and caption (feature-quantization paper, section 3.2)."""

from __future__ import annotations

import json
import sys

import pytest

from noise_research.data.distortions import DISTORTIONS
from noise_research.metrics import robustness

STRENGTHS = ("1", "2", "3", "4")


def _result(top1: float, *, reference: str | None = "/runs/plain", step: int = 200) -> dict:
    """A robustness result: top-1 `top1` and top-5 100 everywhere (10 classes: top-5 saturates)."""
    accuracy = {"top1": top1, "top5": 100.0}
    result = {
        "num_examples": 297,
        "clean": dict(accuracy),
        "distortions": {name: {s: dict(accuracy) for s in STRENGTHS} for name in DISTORTIONS},
        "table_metric": "top1",
    }
    if reference is not None:
        result["occlusion_reference"] = {
            "workdir": reference, "step": step, "model": "ResNet18", "saliency_class": "true"
        }  # fmt: skip
    return result


def _write_run(tmp_path, name: str, results: dict):
    run = tmp_path / name
    (run / "robustness").mkdir(parents=True)
    (run / "robustness" / robustness.RESULT_FILE).write_text(json.dumps(results))
    return run


def _merge(monkeypatch, out, *runs) -> None:
    monkeypatch.setattr(sys, "argv", ["robustness", "--out", str(out), *map(str, runs)])
    robustness.main()


def test_default_table_metric_is_top1_on_small_label_sets_and_top5_on_imagenet():
    assert robustness.default_table_metric(10) == "top1"
    assert robustness.default_table_metric(1000) == "top5"
    row = robustness.table2_row(_result(90.0))
    assert row["clean"] == 90.0 and row["motion_blur"] == 90.0  # top-1, not the saturated top-5
    row = robustness.table2_row({**_result(90.0), "table_metric": "top5"})
    assert row["clean"] == 100.0 and row["targeted_occlusion"] == 90.0  # Occ. stays top-1
    assert robustness.caption({"ResNet18": _result(90.0)}).startswith("Top-1 accuracy (%)")
    top5_caption = robustness.caption({"ResNet50": {**_result(90.0), "table_metric": "top5"}})
    assert top5_caption.startswith("Top-5 accuracy (%) averaged over the four strengths; top-1 ")


def test_runs_occluded_by_one_reference_merge_into_one_captioned_table(tmp_path, monkeypatch):
    plain = _write_run(tmp_path, "plain", {"ResNet18": _result(90.0)})
    power = _write_run(tmp_path, "pow", {"ResNet18+POW": _result(91.0)})
    _merge(monkeypatch, tmp_path / "table", plain, power)
    lines = (tmp_path / "table" / "table2.md").read_text().splitlines()
    assert lines[0].startswith("| Models (Top-1 %) | Clean |")
    assert lines[2].startswith("| ResNet18 | 90.00 |") and lines[3].startswith("| ResNet18+POW |")
    assert "gradient saliency of the true class in one reference model" in lines[-1]
    assert "/runs/plain, step 200" in lines[-1]
    assert "JPEG" in lines[-1]  # the mixture's components


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (_result(91.0, reference="/runs/other_plain"), "different reference models"),
        (_result(91.0, step=100), "different reference models"),  # another checkpoint of it
        (_result(91.0, reference=None), "no occlusion reference model recorded"),
        ({**_result(91.0), "table_metric": "top5"}, "different Table 2 metrics"),
    ],
)
def test_runs_that_are_not_comparable_are_refused_with_one_line(
    tmp_path, monkeypatch, capsys, other, message
):
    plain = _write_run(tmp_path, "plain", {"ResNet18": _result(90.0)})
    power = _write_run(tmp_path, "pow", {"ResNet18+POW": other})
    with pytest.raises(SystemExit) as exit_info:
        _merge(monkeypatch, tmp_path / "table", plain, power)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], error_lines
    assert not (tmp_path / "table").exists()


def test_two_runs_with_the_same_row_name_are_refused(tmp_path, monkeypatch, capsys):
    first = _write_run(tmp_path, "seed0", {"ResNet18": _result(90.0)})
    second = _write_run(tmp_path, "seed1", {"ResNet18": _result(91.0)})
    with pytest.raises(SystemExit) as exit_info:
        _merge(monkeypatch, tmp_path / "table", first, second)
    assert exit_info.value.code == 2
    assert "robustness.model_name" in capsys.readouterr().err
