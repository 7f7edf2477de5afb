"""Two CPU processes (detectron2's launch, gloo) train like one process at the same total batch.

What makes the comparison honest:

* same weights: ``train.seed`` seeds rank 0 like the single process, and DDP copies rank 0's
  weights to rank 1 when it wraps the model;
* same images per iteration: detectron2's TrainingSampler draws one seeded global stream and rank
  r takes positions r, r + 2, ...; the single process takes positions 2i, 2i + 1 in iteration i;
* no other randomness (tests/helpers/tiny_cli.py DETERMINISTIC: no random augmentation, every
  anchor / proposal sampled).

What still differs, by design of detectron2's data parallelism: each process normalises its ROI
losses over its own image (one process: over both images), and DDP averages gradients. So the
RPN losses (normalised by a per-image constant) agree to float precision at iteration 0, the total
loss to ~1e-4 relative, and later iterations (after slightly different updates) to ~1e-3.
"""

import os

import pytest
from helpers.tiny_cli import cli_process, isolated_logging, metrics, one_thread, train_args

from eva_det.engine.launch import run_cli

# several training processes end to end
pytestmark = pytest.mark.slow

ITERS = ["train.max_iter=4", "train.checkpointer.period=100"]


@pytest.fixture(autouse=True)
def _isolated_logging():
    with isolated_logging():  # CLI runs reconfigure loggers; later tests' caplog needs them
        yield


def test_two_processes_match_one(tmp_path, repo_root, mini_shapes, monkeypatch):
    monkeypatch.chdir(repo_root)
    one, two = tmp_path / "one", tmp_path / "two"
    proc = cli_process(tmp_path, repo_root, ["--num-gpus", "2"] + train_args(two, ITERS))
    with one_thread():
        run_cli(train_args(one, ITERS))  # single process, while the two processes run
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]

    a, b = metrics(one), metrics(two)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for key in ("loss_rpn_cls", "loss_rpn_loc"):  # same images, same weights
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-5), key
    assert b[0]["total_loss"] == pytest.approx(a[0]["total_loss"], rel=1e-3)
    for it in range(4):
        assert b[it]["total_loss"] == pytest.approx(a[it]["total_loss"], rel=1e-2), it
        assert b[it]["lr"] == a[it]["lr"]
    assert a[3]["total_loss"] < 0.95 * a[0]["total_loss"]  # the curve moved: not a constant
    # rank 0 alone wrote the outputs
    assert os.path.isfile(two / "model_final.pth")
    assert os.path.isfile(two / "log.txt.rank1")  # the second process really ran


def test_cpu_processes_share_the_cores(monkeypatch):
    import torch

    from eva_det.engine.launch import split_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert split_cpu_threads(2) == 2 == torch.get_num_threads()  # 5 cores // 2 processes
        assert split_cpu_threads(8) == 1 == torch.get_num_threads()  # at least one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
        torch.set_num_threads(3)
        assert split_cpu_threads(2) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
