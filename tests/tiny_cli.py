"""Run the training CLI on the tiny shapes recipe in-process or in a separate process.

The overrides are tests/test_train_shapes.py's (128 px, ``mini_shapes`` data) plus
:data:`DETERMINISTIC`, which removes every source of randomness that differs between runs or
ranks, so that two runs can be compared number for number, and :data:`FAST`.
"""

import contextlib
import json
import logging
import os
import subprocess
import sys
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from test_train_shapes import CONFIG, _common

# Make two runs (or ranks) see identical work:
# - no random augmentation: never flip, scale exactly 1 (the crop is then the whole image);
# - every anchor and every proposal is sampled, so the random sampling only orders them and
#   the losses (sums / means) do not depend on the random generator;
# - fixed seed for the weights and the sampler.
DETERMINISTIC = [
    "train.seed=0",
    "dataloader.train.mapper.augmentations.0.prob=0.0",
    "dataloader.train.mapper.augmentations.1.min_scale=1.0",
    "dataloader.train.mapper.augmentations.1.max_scale=1.0",
    "model.proposal_generator.batch_size_per_image=100000",
    "model.proposal_generator.positive_fraction=1.0",
    "model.proposal_generator.post_nms_topk=[100,50]",
    "model.roi_heads.batch_size_per_image=1000",
    "model.roi_heads.positive_fraction=1.0",
    "train.log_period=1",
    "train.eval_period=0",
]
# A smaller backbone, an end-of-training evaluation that keeps no detection (an untrained
# model scores ~0.2) and no pictures, so that these runs spend their time on training.
FAST = [
    "model.backbone.net.embed_dim=64",
    "model.backbone.net.depth=2",
    "model.backbone.net.window_block_indexes=[0]",
    "model.roi_heads.override_score_thresh=0.9",
    "train.pictures.enabled=False",
]

# Registers the mini shapes datasets at import, so that processes started by
# detectron2's launch (spawn: they import this script as __mp_main__) have them too.
_SCRIPT = """
import os, sys
from eva_det.data.datasets.shapes import register_shapes
register_shapes(root=os.environ["EVA_TEST_SHAPES_ROOT"], image_size=128,
                splits={"shapes_mini_train": ("train", 12), "shapes_mini_val": ("val", 6)})
if __name__ == "__main__":
    from eva_det.engine.launch import run_cli
    run_cli(sys.argv[1:])
"""


def train_args(output_dir, extra: List[str] = ()) -> List[str]:
    """``--config-file`` + the tiny deterministic overrides + ``extra``."""
    return ["--config-file", CONFIG] + _common(output_dir) + DETERMINISTIC + FAST + list(extra)


def cli_process(tmp_path, repo_root: str, argv: List[str]) -> subprocess.Popen:
    """Start the CLI with ``argv`` in a new Python process (cwd = repository root)."""
    script = os.path.join(tmp_path, "train_mini_shapes.py")
    with open(script, "w") as f:
        f.write(_SCRIPT)
    env = dict(os.environ)
    env["EVA_TEST_SHAPES_ROOT"] = MetadataCatalog.get("shapes_mini_train").shapes_params["root"]
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    return subprocess.Popen(
        [sys.executable, script] + argv,
        cwd=repo_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metrics(output_dir) -> Dict[int, dict]:
    """Training rows of metrics.json by iteration (the last row written for an iteration)."""
    rows = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                rows[row["iteration"]] = row
    return rows


@contextlib.contextmanager
def one_thread():
    """In-process runs on one thread: on a busy 2-core machine two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def isolated_logging():
    """Undo what a CLI run's ``default_setup`` does to the detectron2 / fvcore / eva_det loggers.

    It turns their propagation off and adds handlers, after which pytest's ``caplog`` of later
    tests no longer sees their records.
    """
    loggers = [logging.getLogger(name) for name in ("detectron2", "fvcore", "eva_det")]
    saved = [(lg, lg.propagate, lg.level, list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        for lg, propagate, level, handlers in saved:
            for handler in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(handler)
                handler.close()
            lg.propagate, lg.level = propagate, level
