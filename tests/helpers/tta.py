"""A tiny shapes detector config (EVA-01 or EVA-02 backbone, 32-channel heads), TTA / EMA tests."""

from detectron2.config import LazyCall as L

from eva_det.modeling.backbone.eva02_vit import EVA02ViT

from .shrink import EVA01_SHRINK, load_config

SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
# fewer proposals at test time keep the CPU passes (and the soft-NMS reference loop) short
FEW_PROPOSALS = [
    "model.proposal_generator.pre_nms_topk=[1000,200]",
    "model.proposal_generator.post_nms_topk=[500,40]",
]


def tiny_cfg(backbone: str = "eva01", square_pad: int = 128, overrides=()):
    cfg = load_config(SHAPES, list(EVA01_SHRINK) + FEW_PROPOSALS + list(overrides))
    if backbone == "eva02":
        cfg.model.backbone.net = L(EVA02ViT)(
            img_size=128,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=4,
            window_size=4,
            window_block_indexes=[0],
            out_feature="last_feat",
        )
    cfg.model.backbone.square_pad = square_pad
    # narrower pyramid and heads (32 channels) than the Shapes config's 128: CPU seconds
    cfg.model.backbone.out_channels = 32
    cfg.model.proposal_generator.head.in_channels = 32
    for head, predictor in zip(cfg.model.roi_heads.box_heads, cfg.model.roi_heads.box_predictors):
        head.update(conv_dims=[32], fc_dims=[64])
        head.input_shape.channels = 32
        predictor.input_shape.channels = 64
    cfg.model.roi_heads.mask_head.conv_dims = [32, 32]
    cfg.model.roi_heads.mask_head.input_shape.channels = 32
    return cfg
