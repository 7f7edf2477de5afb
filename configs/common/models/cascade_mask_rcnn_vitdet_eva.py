# EVA-01 Cascade Mask R-CNN: EVA ViT -> simple feature pyramid (p2-p6) -> RPN (2 convs) ->
# 3-stage cascade of 4conv1fc box heads (LN) with class-agnostic regression -> 4conv mask head.
# ViT sizes here are ViTDet-B's; recipes override model.backbone.net.*.
from functools import partial

import torch.nn as nn
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers

from eva_det.modeling import EVAViT
from eva_det.roi_heads import EVACascadeROIHeads

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

model.backbone.net = L(EVAViT)(
    img_size=1024,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    drop_path_rate=0.1,
    window_size=14,
    mlp_ratio=4,
    qkv_bias=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    # blocks 2, 5, 8, 11 use global attention
    window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
    residual_block_indexes=[],
    use_rel_pos=True,
    out_feature="last_feat",
    beit_like_qkv_bias=True,
    beit_like_gamma=False,
    freeze_patch_embed=False,
    interp_type="vitdet",
    attn_impl="auto",  # "blocked" on CPU in fp32, "sdpa" on GPU / 16 bit
)

# Cascade R-CNN takes one head, predictor and matcher per stage.
[model.roi_heads.pop(k) for k in ["box_head", "box_predictor", "proposal_matcher"]]

model.roi_heads.update(
    _target_=EVACascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256, 256, 256, 256],
            fc_dims=[1024],
            conv_norm="LN",
        )
        for _ in range(3)
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
            cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}",
        )
        for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
        for th in [0.5, 0.6, 0.7]
    ],
    # EVA's inference options (official key names); defaults = plain detectron2 behaviour.
    use_soft_nms=False,
    method="linear",
    iou_threshold=0.3,
    sigma=0.5,
    class_wise=True,  # EVA-01 suppresses within classes; EVA-02 configs set False
    override_score_thresh=None,
    maskness_thresh=None,
    soft_nms_topk=None,  # eva_det opt-in; None keeps every soft-NMS survivor (official)
)
