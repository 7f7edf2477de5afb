"""ONNX / TorchScript export (eva_det.export, tools/export_model.py) against PyTorch eager.

Shrunk EVA-01 ("vitdet" and "beit" rel-pos resizing, exported at 160 px so the global tables
are resized ahead of time) and EVA-02 (RoPE tables as constants) detectors with random weights
saved to a checkpoint, exported through the library and the command line, run with
onnxruntime on the CPU or torch.jit.load, and compared with the eager model before export
preparation, on an image other than the one traced with.
"""

import copy
import importlib.util
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from helpers.shrink import HEAD_SHRINK, REPO, load_config, shrink_overrides

from eva_det.export import FixedGridRope, export_model, prepare_for_export
from eva_det.export.export import normalize, sample_image
from eva_det.export.verify import (
    DETECTION_ATOL,
    GraphRunner,
    compare_detections,
    compare_features,
    reference_outputs,
)

pytest.importorskip("onnxruntime")

EVA01 = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"
EVA01_BEIT = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py"
EVA02 = (
    "projects/ViTDet/configs/eva2_mim_to_coco/"
    "eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py"
)
# every (box, class) pair above 0 is scored, so an untrained model has detections
KEEP_ALL = ["model.roi_heads.override_score_thresh=0.0", "train.device=cpu"]

CASES = {
    # img_size 128 (tables for an 8x8 grid), exported at 160 (10x10): resized ahead of time
    "eva01_vitdet": (EVA01, ["model.backbone.square_pad=160"]),
    "eva01_beit_maskness": (
        EVA01_BEIT,
        [
            "model.backbone.square_pad=160",
            "model.roi_heads.maskness_thresh=0.5",
            # no per-image cap: the number of detections differs between images
            "model.roi_heads.box_predictors.2.test_topk_per_image=-1",
        ],
    ),
    "eva02": (EVA02, ["model.backbone.square_pad=160"]),
}


def _overrides(relpath, extra):
    base = load_config(relpath)
    return shrink_overrides(base) + HEAD_SHRINK + KEEP_ALL + list(extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per case: (config, eager reference model, checkpoint file of its weights)."""
    out = {}
    for name, (relpath, extra) in CASES.items():
        cfg = load_config(relpath, _overrides(relpath, extra))
        torch.manual_seed(0)
        model = instantiate(cfg.model).eval()
        path = str(tmp_path_factory.mktemp(name) / "weights.pth")
        torch.save({"model": model.state_dict()}, path)
        out[name] = (relpath, extra, model, path)
    return out


def _config(case, built):
    relpath, extra, model, path = built[case]
    cfg = load_config(relpath, _overrides(relpath, extra) + [f"train.init_checkpoint={path}"])
    return cfg, model


@pytest.mark.parametrize("case", ["eva01_beit_maskness", "eva02"])
def test_prepare_keeps_eager_outputs(case, built):
    cfg, reference = _config(case, built)
    prepared = copy.deepcopy(reference)
    info = prepare_for_export(prepared)
    assert info["input_size"] == 160 and info["token_grid"] == 10
    net = prepared.backbone.net
    for block in net.blocks:
        n = block.window_size or 10
        if case.startswith("eva01"):
            assert block.attn.rel_pos_h.shape[0] == 2 * n - 1  # resized ahead of time
            assert block.attn.rel_pos_w.shape[0] == 2 * n - 1
        else:
            assert isinstance(block.attn.rope, FixedGridRope) and block.attn.rope.grid == (n, n)
    # state-dict names unchanged (RoPE constants are not persistent)
    assert set(prepared.state_dict()) == set(reference.state_dict())
    image = normalize(reference, sample_image(160, seed=3))
    with torch.no_grad():
        ref, out = reference.backbone(image), prepared.backbone(image)
    for k in ref:
        err = (out[k] - ref[k]).abs().max() / ref[k].abs().max()
        assert err <= 1e-5, (k, float(err))


def test_fixed_grid_rope_refuses_another_grid(built):
    _, reference = _config("eva02", built)
    rope = FixedGridRope(reference.backbone.net.blocks[0].attn.rope, (4, 4))
    with pytest.raises(ValueError, match="grid"):
        rope(torch.zeros(1, 4, 25, rope.cos.shape[1]), (5, 5))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_graphs_match_pytorch(case, fmt, built, tmp_path):
    cfg, reference = _config(case, built)
    graphs = export_model(cfg, fmt, str(tmp_path), load_weights=True)
    ext = "onnx" if fmt == "onnx" else "ts"
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"backbone.{ext}", f"detector.{ext}", f"export_info_{fmt}.json"]
    )  # nothing half-written left behind
    image = sample_image(160, seed=1)  # not the traced image (seed 0)

    # backbone + pyramid: relative error per level
    bb = graphs["backbone"]
    assert bb.output_names == ["p2", "p3", "p4", "p5", "p6"]
    ref = reference_outputs(reference, "backbone", image)
    out = GraphRunner(bb.path)(normalize(reference, image))
    for name, r, o in zip(bb.output_names, ref, out):
        assert o.shape == r.shape, name
        assert np.abs(o - r).max() / np.abs(r).max() <= 1e-4, name
    assert compare_features(ref, out, bb.output_names).ok

    # whole detector: same detections
    det = graphs["detector"]
    assert det.output_names == ["boxes", "classes", "masks", "scores", "image_size"]
    ref = dict(zip(det.output_names, reference_outputs(reference, "detector", image)))
    out = dict(zip(det.output_names, GraphRunner(det.path)(image)))
    assert len(ref["scores"]) > 0
    assert out["boxes"].shape == ref["boxes"].shape
    assert sorted(out["classes"].tolist()) == sorted(ref["classes"].tolist())
    np.testing.assert_allclose(np.sort(out["scores"]), np.sort(ref["scores"]), atol=DETECTION_ATOL)
    result = compare_detections(list(ref.values()), list(out.values()), det.output_names)
    assert result.ok, result.detail
    if fmt == "onnx":
        assert "ScatterND" not in bb.ops  # no in-place slice writes in the backbone
        assert "RoiAlign" in det.ops and "NonMaxSuppression" in det.ops
    info = json.loads((tmp_path / f"export_info_{fmt}.json").read_text())
    assert info["input_size"] == 160 and info["graphs"]["detector"]["output_names"][0] == "boxes"
    if "maskness" in case:
        assert info["in_graph"]["maskness_thresh"] == 0.5


def test_detection_comparison_can_fail():
    names = ["boxes", "classes", "scores", "image_size"]
    ref = [np.array([[0, 0, 10, 10.0]]), np.array([1]), np.array([0.5]), np.array([160, 160])]
    moved = [ref[0] + 2e-3] + ref[1:]
    other_class = [ref[0], np.array([2])] + ref[2:]
    assert compare_detections(ref, ref, names).ok
    assert not compare_detections(ref, moved, names).ok
    assert not compare_detections(ref, other_class, names).ok
    assert not compare_detections(ref, [r[:0] for r in ref[:3]] + ref[3:], names).ok


def _tool(argv):
    """The command line as a user types it, in a separate process."""
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, os.path.join(REPO, "tools", "export_model.py")] + argv
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_exports_and_verifies(built, tmp_path):
    relpath, extra, _, weights = built["eva02"]
    out = tmp_path / "exported"
    run = _tool(
        ["--config-file", relpath, "--format", "onnx", "--output", str(out), "--weights", weights]
        + ["--verify"]
        + _overrides(relpath, extra)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "export_info_onnx.json").read_text())
    for part in ("backbone", "detector"):
        assert info["graphs"][part]["verification"]["ok"], info["graphs"][part]
        assert os.path.isfile(out / f"{part}.onnx")
    assert "Not in the graphs" in run.stderr + run.stdout


def test_cli_wrong_format_is_one_message(tmp_path):
    run = _tool(["--config-file", EVA02, "--format", "tensorrt", "--output", str(tmp_path)])
    assert run.returncode == 2
    text = run.stdout + run.stderr  # detectron2's logger writes to stdout
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "--format tensorrt" in errors[0] and "onnx" in errors[0]
    assert "Traceback" not in text
    assert os.listdir(tmp_path) == []


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "eva_export_tool", os.path.join(REPO, "tools", "export_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--weights", "/no/such/weights.pth"], "--weights=/no/such/weights.pth: no such file"),
        (["model.roi_heads.use_soft_nms=True"], "model.roi_heads.use_soft_nms=True cannot be"),
        (["test.aug.enabled=True"], "test.aug.enabled=True"),
        (["--part", "neck"], "--part neck"),
        (["model.backbone.square_pad=0"], "model.backbone.square_pad is 0"),
        # the one config loader of every tool (eva_det.config.load): a misspelled key is an error
        (["model.backbone.net.depht=2"], "model.backbone.net.depht"),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(argv, expected, tmp_path, caplog):
    tool = _load_tool()
    args = ["--config-file", EVA02, "--format", "onnx", "--output", str(tmp_path)] + argv
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
        tool.cli(args)
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0], errors
    assert os.listdir(tmp_path) == []
