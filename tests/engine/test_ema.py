"""EMA of weights: update math, checkpoints and --resume, evaluation under EMA weights, eval-only.

References are recomputed here in float64 from recorded weights:
ema_0 = w_0 (weights when training starts), ema_k = d * ema_{k-1} + (1 - d) * w_k.
"""

import logging
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.evaluation import DatasetEvaluator
from omegaconf import OmegaConf
from torch import nn

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.engine import do_test, do_train
from eva_det.engine.ema import (
    EMAHook,
    EMAState,
    apply_ema_weights,
    ema_config,
    load_checkpoint_for_eval,
)
from eva_det.errors import InputError


class Toy(nn.Module):
    """Linear layer + a float buffer changed by every training forward + an integer buffer."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.running.mul_(0.5).add_(x.mean(0)[:2])
            self.count += 1
            return {"loss": ((self.lin(x) - 1) ** 2).mean()}
        return [{"y": float(self.lin.weight.sum() + self.lin.bias.sum())}]


def toy_batches(n):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g) for _ in range(n)]


class Recorder(HookBase):
    """Copies of every tensor after each step (registered after the EMA hook)."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def after_step(self):
        sd = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        self.seen.append({k: v.detach().clone() for k, v in sd.items()})


def train_toy(model, ema, decay, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, toy_batches(steps), opt)
    rec = Recorder(model)
    trainer.register_hooks([EMAHook(model, ema, decay), rec])
    trainer.train(0, steps)
    return rec.seen


def test_ema_matches_hand_computed_average():
    torch.manual_seed(0)
    model = Toy()
    w0 = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    ema, d = EMAState(), 0.7
    seen = train_toy(model, ema, d, steps=4)

    ref = dict(w0)
    for weights in seen:
        ref = {k: d * ref[k] + (1 - d) * weights[k].double() for k in ref}
    assert set(ema.state) == {"lin.weight", "lin.bias", "running", "count"}
    for k in ("lin.weight", "lin.bias", "running"):
        torch.testing.assert_close(ema.state[k].double(), ref[k], atol=1e-6, rtol=0)
        assert not torch.allclose(ema.state[k], seen[-1][k])  # really an average
    assert ema.state["count"].item() == 4  # integer buffers are copied, not averaged
    # the EMA is separate storage: changing it does not touch the model
    ema.state["lin.bias"].add_(100)
    assert model.lin.bias.abs().max() < 50


def test_ema_device_and_decay_settings():
    model = Toy()
    ema = EMAState()
    ema.save_from(model, "cpu")
    assert ema.device == torch.device("cpu") and ema.state["lin.weight"] is not model.lin.weight
    with pytest.raises(ValueError, match="decay"):
        EMAHook(model, ema, decay=1.5)
    cfg = OmegaConf.create({"train": {"model_ema": {"enabled": True, "device": "cuda"}}})
    settings = ema_config(cfg)
    assert settings["decay"] == 0.9999 and settings["use_ema_weights_for_eval_only"] is False
    assert settings["device"] == ("cuda" if torch.cuda.is_available() else "")
    with pytest.raises(InputError, match="decays"):
        ema_config(OmegaConf.create({"train": {"model_ema": {"decays": 0.9}}}))
    assert ema_config(OmegaConf.create({"train": {}}))["enabled"] is False


def test_apply_ema_weights_swaps_and_restores():
    torch.manual_seed(0)
    model = Toy()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMAState()
    ema.save_from(model)
    for v in ema.state.values():
        v.add_(1)
    with apply_ema_weights(model, ema):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema.state[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k])
    with pytest.raises(RuntimeError, match="boom"), apply_ema_weights(model, ema):
        raise RuntimeError("boom")
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="empty"), apply_ema_weights(model, EMAState()):
        pass


def one_batch_loader():
    return [[0]]


class ProbeEvaluator(DatasetEvaluator):
    """Reports the model output (a weight checksum) seen during evaluation."""

    def reset(self):
        self.values = []

    def process(self, inputs, outputs):
        self.values += [o["y"] for o in outputs]

    def evaluate(self):
        return {"probe": {"y": self.values[0]}}


def test_do_test_evaluates_raw_then_ema_weights():
    torch.manual_seed(0)
    model = Toy()
    ema = EMAState()
    ema.save_from(model)
    ema.state["lin.weight"].fill_(0.25)  # checksum under EMA: 6 * 0.25 + bias
    cfg = OmegaConf.create(
        {
            "train": {},
            "dataloader": {"test": L(one_batch_loader)(), "evaluator": L(ProbeEvaluator)()},
        }
    )
    raw_y = float(model.lin.weight.sum() + model.lin.bias.sum())
    weight_before = model.lin.weight.clone()
    results = do_test(cfg, model, ema)
    assert results["probe"]["y"] == pytest.approx(raw_y)
    assert results["ema"]["probe"]["y"] == pytest.approx(1.5 + float(model.lin.bias.sum()))
    assert torch.equal(model.lin.weight, weight_before)
    assert set(do_test(cfg, model)) == {"probe"}


def save_toy_checkpoint(path_dir, with_ema=True):
    torch.manual_seed(0)
    model = Toy()
    ema = EMAState()
    ema.save_from(model)
    for v in ema.state.values():
        v.add_(3)
    extra = {"ema_state": ema} if with_ema else {}
    EVACheckpointer(model, str(path_dir), **extra).save("ckpt")
    return os.path.join(path_dir, "ckpt.pth"), model, ema


def test_checkpoint_round_trip_restores_ema_exactly(tmp_path):
    path, model, ema = save_toy_checkpoint(tmp_path)
    assert set(torch.load(path, weights_only=False)) >= {"model", "ema_state"}
    loaded = EMAState()
    EVACheckpointer(Toy(), ema_state=loaded).load(path)
    assert set(loaded.state) == set(ema.state)
    for k in ema.state:
        assert torch.equal(loaded.state[k], ema.state[k])
    # a plain init_checkpoint load (resume=False) leaves the EMA alone, as in detectron2/official
    fresh = EMAState()
    EVACheckpointer(Toy(), ema_state=fresh).resume_or_load(path, resume=False)
    assert not fresh.has_state()


def eval_cfg(path, enabled, use_ema):
    return OmegaConf.create(
        {
            "train": {
                "init_checkpoint": path,
                "model_ema": {"enabled": enabled, "use_ema_weights_for_eval_only": use_ema},
            }
        }
    )


def test_eval_only_loads_ema_weights(tmp_path, caplog):
    path, saved, ema = save_toy_checkpoint(tmp_path)

    model = Toy()
    load_checkpoint_for_eval(eval_cfg(path, True, True), model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema.state[k])

    for enabled, use_ema in [(True, False), (False, True)]:
        model = Toy()
        with caplog.at_level(logging.WARNING, logger="eva_det.engine.ema"):
            load_checkpoint_for_eval(eval_cfg(path, enabled, use_ema), model)
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved.state_dict()[k])
    assert "use_ema_weights_for_eval_only=True is ignored" in caplog.text

    no_ema, _, _ = save_toy_checkpoint(tmp_path / "raw", with_ema=False)
    with pytest.raises(KeyError, match="has no 'ema_state'.*use_ema_weights_for_eval_only=False"):
        load_checkpoint_for_eval(eval_cfg(no_ema, True, True), Toy())


def test_official_style_ema_entries(tmp_path):
    """Extra entries (official RoPE buffers) are ignored; missing buffers keep their values;
    missing parameters are an error."""
    model = Toy()
    state = {k: v.clone() + 1 for k, v in model.state_dict().items() if k != "running"}
    state["backbone.net.rope_win.freqs_cos"] = torch.zeros(4, 4)
    ema = EMAState()
    ema.load_state_dict(state)
    running = model.running.clone()
    ema.apply_to(model)
    assert torch.equal(model.lin.weight, state["lin.weight"]) and torch.equal(
        model.running, running
    )
    del state["lin.bias"]
    ema.load_state_dict(state)
    with pytest.raises(KeyError, match="lin.bias"):
        ema.apply_to(model)


@pytest.mark.slow  # trains, saves and resumes
def test_do_train_saves_ema_and_resume_continues_it(tmp_path, mini_shapes):
    from helpers.tta import tiny_cfg

    d = 0.5
    cfg = tiny_cfg(
        overrides=[
            "dataloader.train.dataset.names=shapes_mini_train",
            "dataloader.test.dataset.names=shapes_mini_val",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            f"train.output_dir={tmp_path}",
            "train.max_iter=2",
            "train.checkpointer.period=1",
            "train.eval_period=0",
            "train.model_ema.enabled=True",
            f"train.model_ema.decay={d}",
            "optimizer.lr=1e-3",
            "lr_multiplier.warmup_length=0.0",
            "model.roi_heads.box_predictors.2.test_topk_per_image=5",  # quick evaluation
        ],
    )
    # 128-px inputs (the Shapes loaders make 256) to match square_pad=128
    resize, crop = cfg.dataloader.train.mapper.augmentations[1:]
    resize.target_height = resize.target_width = 128
    crop.crop_size = (128, 128)
    cfg.dataloader.test.mapper.augmentations[0].update(short_edge_length=128, max_size=128)
    do_train(cfg)
    first = torch.load(tmp_path / "model_final.pth", weights_only=False)
    ema1, w1 = first["ema_state"], first["model"]
    assert first["iteration"] == 1
    assert set(w1) <= set(ema1)  # every saved weight has an EMA entry (plus non-persistent buffers)
    name = "backbone.net.blocks.0.attn.qkv.weight"
    assert not torch.equal(ema1[name], w1[name])  # the checkpoint's "model" holds raw weights
    # the final evaluation ran on raw and on EMA weights
    metrics = (tmp_path / "metrics.json").read_text()
    assert '"bbox/AP"' in metrics and '"ema/bbox/AP"' in metrics and '"ema/segm/AP"' in metrics

    cfg.train.max_iter = 3
    del cfg.dataloader.evaluator  # no second evaluation
    do_train(cfg, resume=True)
    second = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert second["iteration"] == 2
    ema2, w2 = second["ema_state"], second["model"]
    for k, v in w2.items():
        if v.is_floating_point():
            ref = d * ema1[k].double() + (1 - d) * v.double()  # continued, not restarted
            torch.testing.assert_close(ema2[k].double(), ref, atol=1e-6, rtol=0)
    assert not torch.allclose(ema2[name], d * w1[name] + (1 - d) * w2[name])
