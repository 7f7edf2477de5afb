"""Strict fit: evaluation refuses checkpoints that do not fit, training needs the whole backbone."""

import logging

import pytest
import torch
from detectron2.config import instantiate
from helpers.shrink import load_config
from helpers.tiny_cli import FAST, isolated_logging, one_thread, train_args
from omegaconf import OmegaConf

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.checkpoint.fit import check_fit
from eva_det.demo import LazyPredictor
from eva_det.engine.ema import load_checkpoint_for_eval
from eva_det.engine.launch import run_cli
from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_torch_save

SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"


@pytest.fixture(autouse=True)
def _isolated_logging():
    with isolated_logging():
        yield


class _Net(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.blocks = torch.nn.Linear(width, width)


class _Backbone(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.net = _Net(width)


class _Predictor(torch.nn.Module):
    def __init__(self, classes=3, fed_loss=False):
        super().__init__()
        self.cls_score = torch.nn.Linear(4, classes)
        if fed_loss:
            self.register_buffer("fed_loss_cls_weights", torch.ones(classes - 1))


class _Heads(torch.nn.Module):
    def __init__(self, classes=3, fed_loss=False, mask=True):
        super().__init__()
        self.box_predictor = _Predictor(classes, fed_loss)
        if mask:
            self.mask_head = torch.nn.Conv2d(4, 1, 1)


class _Detector(torch.nn.Module):
    """``backbone.net.*`` + ``roi_heads.*`` names, as the real detectors."""

    def __init__(self, width=4, classes=3, fed_loss=False, mask=True):
        super().__init__()
        self.backbone = _Backbone(width)
        self.roi_heads = _Heads(classes, fed_loss, mask)


def _save(model, path):
    atomic_torch_save({"model": model.state_dict()}, str(path))
    return str(path)


def _eval_cfg(path, **train):
    return OmegaConf.create({"train": {"init_checkpoint": path, **train}})


def test_eval_refuses_missing_unexpected_and_other_shapes_in_one_message(tmp_path):
    path = _save(_Detector(width=6, classes=5, mask=False), tmp_path / "other.pth")
    model = _Detector()
    with pytest.raises(InputError) as info:
        load_checkpoint_for_eval(_eval_cfg(path), model)
    message = str(info.value)
    assert f"Checkpoint {path} does not fit the model (6 problems)" in message
    assert "2 model tensors missing from the checkpoint: roi_heads.mask_head.weight, " in message
    assert "backbone.net.blocks.weight (6, 6) in the file vs (4, 4) in the model" in message
    assert "4 tensors with other shapes" in message
    assert "train.allow_checkpoint_mismatch=True" in message and "MODEL_ZOO" in message

    # the named opt-in evaluates anyway, with the same text as a warning
    load_checkpoint_for_eval(_eval_cfg(path, allow_checkpoint_mismatch=True), model)


def test_eval_lists_the_first_few_and_the_count(tmp_path):
    class Wide(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(n))

    path = _save(Wide(12), tmp_path / "wide.pth")
    with pytest.raises(InputError) as info:
        EVACheckpointer(Wide(2)).load_for_eval(path)
    message = str(info.value)
    assert "20 checkpoint tensors the model does not have: layers.2.weight, " in message
    assert "... (15 more)" in message


def test_eval_ignores_federated_loss_buffers_by_name(tmp_path):
    with_fed = _save(_Detector(fed_loss=True), tmp_path / "lvis.pth")
    without = _save(_Detector(), tmp_path / "coco.pth")
    load_checkpoint_for_eval(_eval_cfg(with_fed), _Detector())  # unexpected buffer: fine
    load_checkpoint_for_eval(_eval_cfg(without), _Detector(fed_loss=True))  # missing: fine


def test_training_needs_the_whole_backbone_and_names_partial_heads(tmp_path, caplog):
    # eva_o365.pth -> COCO: other class rows, no mask head; backbone complete
    path = _save(_Detector(classes=7, mask=False), tmp_path / "o365.pth")
    ckpt = EVACheckpointer(_Detector(), str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING):
        ckpt.resume_or_load(path, resume=False)
    assert (
        "4 model tensors not in the checkpoint (absent from the file: roi_heads.mask_head (2))"
        in caplog.text
    )
    assert "roi_heads.box_predictor.cls_score.weight (7, 4) vs (3, 4)" in caplog.text

    # a backbone of another size (or with other names) is refused
    other = _save(_Detector(width=6), tmp_path / "other_size.pth")
    with pytest.raises(InputError) as info:
        EVACheckpointer(_Detector(), str(tmp_path / "out")).resume_or_load(other, resume=False)
    message = str(info.value)
    assert "does not fit the backbone of the model (2 problems)" in message
    assert "tools/convert_pretrained.py" in message
    assert "roi_heads" not in message  # heads are not the problem
    model = _Detector()
    ckpt = EVACheckpointer(model, str(tmp_path / "out"), allow_mismatch=True)
    ckpt.resume_or_load(other, resume=False)  # the opt-in trains from it anyway


def test_resume_needs_every_tensor(tmp_path):
    out = tmp_path / "out"
    EVACheckpointer(_Detector(classes=5), str(out)).save("model_0000009")
    with pytest.raises(InputError, match=r"--resume .*another model"):
        EVACheckpointer(_Detector(), str(out)).resume_or_load("", resume=True)


def test_check_fit_without_report_or_problems_is_silent():
    check_fit(None, "x.pth", "eval")
    with pytest.raises(ValueError, match="purpose"):
        check_fit(type("R", (), {"incorrect_shapes": [(1, 2, 3)]})(), "x.pth", "test")


def test_demo_refuses_a_checkpoint_of_another_model(tmp_path, mini_shapes):
    shrink = FAST + ["train.device=cpu"]
    other = instantiate(load_config(SHAPES, shrink + ["model.backbone.net.embed_dim=32"]).model)
    path = _save(other, tmp_path / "other.pth")
    cfg = load_config(SHAPES, shrink + [f"train.init_checkpoint={path}"])
    with pytest.raises(InputError, match="does not fit the model"):
        LazyPredictor(cfg)


def test_eval_only_with_another_embed_dim_exits_with_one_message(
    tmp_path, repo_root, mini_shapes, monkeypatch, caplog
):
    """The reported case: tiny weights into a config with another embed_dim."""
    monkeypatch.chdir(repo_root)
    small = instantiate(load_config(SHAPES, FAST + ["model.backbone.net.embed_dim=32"]).model)
    path = _save(small, tmp_path / "small.pth")
    argv = ["--eval-only"] + train_args(tmp_path / "out", [f"train.init_checkpoint={path}"])
    with caplog.at_level(logging.ERROR, logger="eva_det"), one_thread():
        with pytest.raises(SystemExit) as info:
            run_cli(argv)
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"Checkpoint {path} does not fit the model" in errors[0]
    assert "model.backbone.net.embed_dim" not in errors[0]  # tensor names, not config keys
    assert (
        "45 tensors with other shapes: backbone.simfp_2.0.weight (32, 16, 2, 2) in the file "
        "vs (64, 32, 2, 2) in the model" in errors[0]
    )
    assert "... (40 more)" in errors[0]


def test_model_zoo_refuses_a_checkpoint_of_another_model(tmp_path):
    from helpers.shrink import NARROW_HEADS
    from helpers.shrink import zoo_shrink as shrink

    from eva_det import model_zoo

    name = "eva02_B_coco_bsl"
    overrides = shrink(name) + NARROW_HEADS
    other_cfg = model_zoo.get_config(name, overrides=overrides + ["model.roi_heads.num_classes=3"])
    path = _save(instantiate(other_cfg.model), tmp_path / "three_classes.pth")
    with pytest.raises(InputError) as info:
        model_zoo.get(name, checkpoint=path, overrides=overrides)
    assert "roi_heads.box_predictor.0.cls_score.weight (4, 64) in the file vs (81, 64)" in str(
        info.value
    )
    opt_in = overrides + ["train.allow_checkpoint_mismatch=True"]
    assert not model_zoo.get(name, checkpoint=path, overrides=opt_in).training


def test_test_dev_submission_refuses_a_checkpoint_of_another_model(tmp_path):
    from helpers.shrink import SHAPES_CONFIG as CONFIG
    from helpers.shrink import SHAPES_EVAL as TINY

    # run_submission builds its model with build_inference_model
    # (tests/engine/test_inference_model.py)
    from eva_det.engine.build import build_inference_model

    small = instantiate(load_config(CONFIG, TINY + ["model.backbone.net.embed_dim=32"]).model)
    path = _save(small, tmp_path / "small.pth")
    cfg = load_config(CONFIG, TINY + [f"train.init_checkpoint={path}"])
    with pytest.raises(InputError, match=f"Checkpoint {path} does not fit the model"):
        build_inference_model(cfg)
