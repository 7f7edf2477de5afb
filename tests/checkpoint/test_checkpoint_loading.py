"""Released-layout checkpoints load through train.init_checkpoint with strict reporting."""

import os

import pytest
import torch
from detectron2.config import instantiate
from helpers.shrink import EVA01_SHRINK, load_config

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.utils.atomic import atomic_torch_save

COCO = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"
COCO_1536 = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py"
LVIS = "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva.py"
LVIS_1536 = "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva_1536.py"


def _model(relpath, extra=()):
    torch.manual_seed(0)
    return instantiate(load_config(relpath, EVA01_SHRINK + list(extra)).model).eval()


def _save_released_layout(model, path):
    atomic_torch_save({"model": model.state_dict()}, path)


def _load(relpath, path, extra=()):
    model = _model(relpath, extra)
    torch.manual_seed(123)  # make sure weights really come from the file
    for p in model.parameters():
        torch.nn.init.normal_(p)
    ckpt = EVACheckpointer(model)
    ckpt.load(path)
    return model, ckpt.last_load_report


@pytest.mark.slow  # full-width official-layout detectors
def test_coco_det_checkpoint_loads_into_both_recipes(tmp_path):
    src = _model(COCO)
    path = os.path.join(tmp_path, "eva_coco_det.pth")
    _save_released_layout(src, path)
    for relpath in (COCO, COCO_1536):
        model, report = _load(relpath, path)
        assert report.complete, report.summary()
        assert report.num_loaded == len(src.state_dict())
        for k, v in src.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.slow  # full-width official-layout detectors
def test_lvis_checkpoint_loads_with_fed_loss_buffers(tmp_path):
    src = _model(LVIS)
    path = os.path.join(tmp_path, "eva_lvis.pth")
    _save_released_layout(src, path)
    assert "roi_heads.box_predictor.0.fed_loss_cls_weights" in src.state_dict()
    for relpath in (LVIS, LVIS_1536):
        _, report = _load(relpath, path)
        assert report.complete, report.summary()


def test_o365_checkpoint_into_coco_reports_what_was_skipped(tmp_path, caplog):
    # eva_o365.pth: 365 + 1 class rows and no mask head.
    src = _model(COCO, ["model.roi_heads.num_classes=365", "model.roi_heads.mask_in_features=null"])
    src_sd = src.state_dict()
    assert not any(k.startswith("roi_heads.mask_head") for k in src_sd)
    path = os.path.join(tmp_path, "eva_o365.pth")
    _save_released_layout(src, path)
    with caplog.at_level("WARNING"):
        model, report = _load(COCO, path)
    skipped = {k: (tuple(a), tuple(b)) for k, a, b in report.incorrect_shapes}
    assert skipped == {
        f"roi_heads.box_predictor.{i}.cls_score.{w}": (
            (366, 1024) if w == "weight" else (366,),
            (81, 1024) if w == "weight" else (81,),
        )
        for i in range(3)
        for w in ("weight", "bias")
    }
    mask_keys = {k for k in model.state_dict() if k.startswith("roi_heads.mask_head.")}
    assert set(report.missing_keys) == mask_keys | set(skipped)
    assert report.unexpected_keys == []
    # backbone, pyramid, RPN and box-head trunk are loaded
    for k in (
        "backbone.net.blocks.0.attn.qkv.weight",
        "backbone.simfp_2.0.weight",
        "proposal_generator.rpn_head.conv.conv0.weight",
        "roi_heads.box_head.2.fc1.weight",
    ):
        assert torch.equal(model.state_dict()[k], src_sd[k]), k
    assert "Partial checkpoint load" in caplog.text and "366" in caplog.text


def test_official_state_dict_names(tmp_path):
    names = set(_model(COCO).state_dict())
    for k in [
        "backbone.net.pos_embed",
        "backbone.net.patch_embed.proj.weight",
        "backbone.net.blocks.0.attn.q_bias",
        "backbone.net.blocks.0.attn.v_bias",
        "backbone.net.blocks.0.attn.qkv.weight",
        "backbone.net.blocks.0.attn.rel_pos_h",
        "backbone.net.blocks.1.mlp.fc2.bias",
        "backbone.simfp_2.0.weight",
        "backbone.simfp_5.1.norm.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "roi_heads.box_head.0.conv1.weight",
        "roi_heads.box_head.2.fc1.weight",
        "roi_heads.box_predictor.1.bbox_pred.weight",
        "roi_heads.mask_head.mask_fcn4.weight",
        "roi_heads.mask_head.deconv.weight",
        "roi_heads.mask_head.predictor.weight",
    ]:
        assert k in names, k
    assert not any(k.endswith("attn.qkv.bias") for k in names)
