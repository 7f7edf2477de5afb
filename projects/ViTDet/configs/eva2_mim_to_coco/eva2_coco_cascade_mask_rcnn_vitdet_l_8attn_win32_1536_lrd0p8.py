# EVA-02 L Cascade Mask R-CNN on COCO at 1536 (released as eva02_L_coco_sys: 62.3 box / 53.8 mask
# AP with soft-NMS, see docs/MODEL_ZOO.md): the L 1024 recipe with window 32, global attention in
# blocks 2, 5, ..., 23, activation checkpointing, lr 5e-5 and 128 images/iter (~65 epochs).
from eva_det.config import set_lsj_image_size

from .eva2_coco_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8 import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

image_size = 1536
set_lsj_image_size(dataloader, image_size)
dataloader.train.total_batch_size = 128

model.backbone.square_pad = image_size
model.backbone.net.update(
    img_size=image_size,
    window_size=32,
    use_act_checkpoint=True,
    # global attention in blocks 2, 5, 8, 11, 14, 17, 20, 23
    window_block_indexes=[i for i in range(24) if i % 3 != 2],
)

optimizer.lr = 5e-5
