"""The main-job path end to end on a tiny shapes set: training lowers the loss; eval gives AP;
the run's pictures are written; ``train.seed`` fixes the data order."""

import json
import os

import pytest
from helpers.tiny_cli import CONFIG, mini_shapes_overrides
from PIL import Image

from eva_det.engine.launch import run_cli

# trains the CLI end to end several times
pytestmark = pytest.mark.slow


def test_training_lowers_loss_and_evaluates(tmp_path, repo_root, mini_shapes):
    os.chdir(repo_root)
    run_cli(
        ["--config-file", CONFIG]
        + mini_shapes_overrides(tmp_path)
        + [
            "train.max_iter=30",
            "train.log_period=1",
            "train.checkpointer.period=20",
            "optimizer.lr=1e-3",
            "lr_multiplier.warmup_length=0.1",
            "lr_multiplier.scheduler.milestones=[25,28]",
            "lr_multiplier.scheduler.num_updates=30",
        ]
    )
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    losses = [r["total_loss"] for r in rows]
    assert len(losses) >= 25
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))
    assert open(os.path.join(tmp_path, "last_checkpoint")).read() == "model_final.pth"
    # evaluation at the end of training wrote an AP table
    final = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.json"))][-1]
    assert "bbox/AP" in final and "segm/AP" in final
    # pictures after the final evaluation: 6 val images of 128 px, 4 per row; the loss plot
    with Image.open(os.path.join(tmp_path, "predictions.png")) as im:
        assert im.format == "PNG" and im.size == (4 * 128, 2 * 128)
        im.load()
    with Image.open(os.path.join(tmp_path, "losses.png")) as im:
        assert im.format == "PNG" and im.size == (1000, 500)
        im.load()

    # --eval-only on the trained weights returns the AP table
    results = run_cli_eval(tmp_path)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert isinstance(results[task][key], float)


def run_cli_eval(tmp_path):
    from detectron2.engine import default_argument_parser

    from eva_det.engine.launch import main

    args = default_argument_parser().parse_args(
        ["--eval-only", "--config-file", CONFIG]
        + mini_shapes_overrides(tmp_path)
        + [f"train.init_checkpoint={tmp_path}/model_final.pth"]
    )
    return main(args)


def test_train_seed_sets_the_data_order(tmp_path, repo_root, mini_shapes):
    """The same train.seed gives the same sampler seed (data order), another seed another one."""
    import torch
    from helpers.tiny_cli import isolated_logging, one_thread, train_args

    os.chdir(repo_root)
    seeds = {}
    with isolated_logging(), one_thread():
        for run, seed in (("a", 3), ("b", 3), ("c", 4)):
            out = tmp_path / run
            run_cli(train_args(out, ["train.max_iter=1", f"train.seed={seed}"]))
            state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
            seeds[run] = state["data_loader"]["seed"]
    assert seeds["a"] == seeds["b"] != seeds["c"]
