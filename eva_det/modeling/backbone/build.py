"""yacs adapter: build EVA-01 ViT + simple feature pyramid from a detectron2 ``CfgNode``.

LazyConfig users reference :class:`EVAViT` directly; this adapter lets yacs configs name it::

    cfg = get_cfg(); add_eva_vit_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_eva_vit_sfp_backbone"
"""

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .eva_vit import EVAViT

__all__ = ["add_eva_vit_config", "build_eva_vit_sfp_backbone"]


def add_eva_vit_config(cfg: CN) -> None:
    """Add ``MODEL.EVA_VIT`` (ViT arguments) and ``MODEL.EVA_SFP`` (pyramid) defaults."""
    cfg.MODEL.EVA_VIT = CN()
    v = cfg.MODEL.EVA_VIT
    v.IMG_SIZE, v.PATCH_SIZE, v.EMBED_DIM, v.DEPTH, v.NUM_HEADS = 1024, 16, 768, 12, 12
    v.MLP_RATIO, v.DROP_PATH_RATE, v.WINDOW_SIZE = 4.0, 0.1, 16
    v.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
    v.USE_REL_POS, v.USE_ACT_CHECKPOINT, v.BEIT_LIKE_QKV_BIAS = True, False, True
    v.FREEZE_PATCH_EMBED, v.INTERP_TYPE, v.ATTN_IMPL = False, "vitdet", "auto"
    cfg.MODEL.EVA_SFP = CN()
    cfg.MODEL.EVA_SFP.OUT_CHANNELS = 256
    cfg.MODEL.EVA_SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    cfg.MODEL.EVA_SFP.SQUARE_PAD = 1024


@BACKBONE_REGISTRY.register()
def build_eva_vit_sfp_backbone(cfg: CN, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """EVA-01 ViT wrapped in detectron2's ``SimpleFeaturePyramid`` (outputs p2-p6)."""
    v = cfg.MODEL.EVA_VIT
    net = EVAViT(
        img_size=v.IMG_SIZE,
        patch_size=v.PATCH_SIZE,
        in_chans=input_shape.channels,
        embed_dim=v.EMBED_DIM,
        depth=v.DEPTH,
        num_heads=v.NUM_HEADS,
        mlp_ratio=v.MLP_RATIO,
        drop_path_rate=v.DROP_PATH_RATE,
        window_size=v.WINDOW_SIZE,
        window_block_indexes=tuple(v.WINDOW_BLOCK_INDEXES),
        use_rel_pos=v.USE_REL_POS,
        use_act_checkpoint=v.USE_ACT_CHECKPOINT,
        beit_like_qkv_bias=v.BEIT_LIKE_QKV_BIAS,
        freeze_patch_embed=v.FREEZE_PATCH_EMBED,
        interp_type=v.INTERP_TYPE,
        attn_impl=v.ATTN_IMPL,
    )
    return SimpleFeaturePyramid(
        net=net,
        in_feature="last_feat",
        out_channels=cfg.MODEL.EVA_SFP.OUT_CHANNELS,
        scale_factors=tuple(cfg.MODEL.EVA_SFP.SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=cfg.MODEL.EVA_SFP.SQUARE_PAD,
    )
