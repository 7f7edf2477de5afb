# EVA-02 Cascade Mask R-CNN: the EVA-01 detector (simple feature pyramid, RPN, 3-stage cascade,
# mask head) with the EVA-02 ViT (separate q/k/v + q/v biases, 2-D RoPE, SwiGLU with sub-LN, no
# relative position bias). ViT sizes are EVA-02 B's; recipes override model.backbone.net.*.
from functools import partial

import torch.nn as nn
from detectron2.config import LazyCall as L

from eva_det.config import get_config
from eva_det.modeling.backbone.eva02_vit import EVA02ViT

model = get_config("common/models/cascade_mask_rcnn_vitdet_eva.py").model

model.backbone.net = L(EVA02ViT)(
    img_size=1024,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4 * 2 / 3,
    qkv_bias=True,
    drop_path_rate=0.1,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    window_size=14,
    # blocks 2, 5, 8, 11 use global attention
    window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
    residual_block_indexes=[],
    use_act_checkpoint=False,
    pt_hw_seq_len=16,
    intp_freq=True,
    out_feature="last_feat",
    xattn=True,  # official switch; eva_det runs it with torch's SDPA (same numbers)
)

# The official EVA-02 fork's CascadeROIHeads defaults to class-agnostic soft-NMS.
model.roi_heads.class_wise = False
