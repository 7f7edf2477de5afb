# EVA-02 L Cascade Mask R-CNN on COCO at 1024, fine-tuned from MIM-pretrained EVA-02 L
# (eva02_L_pt_m38m_p14to16; released as eva02_L_coco_bsl: 59.2 box / 50.8 mask AP).
# Window 16 with global attention in blocks 5, 11, 17, 23; layer-wise lr decay 0.8 over 24 blocks.
# 60k iters * 144 images/iter / 118k images/epoch ~= 73 epochs.
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7 import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

dataloader.train.total_batch_size = 144

model.backbone.net.update(
    embed_dim=1024,
    depth=24,
    num_heads=16,
    drop_path_rate=0.4,
    # global attention in blocks 5, 11, 17, 23
    window_block_indexes=[i for i in range(24) if i % 6 != 5],
)

optimizer.lr = 6e-5
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.8, num_layers=24)
