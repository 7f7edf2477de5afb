"""EVA-02 recipes: official values, LVIS / Objects365 pieces, official checkpoints load and run.

The reference values below were read from the official EVA-02 configs
(EVA-02/det/projects/ViTDet/configs/{eva2_mim_to_coco,...}/*.py of github.com/baaivision/EVA).
"""

import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.shrink import EVA02_SHRINK, FAST_HEADS, load_config

from eva_det.data.datasets.objects365 import OBJECTS365_CATEGORIES, register_objects365
from eva_det.modeling.backbone.eva02_vit import EVA02ViT

CFG = "projects/ViTDet/configs"
COCO_B = f"{CFG}/eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py"
COCO_L = f"{CFG}/eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8.py"
COCO_B_1536 = (
    f"{CFG}/eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_b_6attn_win32_1536_lrd0p7.py"
)
COCO_L_1536 = (
    f"{CFG}/eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_l_8attn_win32_1536_lrd0p8.py"
)
LVIS_B = f"{CFG}/eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py"
LVIS_L = f"{CFG}/eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8.py"
LVIS_L_1536 = (
    f"{CFG}/eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_l_8attn_win32_1536_lrd0p8.py"
)
O365 = f"{CFG}/eva2_o365/eva2_o365_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
O365_COCO = (
    f"{CFG}/eva2_o365_to_coco/eva2_o365_to_coco_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
)
O365_LVIS = (
    f"{CFG}/eva2_o365_to_lvis/eva2_o365_to_lvis_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
)

_L8 = [2, 5, 8, 11, 14, 17, 20, 23]
# path: (embed, depth, heads, window, img/pad, global blocks, drop path, act ckpt, lr,
#        (lr decay, layers), max_iter, images/iter, train sets, classes, EMA on)
OFFICIAL = {
    COCO_B: (768, 12, 12, 16, 1024, [2, 5, 8, 11], 0.1, False, 5e-5, (0.7, 12), 60000, 128,
             "coco_2017_train", 80, False),
    COCO_L: (1024, 24, 16, 16, 1024, [5, 11, 17, 23], 0.4, False, 6e-5, (0.8, 24), 60000, 144,
             "coco_2017_train", 80, False),
    COCO_B_1536: (768, 12, 12, 32, 1536, [1, 3, 5, 7, 9, 11], 0.1, False, 5e-5, (0.7, 12), 60000,
                  128, "coco_2017_train", 80, False),
    COCO_L_1536: (1024, 24, 16, 32, 1536, _L8, 0.4, True, 5e-5, (0.8, 24), 60000, 128,
                  "coco_2017_train", 80, False),
    LVIS_B: (768, 12, 12, 16, 1024, [2, 5, 8, 11], 0.1, False, 1e-4, (0.7, 12), 50000, 128,
             "lvis_v1_train", 1203, False),
    LVIS_L: (1024, 24, 16, 16, 1024, [5, 11, 17, 23], 0.4, False, 1e-4, (0.8, 24), 40000, 128,
             "lvis_v1_train", 1203, False),
    LVIS_L_1536: (1024, 24, 16, 32, 1536, _L8, 0.4, True, 1e-4, (0.8, 24), 40000, 128,
                  "lvis_v1_train", 1203, False),
    O365: (1024, 24, 16, 16, 1536, _L8, 0.4, False, 6e-5, (0.8, 24), 400000, 160,
           ["objects365_train", "objects365_val"], 365, False),
    O365_COCO: (1024, 24, 16, 16, 1536, _L8, 0.3, True, 4e-5, (0.8, 24), 40000, 64,
                "coco_2017_train", 80, True),
    O365_LVIS: (1024, 24, 16, 16, 1536, _L8, 0.3, True, 4e-5, (0.8, 24), 70000, 64,
                "lvis_v1_train", 1203, True),
}  # fmt: skip
# Step schedules: (milestones, warmup iterations); eval / checkpoint periods.
STEPS = {
    COCO_B: ([48000, 54000], 1000),
    COCO_L: ([48000, 54000], 1000),
    COCO_B_1536: ([48000, 54000], 1000),
    COCO_L_1536: ([48000, 54000], 1000),
    LVIS_B: ([40000, 45000], 1000),
    LVIS_L: ([32000, 36000], 1000),
    LVIS_L_1536: ([32000, 36000], 1000),
    O365: ([320000, 360000], 5000),
}
PERIODS = {O365: (10000, 2500), O365_LVIS: (5000, 5000), LVIS_B: (2500, 2500), COCO_L: (500, 500)}


def shrunk(relpath, *extra):
    return load_config(relpath, EVA02_SHRINK + FAST_HEADS + list(extra))


@pytest.mark.parametrize("relpath", sorted(OFFICIAL))
def test_recipe_values_equal_official(relpath):
    cfg = load_config(relpath)
    emb, depth, heads, win, size, glob, dp, ckpt, lr, lrd, iters, batch, train_set, ncls, ema = (
        OFFICIAL[relpath]
    )
    net = cfg.model.backbone.net
    assert net._target_ is EVA02ViT
    assert (net.embed_dim, net.depth, net.num_heads, net.patch_size) == (emb, depth, heads, 16)
    assert net.mlp_ratio == pytest.approx(4 * 2 / 3)
    assert (net.window_size, net.img_size, cfg.model.backbone.square_pad) == (win, size, size)
    assert sorted(set(range(depth)) - set(net.window_block_indexes)) == glob
    assert (net.drop_path_rate, net.use_act_checkpoint) == (dp, ckpt)
    assert not net.get("use_rel_pos", False)
    assert cfg.optimizer.lr == lr
    factor = cfg.optimizer.params.lr_factor_func
    assert (factor.keywords["lr_decay_rate"], factor.keywords["num_layers"]) == lrd
    assert factor("backbone.net.blocks.0.attn.q_proj.weight") == pytest.approx(lrd[0] ** lrd[1])
    assert cfg.optimizer.params.overrides == {} and cfg.optimizer.params.weight_decay_norm is None
    assert cfg.train.max_iter == iters and cfg.dataloader.train.total_batch_size == batch
    assert cfg.dataloader.train.dataset.names == train_set
    assert cfg.model.roi_heads.num_classes == ncls
    assert cfg.train.model_ema.enabled is ema and cfg.train.model_ema.decay == 0.9999
    assert cfg.train.init_checkpoint == "" and cfg.dataloader.test.num_workers == 0
    # LSJ at the model's size
    resize = cfg.dataloader.train.mapper.augmentations[1]
    assert (resize.target_height, resize.min_scale, resize.max_scale) == (size, 0.1, 2.0)
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == size
    # EVA-02's default soft-NMS suppresses across classes
    assert cfg.model.roi_heads.class_wise is False
    if relpath in STEPS:
        milestones, warmup = STEPS[relpath]
        sched = cfg.lr_multiplier
        assert list(sched.scheduler.milestones) == milestones
        assert sched.scheduler.num_updates == iters
        assert sched.warmup_length == pytest.approx(warmup / iters)
    if relpath in PERIODS:
        assert (cfg.train.eval_period, cfg.train.checkpointer.period) == PERIODS[relpath]


@pytest.mark.parametrize("relpath", [O365_COCO, O365_LVIS])
def test_o365_finetuning_schedule_is_constant_after_warmup(relpath):
    sched = instantiate(load_config(relpath).lr_multiplier)
    assert sched(0.0) == pytest.approx(0.001)
    assert sched(0.005) == pytest.approx(0.001 + 0.5 * (1 - 0.001))  # linear warmup over 1%
    assert [sched(w) for w in (0.01, 0.5, 0.99)] == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("relpath", [LVIS_B, LVIS_L_1536, O365_LVIS])
def test_lvis_recipes_use_federated_loss(relpath):
    cfg = load_config(relpath)
    assert cfg.dataloader.test.dataset.names == "lvis_v1_val"
    assert cfg.dataloader.evaluator.max_dets_per_image == 300
    assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    model = instantiate(shrunk(relpath).model)
    counts = MetadataCatalog.get("lvis_v1_train").class_image_count
    expected = torch.tensor([c["image_count"] for c in sorted(counts, key=lambda c: c["id"])])
    for predictor in model.roi_heads.box_predictor:
        assert predictor.use_sigmoid_ce and predictor.use_fed_loss
        assert (predictor.test_score_thresh, predictor.test_topk_per_image) == (0.02, 300)
        assert predictor.cls_score.out_features == 1203 + 1
        torch.testing.assert_close(
            predictor.fed_loss_cls_weights, expected.float() ** 0.5, rtol=1e-6, atol=0
        )


def test_coco_recipe_keeps_official_test_threshold():
    model = instantiate(shrunk(COCO_B).model)
    for predictor in model.roi_heads.box_predictor:
        assert (predictor.test_score_thresh, predictor.test_topk_per_image) == (0.05, 100)
        assert not predictor.use_sigmoid_ce and predictor.cls_score.out_features == 81
    assert model.roi_heads.mask_on


def test_o365_recipe_is_box_only_with_365_classes():
    cfg = load_config(O365)
    assert cfg.dataloader.test.dataset.names == "objects365_val"
    assert cfg.dataloader.train.mapper.use_instance_mask is False
    assert cfg.dataloader.train.mapper.recompute_boxes is False
    model = instantiate(shrunk(O365).model)
    assert not model.roi_heads.mask_on
    assert not any(k.startswith("roi_heads.mask_head") for k in model.state_dict())
    assert model.roi_heads.box_predictor[0].cls_score.out_features == 365 + 1


def test_objects365_registration_reads_official_layout(tmp_path):
    meta = MetadataCatalog.get("objects365_val")
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    assert meta.json_file == os.path.join(root, "Objects365/annotations/zhiyuan_objv2_val.json")
    assert meta.image_root == os.path.join(root, "Objects365/")
    assert len(meta.thing_classes) == 365 and meta.evaluator_type == "coco"
    assert meta.thing_classes[37] == "Moniter/TV" and meta.thing_classes[364] == "Table Tennis "

    # A miniature dataset in the official layout loads through the DatasetCatalog.
    ann = tmp_path / "Objects365" / "annotations"
    ann.mkdir(parents=True)
    images = [{"id": 7, "file_name": "images/v1/patch0/a.jpg", "height": 40, "width": 60}]
    anns = [{"id": 1, "image_id": 7, "category_id": 365, "bbox": [1, 2, 10, 20], "area": 200,
             "iscrowd": 0}]  # fmt: skip
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(OBJECTS365_CATEGORIES)]
    for split in ("train", "val"):
        (ann / f"zhiyuan_objv2_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    DatasetCatalog.remove("objects365_val")
    MetadataCatalog.remove("objects365_val")
    DatasetCatalog.remove("objects365_train")
    MetadataCatalog.remove("objects365_train")
    try:
        assert register_objects365(str(tmp_path)) == ["objects365_train", "objects365_val"]
        assert register_objects365(str(tmp_path)) == []  # already registered: skipped
        (record,) = DatasetCatalog.get("objects365_val")
        assert record["file_name"] == str(tmp_path / "Objects365" / "images/v1/patch0/a.jpg")
        assert record["annotations"][0]["category_id"] == 364
    finally:
        for name in ("objects365_train", "objects365_val"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_objects365()


def official_rope_tables(n: int, head_dim: int):
    """cos / sin of the official VisionRotaryEmbeddingFast for an n x n grid, (n*n, head_dim).

    Written from the official formula: per-axis frequencies 1 / 10000^(2i/d), d = head_dim / 2,
    positions arange(n) / n * 16, each frequency repeated for an interleaved pair, row part first.
    """
    d = head_dim // 2
    freqs = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d)
    pos = torch.arange(n, dtype=torch.float64) / n * 16
    axis = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=1)  # (n, d)
    grid = torch.cat([axis[:, None, :].expand(n, n, d), axis[None, :, :].expand(n, n, d)], -1)
    grid = grid.reshape(n * n, head_dim)
    return grid.cos().float(), grid.sin().float()


class RecordingCheckpointer(DetectionCheckpointer):
    """Keeps what ``load`` could not match."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def official_style_checkpoint(model, img_size=128, window=4, patch=16):
    """{"model": state_dict} plus the RoPE buffers the official EVA-02 ViT saves."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    net = model.backbone.net
    head_dim = net.blocks[0].attn.q_proj.weight.shape[0] // net.blocks[0].attn.num_heads
    win = official_rope_tables(window, head_dim)
    glb = official_rope_tables(img_size // patch, head_dim)
    for part, (cos, sin) in (("rope_win", win), ("rope_glb", glb)):
        state[f"backbone.net.{part}.freqs_cos"] = cos
        state[f"backbone.net.{part}.freqs_sin"] = sin
    for i, block in enumerate(net.blocks):
        cos, sin = win if block.window_size > 0 else glb
        state[f"backbone.net.blocks.{i}.attn.rope.freqs_cos"] = cos
        state[f"backbone.net.blocks.{i}.attn.rope.freqs_sin"] = sin
    return {"model": state}


def run(model, h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        return model([{"image": image, "height": h, "width": w}])[0]["instances"]


def test_official_checkpoint_loads_and_runs_at_two_sizes(tmp_path, caplog):
    # narrow heads (same module names); every proposal scored, 10 detections per image
    extra = [
        "model.roi_heads.override_score_thresh=0.0",
        "model.roi_heads.box_predictors.2.test_topk_per_image=10",
        "model.roi_heads.mask_head.conv_dims=[64]",
    ]
    for stage in range(3):
        extra += [
            f"model.roi_heads.box_heads.{stage}.conv_dims=[64]",
            f"model.roi_heads.box_heads.{stage}.fc_dims=[64]",
            f"model.roi_heads.box_predictors.{stage}.input_shape.channels=64",
        ]
    torch.manual_seed(0)
    source = instantiate(shrunk(COCO_L, *extra).model).eval()
    data = official_style_checkpoint(source)
    assert sum(".rope" in k for k in data["model"]) == 2 * (2 + 4)
    path = tmp_path / "eva02_tiny.pth"
    torch.save(data, path)

    torch.manual_seed(1)
    target = instantiate(shrunk(COCO_L, *extra).model).eval()
    checkpointer = RecordingCheckpointer(target)
    with caplog.at_level("INFO", logger="eva_det.modeling.backbone.eva02_vit"):
        checkpointer.load(str(path))
    inc = checkpointer.incompatible
    assert inc.missing_keys == [] and inc.unexpected_keys == [] and inc.incorrect_shapes == []
    # the 12 official RoPE buffers were recognised, checked against our tables and dropped
    assert "Dropped 12 RoPE buffers" in caplog.text and "they match" in caplog.text
    source_state = source.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, source_state[k]), k
    out = run(target, 128, 128)
    assert out.image_size == (128, 128) and len(out) == 10

    # Another input size: 96 x 160 padded to 160 (a 10 x 10 token grid; windows padded to 12).
    torch.manual_seed(2)
    wide = instantiate(shrunk(COCO_L, *extra, "model.backbone.square_pad=160").model).eval()
    RecordingCheckpointer(wide).load(str(path))
    features = wide.backbone(torch.zeros(1, 3, 160, 160))
    assert features["p2"].shape[-2:] == (40, 40) and features["p6"].shape[-2:] == (3, 3)
    out = run(wide, 96, 160)
    assert out.image_size == (96, 160) and len(out) == 10
    assert out.pred_masks.shape[1:] == (96, 160)
    boxes = out.pred_boxes.tensor
    assert bool(((boxes[:, 2] <= 160) & (boxes[:, 3] <= 96)).all())
    assert bool(torch.isfinite(out.scores).all())
