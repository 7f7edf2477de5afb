"""bench/gpu_check.py: the FLOP count, the goal verdicts and the whole --smoke run on the CPU."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from helpers.shrink import REPO


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location(
        "gpu_check", os.path.join(REPO, "bench", "gpu_check.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_of_the_1b_backbone_match_the_reference(gpu_check):
    # REFERENCE.md section 7: 15.6 TFLOP per image at 1280, 23.9 at 1536
    at_1280 = gpu_check.vit_flops(gpu_check.load(gpu_check.EVA01).model.backbone.net, 1280)
    at_1536 = gpu_check.vit_flops(gpu_check.load(gpu_check.EVA01_1536).model.backbone.net, 1536)
    assert at_1280 / 1e12 == pytest.approx(15.6, rel=0.005)
    assert at_1536 / 1e12 == pytest.approx(23.9, rel=0.005)
    # EVA-02 L at 1536 (SwiGLU, no rel-pos): more than a third of the 1B's, less than half
    eva02 = gpu_check.vit_flops(gpu_check.load(gpu_check.EVA02_L).model.backbone.net, 1536)
    assert 0.33 < eva02 / at_1536 < 0.5


def test_goal_verdicts(gpu_check):
    sections = {
        "detector": {
            "rows": [
                {"precision": "fp32", "soft_nms_topk": None, "img_per_s": 30.0},
                {"precision": "bf16", "soft_nms_topk": None, "img_per_s": 19.5},
                {"precision": "bf16", "soft_nms_topk": 100, "img_per_s": 25.0},
            ]
        },
        "soft_nms": {"rows": [{"ms_per_image": 4.0}]},
        "train_memory": {"rows": [{"size": 1280, "error": "OutOfMemoryError"}]},
    }
    verdicts = [g["verdict"] for g in gpu_check.evaluate_goals(sections, smoke=False)]
    assert verdicts == ["fail", "pass", "missing"]
    smoke = gpu_check.evaluate_goals(sections, smoke=True)
    assert {g["verdict"] for g in smoke} == {"n/a (smoke)"}


@pytest.mark.slow  # runs the whole GPU check script (CPU smoke mode)
def test_smoke_run_writes_every_section(tmp_path, gpu_check):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "gpu_check.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["smoke"] and results["environment"]["date_utc"]
    numeric = {
        "backbone": ["img_per_s", "tflops", "max_err"],
        "detector": ["img_per_s", "dets_per_img"],
        "soft_nms": ["ms_per_image"],
        "train_memory": ["peak_gb"],
        "eva02": ["img_per_s", "tflops", "max_err"],
        "cuda_tests": [],
    }
    assert list(results["sections"]) == [name for name, _, _ in gpu_check.SECTIONS]
    for name, fields in numeric.items():
        section = results["sections"][name]
        assert section["status"] == "ok", (name, section)
        assert section["rows"], name
        for row in section["rows"]:
            assert "error" not in row, (name, row)
            for field in fields:
                assert isinstance(row[field], (int, float)) and math.isfinite(row[field]), (
                    name,
                    row,
                )
    backbone = results["sections"]["backbone"]["rows"]
    assert {r["attn_impl"] for r in backbone} == {"plain", "sdpa", "blocked"}
    assert {r["size"] for r in backbone} == {128, 160}
    # bf16 against the fp32 output: rounding-sized, not zero, not garbage
    assert all(0 < r["max_err"] < 5e-2 for r in backbone if r["precision"] == "bf16")
    assert results["sections"]["soft_nms"]["rows"][0]["equal_to_reference"] is True
    tests = results["sections"]["cuda_tests"]
    assert tests["info"]["skipped"] == len(tests["rows"]) >= 10  # no CUDA here: all skip
    assert [g["verdict"] for g in results["goals"]] == ["n/a (smoke)"] * len(gpu_check.GOALS)
    markdown = (tmp_path / "gpu_check.md").read_text()
    for name in numeric:
        assert f"## {name}: ok" in markdown
