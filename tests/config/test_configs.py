"""Every config under projects/ and configs/ loads; every detector instantiates when shrunk."""

import glob
import os

import pytest
import torch
from detectron2.config import instantiate
from helpers.shrink import REPO, load_config, shrink_overrides

PROJECT_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "projects/ViTDet/configs/**/*.py"), recursive=True)
    if not p.endswith("__init__.py") and "/common/" not in p
)
COMMON_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs/**/*.py"), recursive=True)
    + glob.glob(os.path.join(REPO, "projects/ViTDet/configs/common/*.py"))
)


def test_config_tree_has_official_names():
    for name in [
        "COCO/cascade_mask_rcnn_vitdet_eva.py",
        "COCO/cascade_mask_rcnn_vitdet_eva_1536.py",
        "LVIS/cascade_mask_rcnn_vitdet_eva.py",
        "LVIS/cascade_mask_rcnn_vitdet_eva_1536.py",
        "Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py",
    ]:
        assert f"projects/ViTDet/configs/{name}" in PROJECT_CONFIGS


@pytest.mark.parametrize("relpath", COMMON_CONFIGS)
def test_common_building_blocks_load(relpath):
    cfg = load_config(relpath)
    assert len(cfg) > 0
    if "model" in cfg:
        model = instantiate(load_config(relpath, shrink_overrides(cfg)).model)
        assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("relpath", PROJECT_CONFIGS)
def test_project_config_instantiates_shrunk(relpath, mini_shapes):
    cfg = load_config(relpath)
    for key in ("model", "dataloader", "optimizer", "train", "lr_multiplier"):
        assert key in cfg, f"{relpath} lacks {key}"
    assert cfg.train.init_checkpoint == ""
    cfg = load_config(
        relpath,
        shrink_overrides(cfg)
        + ["dataloader.test.dataset.names=shapes_mini_val", "dataloader.test.num_workers=0"],
    )
    model = instantiate(cfg.model).eval()
    for predictor in model.roi_heads.box_predictor:
        predictor.test_topk_per_image = min(predictor.test_topk_per_image, 50)  # CPU time
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert len(optimizer.param_groups) > 0
    instantiate(cfg.lr_multiplier)
    loader = instantiate(cfg.dataloader.test)
    batch = next(iter(loader))
    with torch.no_grad():
        out = model(batch)
    assert "instances" in out[0]


def test_eva_recipes_have_official_values():
    cfg = load_config("projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py")
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.window_size) == (1408, 40, 16, 16)
    assert net.mlp_ratio == pytest.approx(6144 / 1408)
    globals_ = sorted(set(range(40)) - set(net.window_block_indexes))
    assert globals_ == list(range(3, 40, 4))
    assert net.beit_like_qkv_bias and net.freeze_patch_embed and net.use_act_checkpoint
    assert net.drop_path_rate == 0.6 and net.img_size == 1280 and net.interp_type == "vitdet"
    assert cfg.model.backbone.square_pad == 1280
    assert cfg.optimizer.lr == 2.5e-5 and cfg.train.max_iter == 45000
    assert cfg.optimizer.params.weight_decay_norm is None and cfg.optimizer.params.overrides == {}

    c1536 = load_config("projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py")
    assert c1536.model.backbone.net.img_size == 1280
    assert c1536.model.backbone.square_pad == 1536
    assert c1536.model.backbone.net.interp_type == "beit"
    assert c1536.dataloader.test.mapper.augmentations[0].short_edge_length == 1536

    lvis = load_config("projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva_1536.py")
    assert lvis.model.roi_heads.num_classes == 1203
    assert lvis.dataloader.evaluator.max_dets_per_image == 1000
    for p in lvis.model.roi_heads.box_predictors:
        assert p.use_fed_loss and p.use_sigmoid_ce
        assert (p.test_score_thresh, p.test_topk_per_image) == (0.001, 1000)
    lvis1280 = load_config("projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva.py")
    assert lvis1280.dataloader.evaluator.max_dets_per_image == 300
    assert lvis1280.model.roi_heads.box_predictors[0].test_score_thresh == 0.02


def test_lvis_predictors_carry_fed_loss_buffer():
    relpath = "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva.py"
    cfg = load_config(relpath)
    model = instantiate(load_config(relpath, shrink_overrides(cfg)).model)
    keys = [k for k in model.state_dict() if k.endswith("fed_loss_cls_weights")]
    assert sorted(keys) == [f"roi_heads.box_predictor.{i}.fed_loss_cls_weights" for i in range(3)]
    assert model.roi_heads.box_predictor[0].fed_loss_cls_weights.shape == (1203,)
