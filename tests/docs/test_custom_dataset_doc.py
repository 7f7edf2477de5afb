"""docs/CUSTOM_DATASETS.md's commands, run as written on a tiny generated custom dataset.

The ```bash blocks of the doc are parsed and run in a scratch folder that looks like the
repository root to them (``tools/`` and ``projects/`` linked, ``datasets/my_dataset`` and
``weights/eva02_B_coco_bsl.pth`` written here). Appended to each command: overrides that shrink
the model and schedule to CPU size (tests/helpers/shrink.py), plus, for training,
``frozen_blocks=1`` (checked below). The demo's ``--confidence-threshold`` is lowered to 0 so
that the few-iteration model draws something.
"""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import cv2
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.visualizer import Visualizer
from helpers.coco_layout import write_coco_json
from helpers.shrink import HEAD_SHRINK, REPO, cli_tiny_overrides, load_config, shrink_overrides

DOC = os.path.join(REPO, "docs", "CUSTOM_DATASETS.md")
RECIPE = "projects/ViTDet/configs/Custom/eva2_custom_cascade_mask_rcnn_vitdet_b_4attn_1024.py"
CLASSES = ["cat", "dog", "bird"]  # as in the doc's commands
CATEGORIES = [{"id": i, "name": n} for i, n in zip((3, 7, 9), CLASSES)]  # ids not contiguous


def doc_commands() -> dict:
    """The doc's bash blocks as argv lists, keyed "train", "eval", "demo"."""
    with open(DOC) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    commands = {}
    for block in blocks:
        argv = shlex.split(block.replace("\\\n", " "))
        assert argv[0] == "python", block
        kind = (
            "demo" if argv[1] == "tools/demo.py" else "eval" if "--eval-only" in argv else "train"
        )
        assert kind not in commands, f"two {kind} commands in {DOC}"
        commands[kind] = argv
    assert set(commands) == {"train", "eval", "demo"}
    return commands


def model_overrides(cfg) -> list:
    return shrink_overrides(cfg) + HEAD_SHRINK + ["model.roi_heads.override_score_thresh=0.0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with tools/, projects/ (linked), the doc's dataset layout and "released" weights."""
    work = tmp_path_factory.mktemp("custom_work")
    for name in ("tools", "projects"):
        os.symlink(os.path.join(REPO, name), work / name)
    data = work / "datasets" / "my_dataset"
    for split, count, seed in (("train", 4, 0), ("val", 2, 1)):
        write_coco_json(
            str(data / "annotations" / f"{split}.json"),
            str(data / "images" / split),
            count,
            CATEGORIES,
            [c["id"] for c in CATEGORIES],
            seed=seed,
        )
    # a COCO detector of the recipe's (shrunk) architecture, like eva02_B_coco_bsl.pth
    cfg = load_config(RECIPE)
    cfg = load_config(RECIPE, model_overrides(cfg) + ["model.roi_heads.num_classes=80"])
    torch.manual_seed(0)
    os.makedirs(work / "weights")
    torch.save(
        {"model": instantiate(cfg.model).state_dict()}, work / "weights/eva02_B_coco_bsl.pth"
    )
    return work


def run(workdir, argv) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable] + argv[1:],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.mark.slow  # trains, evaluates and runs the demo as documented
def test_documented_train_eval_demo(workdir, monkeypatch):
    commands = doc_commands()
    cfg = load_config(RECIPE)
    tiny = cli_tiny_overrides(cfg)  # the doc's output folders

    # train: fine-tunes the "released" COCO detector on 3 classes
    log = run(
        workdir, commands["train"] + tiny + ["optimizer.params.lr_factor_func.frozen_blocks=1"]
    )
    report = [line for line in log.splitlines() if "Partial checkpoint load:" in line]
    assert len(report) == 1, log[-4000:]
    skipped = [
        f"roi_heads.box_predictor.{i}.cls_score.{p}" for i in range(3) for p in ("weight", "bias")
    ]
    skipped += ["roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"]
    assert "skipped 8 with other shapes" in report[0]
    assert report[0].endswith(
        "; 8 model tensors not in the checkpoint"
    )  # the same 8, as in the doc
    for name in skipped:
        assert name in report[0]
    assert "(81, 32) vs (4, 32)" in report[0] and "(80, 16, 1, 1) vs (3, 16, 1, 1)" in report[0]
    out = workdir / "output" / "my_dataset"
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [0, 1, 2]
    assert "bbox/AP" in rows[-1] and "segm/AP" in rows[-1]
    # frozen_blocks=1: the embeddings and block 0 are exactly the loaded weights, block 1 moved
    start = torch.load(workdir / "weights/eva02_B_coco_bsl.pth")["model"]
    final = torch.load(out / "model_final.pth")["model"]
    for key in start:
        if key.startswith(("backbone.net.blocks.0.", "backbone.net.patch_embed")) and (
            start[key].is_floating_point()
        ):
            assert torch.equal(start[key], final[key]), key
    assert not torch.equal(
        start["backbone.net.blocks.1.mlp.w3.weight"], final["backbone.net.blocks.1.mlp.w3.weight"]
    )

    # evaluate the trained model: AP tables and detections in the json's category ids
    log = run(workdir, commands["eval"] + tiny)
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    with open(workdir / "output/my_dataset/eval/coco_instances_results.json") as f:
        results = json.load(f)
    assert results and {r["category_id"] for r in results} <= {3, 7, 9}

    # demo: draws every val image
    demo = list(commands["demo"])
    demo[demo.index("--confidence-threshold") + 1] = "0.0"
    run(workdir, demo + model_overrides(cfg))
    drawn = sorted(os.listdir(workdir / "output/my_dataset/demo"))
    assert drawn == ["000000000001.jpg", "000000000002.jpg"]

    # ... with the dataset's class names as labels (what tools/demo.py's predictor draws with)
    spec = importlib.util.spec_from_file_location("demo_tool", os.path.join(REPO, "tools/demo.py"))
    demo_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_tool)
    args, overrides = demo_tool.parse_args(demo[2:] + model_overrides(cfg))
    monkeypatch.chdir(workdir)
    from eva_det.demo import LazyPredictor

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), overrides)
    predictor = LazyPredictor(cfg)
    assert list(predictor.metadata.thing_classes) == CLASSES
    image = cv2.imread(str(workdir / "datasets/my_dataset/images/val/000000000001.jpg"))
    instances = predictor(image)["instances"]
    assert len(instances) > 0
    vis = Visualizer(image[:, :, ::-1], predictor.metadata).draw_instance_predictions(instances)
    labels = [t.get_text() for t in vis.ax.texts]
    assert labels and all(label.split(" ")[0] in CLASSES for label in labels), labels
