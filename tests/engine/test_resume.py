"""Resume without loss: a killed run continues to the same weights; bad checkpoints are skipped.

The end-to-end test kills a training process after its second checkpoint, truncates that
checkpoint on disk, and resumes with another ``train.seed``. The resumed run has to fall back to
the previous complete checkpoint (warning naming both files) and still end with the weights of an
uninterrupted run: that needs the iteration, optimizer moments, lr schedule *and* the data
sampler's seed and stream position restored (a sampler restarted or reseeded changes the weights
by 25% of what training changed; restored, by 0.03%, float noise).
"""

import json
import logging
import os
import time

import pytest
import torch
from detectron2.structures import Boxes, Instances
from helpers.tiny_cli import cli_process, isolated_logging, metrics, one_thread, train_args

import eva_det.evaluation.coco_evaluation as coco_evaluation
from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.data.resumable_loader import ResumableTrainingSampler
from eva_det.engine.launch import run_cli
from eva_det.errors import InputError
from eva_det.evaluation import COCOEvaluator

# trains, interrupts and resumes the CLI
pytestmark = pytest.mark.slow

ITERS = ["train.max_iter=8", "train.checkpointer.period=2"]


@pytest.fixture(autouse=True)
def _isolated_logging():
    with isolated_logging():  # CLI runs reconfigure loggers; later tests' caplog needs them
        yield


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _wait_for_tag(output_dir, name, proc, timeout=600):
    tag = os.path.join(output_dir, "last_checkpoint")
    start = time.time()
    while time.time() - start < timeout:
        if os.path.isfile(tag) and open(tag).read() == name:
            return
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.02)
    raise TimeoutError(f"no {name} after {timeout} s")


def test_killed_run_resumes_to_the_same_weights(
    tmp_path, repo_root, mini_shapes, monkeypatch, caplog
):
    monkeypatch.chdir(repo_root)
    ref, run = tmp_path / "reference", tmp_path / "killed"
    proc = cli_process(tmp_path, repo_root, train_args(run, ITERS))
    _wait_for_tag(run, "model_0000003.pth", proc)  # checkpoints after iterations 1 and 3
    proc.kill()  # SIGKILL mid-run
    proc.communicate()
    assert not os.path.exists(run / "model_final.pth")
    with one_thread():
        run_cli(train_args(ref, ITERS))  # the uninterrupted reference
    # the newest checkpoint got cut short on disk (e.g. an interrupted copy)
    newest, previous = run / "model_0000003.pth", run / "model_0000001.pth"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)

    with caplog.at_level(logging.WARNING, logger="eva_det"), one_thread():
        # another seed: weights come from the checkpoint, the data order must too
        run_cli(["--resume"] + train_args(run, ITERS + ["train.seed=7"]))
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and str(newest) in warnings[0] and str(previous) in warnings[0]

    assert open(run / "last_checkpoint").read() == "model_final.pth"
    rows, ref_rows = metrics(run), metrics(ref)
    assert sorted(rows) == list(range(8))  # iterations 2..7 written by the resumed run
    assert [rows[i]["lr"] for i in range(8)] == [ref_rows[i]["lr"] for i in range(8)]
    # Same weights as the uninterrupted run, measured against how far training moved them from
    # the checkpoint resumed from: ~3e-4 here (float noise, amplified by Adam where a gradient is
    # ~0), ~0.25 with the sampler reseeded or one batch off.
    expected, got = _weights(ref / "model_final.pth"), _weights(run / "model_final.pth")
    start = _weights(previous)
    assert expected.keys() == got.keys()
    moved = sum(((expected[k] - start[k]).double() ** 2).sum() for k in expected) ** 0.5
    error = sum(((got[k] - expected[k]).double() ** 2).sum() for k in expected) ** 0.5
    assert moved > 1e-2 and error < 0.01 * moved, (float(error), float(moved))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)


def test_resume_without_any_readable_checkpoint_names_the_file(tmp_path):
    ckpt = EVACheckpointer(_Toy(), str(tmp_path))
    ckpt.save("model_0000001")
    path = tmp_path / "model_0000001.pth"
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(InputError, match="model_0000001.pth") as info:
        EVACheckpointer(_Toy(), str(tmp_path)).resume_or_load("", resume=True)
    assert "without --resume" in str(info.value)


def test_missing_last_checkpoint_falls_back_to_newest_complete(tmp_path, caplog):
    model = _Toy()
    ckpt = EVACheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    saved = model.fc.weight.detach().clone()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ckpt.save("model_0000003")
    ckpt.save("model_final")
    os.remove(tmp_path / "model_final.pth")  # deleted by hand; last_checkpoint still names it
    with open(tmp_path / "model_0000003.pth", "wb") as f:
        f.write(b"not a checkpoint")
    fresh = _Toy()
    with caplog.at_level(logging.WARNING, logger="eva_det"):
        EVACheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(fresh.fc.weight, saved)
    assert "model_final.pth" in caplog.text and "model_0000001.pth" in caplog.text


def test_sampler_stream_restarts_at_the_saved_position(monkeypatch):
    full = ResumableTrainingSampler(10, seed=3)
    stream = [i for _, i in zip(range(37), full)]
    resumed = ResumableTrainingSampler(10, seed=99)
    resumed.seed, resumed.start = 3, 24
    assert [i for _, i in zip(range(13), resumed)] == stream[24:]
    # sharded by rank like detectron2's TrainingSampler: rank 1 of 2 takes odd positions
    monkeypatch.setattr(resumed, "_rank", 1)
    monkeypatch.setattr(resumed, "_world_size", 2)
    assert [i for _, i in zip(range(6), resumed)] == stream[25:37:2]


def test_configured_samplers_become_resumable():
    from detectron2.config import LazyCall as L
    from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

    from eva_det.data.resumable_loader import (
        ResumableRepeatFactorTrainingSampler,
        _build_sampler,
    )

    factors = torch.tensor([1.0, 2.5, 1.0, 0.5, 3.0])
    lvis_like = L(RepeatFactorTrainingSampler)(repeat_factors=factors, seed=5)
    sampler = _build_sampler(lvis_like, 5)
    assert type(sampler) is ResumableRepeatFactorTrainingSampler
    stream = [i for _, i in zip(range(40), RepeatFactorTrainingSampler(factors, seed=5))]
    assert [i for _, i in zip(range(40), sampler)] == stream  # same stream as detectron2's
    sampler.start = 17
    assert [i for _, i in zip(range(23), sampler)] == stream[17:]
    default = _build_sampler(None, 7)
    assert type(default) is ResumableTrainingSampler and isinstance(default, TrainingSampler)


def _predictions(score):
    inst = Instances((128, 128))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 60.0]]))
    inst.scores = torch.tensor([score])
    inst.pred_classes = torch.tensor([0])
    return [{"instances": inst}]


def _evaluate(out, score):
    evaluator = COCOEvaluator("shapes_mini_val", tasks=("bbox",), distributed=False, output_dir=out)
    evaluator.reset()
    for image_id in (1, 2):
        evaluator.process([{"image_id": image_id}], _predictions(score))
    return evaluator.evaluate()


def test_interrupted_evaluation_rerun_replaces_all_outputs(tmp_path, mini_shapes, monkeypatch):
    from eva_det.data.datasets.shapes import ensure_shapes

    ensure_shapes("shapes_mini_val")
    out = str(tmp_path)
    _evaluate(out, 0.25)  # a complete earlier run
    results = os.path.join(out, "coco_instances_results.json")
    assert os.path.isfile(results)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # the next run dies after its predictions are written
        m.setattr(coco_evaluation, "atomic_write_json", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _evaluate(out, 0.75)
    # never the new predictions next to the old results
    assert not os.path.exists(results)
    predictions = torch.load(os.path.join(out, "instances_predictions.pth"), weights_only=False)
    assert {r["score"] for p in predictions for r in p["instances"]} == {0.75}

    table = _evaluate(out, 0.75)  # the re-run
    with open(results) as f:
        assert {r["score"] for r in json.load(f)} == {0.75}
    assert sorted(os.listdir(out)) == ["coco_instances_results.json", "instances_predictions.pth"]
    assert set(table) == {"bbox"}
