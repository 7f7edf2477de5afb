"""The shipped COCO, LVIS and EVA-02 recipes train and evaluate through the CLI a user types.

Each test writes a tiny dataset in the layout detectron2's builtin registration reads under
``$DETECTRON2_DATASETS`` (COCO: polygons, as COCO stores its masks; LVIS v1: its federated
fields), then runs ``python tools/lazyconfig_train_net.py --config-file <recipe>`` in a new
process with overrides that only shrink the model and the schedule (tests/helpers/shrink.py).
Polygon masks through LSJ's FixedSizeCrop need shapely; LVIS' loader needs the lvis package: a
missing runtime dependency fails here.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers.coco_layout import COCO_USED_IDS, LVIS_USED_IDS, write_coco_layout, write_lvis_layout
from helpers.shrink import REPO, cli_tiny_overrides, load_config

COCO_RECIPE = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"
LVIS_RECIPE = "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva.py"
EVA02_RECIPE = (
    "projects/ViTDet/configs/eva2_mim_to_coco/"
    "eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py"
)


def run_train_cli(recipe: str, datasets_root: str, output_dir: str, extra=()) -> str:
    """Train ``recipe`` (shrunk) for 3 iterations in a new process; returns its log."""
    args = ["--config-file", recipe] + cli_tiny_overrides(load_config(recipe), output_dir)
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "tools/lazyconfig_train_net.py"] + args + list(extra),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def metrics_rows(output_dir: str) -> list:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def check_trained_and_evaluated(output_dir: str, ap_prefixes=("bbox", "segm")) -> dict:
    """3 training rows with finite losses (masks included), a final checkpoint, and AP rows."""
    rows = metrics_rows(output_dir)
    train_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == [0, 1, 2]
    for row in train_rows:
        assert 0 < row["total_loss"] < 1e3 and row["loss_mask"] > 0
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))
    final = rows[-1]
    for task in ap_prefixes:
        for key in ("AP", "AP50", "AP75"):
            value = final[f"{task}/{key}"]
            assert value != value or 0.0 <= value <= 100.0  # NaN when a size range has no GT
    return final


@pytest.mark.slow  # trains the CLI on a written dataset layout
def test_coco_recipe_trains_on_polygons_and_evaluates(tmp_path):
    data = write_coco_layout(str(tmp_path / "datasets"), num_train=4, num_val=3)
    assert all(isinstance(a["segmentation"], list) for a in data["train"]["annotations"])
    out = str(tmp_path / "out")
    root = str(tmp_path / "datasets")
    log = run_train_cli(COCO_RECIPE, root, out)
    for split, count in (("train", 4), ("val", 3)):
        json_file = os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")
        assert f"Loaded {count} images in COCO format from {json_file}" in log
    check_trained_and_evaluated(out)
    with open(os.path.join(out, "coco_instances_results.json")) as f:
        results = json.load(f)
    # predictions map back to the json's (non-contiguous) COCO category ids
    assert results and {r["category_id"] for r in results} <= {
        c["id"] for c in data["val"]["categories"]
    }
    assert {r["image_id"] for r in results} <= {i["id"] for i in data["val"]["images"]}
    assert set(COCO_USED_IDS) <= {c["id"] for c in data["val"]["categories"]}


@pytest.mark.slow  # trains the CLI on a written dataset layout
def test_lvis_recipe_trains_with_repeat_factors_and_federated_loss(tmp_path):
    root = str(tmp_path / "datasets")
    data = write_lvis_layout(root)
    assert "not_exhaustive_category_ids" in data["train"]["images"][0]
    out = str(tmp_path / "out")
    log = run_train_cli(LVIS_RECIPE, root, out)
    assert f"Loaded 4 images in the LVIS format from {root}/lvis/lvis_v1_train.json" in log
    final = check_trained_and_evaluated(out)
    assert "bbox/APr" in final and "segm/APf" in final
    with open(os.path.join(out, "lvis_instances_results.json")) as f:
        results = json.load(f)
    assert results and all(1 <= r["category_id"] <= 1203 for r in results)
    assert set(LVIS_USED_IDS) <= {c["id"] for c in data["val"]["categories"]}


def test_lvis_recipe_model_has_federated_sigmoid_heads():
    cfg = load_config(LVIS_RECIPE)
    assert cfg.model.roi_heads.num_classes == 1203
    for predictor in cfg.model.roi_heads.box_predictors:
        assert predictor.use_sigmoid_ce and predictor.use_fed_loss
    assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001


@pytest.mark.slow  # trains the CLI on a written dataset layout
@pytest.mark.parametrize("recipe", [EVA02_RECIPE])
def test_eva02_recipe_trains_on_polygons_and_evaluates(tmp_path, recipe):
    root = str(tmp_path / "datasets")
    write_coco_layout(root, num_train=4, num_val=2)
    out = str(tmp_path / "out")
    run_train_cli(recipe, root, out)
    check_trained_and_evaluated(out)
