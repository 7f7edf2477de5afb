# EVA-02 B Cascade Mask R-CNN on COCO at 1536 (released as eva02_B_coco_sys: 58.9 box / 50.7 mask
# AP with soft-NMS, see docs/MODEL_ZOO.md): the 1024 recipe with window 32 and global attention
# in blocks 1, 3, 5, 7, 9, 11.
from eva_det.config import set_lsj_image_size

from .eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7 import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

image_size = 1536
set_lsj_image_size(dataloader, image_size)

model.backbone.square_pad = image_size
model.backbone.net.update(
    img_size=image_size,
    window_size=32,
    # global attention in blocks 1, 3, 5, 7, 9, 11
    window_block_indexes=[0, 2, 4, 6, 8, 10],
)
