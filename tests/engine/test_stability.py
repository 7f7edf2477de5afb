"""Gradient clipping (``train.clip_grad``) and the NaN / inf loss guard of eva_det's trainers."""

import itertools
import math
import os

import pytest
import torch
from detectron2.engine import hooks
from helpers.shrink import load_config
from helpers.tiny_cli import isolated_logging, metrics, one_thread, train_args

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.engine.launch import run_cli
from eva_det.engine.trainer import (
    EVAAMPTrainer,
    EVATrainer,
    NonFiniteLossError,
    build_trainer,
)
from eva_det.errors import InputError

W0 = [1.0, -2.0, 3.0]


@pytest.fixture(autouse=True)
def _isolated_logging():
    with isolated_logging():  # CLI runs reconfigure loggers; later tests' caplog needs them
        yield


class Toy(torch.nn.Module):
    """A "detector" whose batch is a list of {"x": (3,) tensor}: loss_a = w.x, loss_b = |w|^2."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(W0))

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch]).mean(0)
        return {"loss_a": (self.w * x).sum(), "loss_b": (self.w**2).sum()}


def _loader(*xs):
    return itertools.cycle([[{"x": torch.tensor(x)}] for x in xs])


def _train(clip_grad, x, steps=1):
    model = Toy()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = EVATrainer(model, _loader(x), optim, clip_grad=clip_grad)
    trainer.train(0, steps)
    return model.w.detach(), trainer


def test_clip_by_global_norm_matches_formula():
    x = [3.0, 4.0, 0.0]
    w, trainer = _train(dict(enabled=True, clip_type="norm", clip_value=1.0), x)
    grad = torch.tensor(x) + 2 * torch.tensor(W0)  # d(loss_a + loss_b)/dw
    norm = grad.norm()
    assert trainer.storage.history("grad_norm").latest() == pytest.approx(float(norm))
    expected = torch.tensor(W0) - 0.1 * grad / (norm + 1e-6)  # norm > 1: scaled to norm 1
    torch.testing.assert_close(w, expected)


def test_clip_by_value_and_disabled():
    x = [3.0, 4.0, 0.0]
    grad = torch.tensor(x) + 2 * torch.tensor(W0)  # (5, 0, 6)
    w, _ = _train(dict(enabled=True, clip_type="value", clip_value=0.5), x)
    torch.testing.assert_close(w, torch.tensor(W0) - 0.1 * grad.clamp(-0.5, 0.5))
    w, trainer = _train(None, x)
    torch.testing.assert_close(w, torch.tensor(W0) - 0.1 * grad)
    assert "grad_norm" not in trainer.storage.histories()


def test_nan_loss_stops_before_the_step_and_names_terms_and_checkpoint(tmp_path):
    model = Toy()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _loader([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [float("nan"), 0.0, 0.0])
    trainer = EVATrainer(model, data, optim, checkpoint_dir=str(tmp_path))
    checkpointer = EVACheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=1)])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train(0, 5)
    message = str(info.value)
    assert "iteration 2" in message
    assert "loss_a=nan" in message
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]["w"]
    assert f"loss_b={float((saved**2).sum()):.6g}" in message  # every term, with its value
    assert str(tmp_path / "model_0000001.pth") in message and "--resume" in message
    # the NaN never reached the weights or a checkpoint
    torch.testing.assert_close(model.w.detach(), saved)
    assert open(tmp_path / "last_checkpoint").read() == "model_0000001.pth"
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000000.pth",
        "model_0000001.pth",
    ]


def test_non_finite_gradient_with_clipping_stops_training():
    class SqrtToy(Toy):
        def forward(self, batch):  # at w = 0: loss 0, gradient 0 * inf = nan
            return {"loss_sqrt": self.w.abs().sqrt().sum()}

    model = SqrtToy()
    with torch.no_grad():
        model.w.zero_()
    trainer = EVATrainer(
        model,
        _loader([0.0, 0.0, 0.0]),
        torch.optim.SGD(model.parameters(), lr=0.1),
        clip_grad=dict(enabled=True),
    )
    with pytest.raises(NonFiniteLossError, match="gradient norm became nan at iteration 0"):
        trainer.train(0, 2)
    assert torch.equal(model.w.detach(), torch.zeros(3))


def test_checkpointer_refuses_non_finite_weights(tmp_path):
    model = Toy()
    ckpt = EVACheckpointer(model, str(tmp_path))
    ckpt.save("model_0000000")
    with torch.no_grad():
        model.w[1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"model_0000001.pth.*\['w'\]"):
        ckpt.save("model_0000001")
    assert not os.path.exists(tmp_path / "model_0000001.pth")
    assert open(tmp_path / "last_checkpoint").read() == "model_0000000.pth"


SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"


def test_config_selects_trainer_and_validates_clip_settings():
    cfg = load_config(SHAPES, ["train.clip_grad.enabled=True", "train.clip_grad.clip_value=5"])
    model = Toy()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = build_trainer(cfg, model, [], optim, use_amp=False)
    assert type(trainer) is EVATrainer
    assert trainer.clip_grad == dict(enabled=True, clip_type="norm", clip_value=5.0, norm_type=2.0)
    assert trainer.checkpoint_dir == cfg.train.output_dir
    with pytest.raises(InputError, match="clip_type='l2'"):
        build_trainer(
            load_config(SHAPES, ["train.clip_grad.clip_type=l2"]), model, [], optim, False
        )


def test_training_cli_logs_clipped_gradient_norm(tmp_path, repo_root, mini_shapes, monkeypatch):
    monkeypatch.chdir(repo_root)
    clip = ["train.max_iter=2", "train.clip_grad.enabled=True", "train.clip_grad.clip_value=0.5"]
    with one_thread():
        run_cli(train_args(tmp_path, clip))
    rows = metrics(tmp_path)
    assert sorted(rows) == [0, 1]
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP training needs CUDA")
def test_amp_clipping_acts_on_unscaled_gradients():
    model = Toy().cuda()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [[{"x": torch.tensor([3.0, 4.0, 0.0], device="cuda")}]]
    trainer = EVAAMPTrainer(
        model,
        itertools.cycle(batch),
        optim,
        clip_grad=dict(enabled=True, clip_value=1.0),
        precision=torch.float32,
    )
    trainer.train(0, 1)
    grad = torch.tensor([3.0, 4.0, 0.0]) + 2 * torch.tensor(W0)
    assert trainer.storage.history("grad_norm").latest() == pytest.approx(float(grad.norm()))
    expected = torch.tensor(W0) - 0.1 * grad / (grad.norm() + 1e-6)
    torch.testing.assert_close(model.w.detach().cpu(), expected)
