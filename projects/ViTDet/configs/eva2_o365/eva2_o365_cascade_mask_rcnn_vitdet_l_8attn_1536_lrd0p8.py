# EVA-02 L Cascade R-CNN (boxes only, 365 classes) on Objects365 v2 train+val at 1536: the
# intermediate fine-tuning of MIM-pretrained EVA-02 L released as eva02_L_m38m_to_o365 and
# eva02_L_in21k_to_o365 (the inits of the eva2_o365_to_{coco,lvis} recipes).
# Window 16 with global attention in blocks 2, 5, ..., 23; lr 6e-5, layer decay 0.8.
# 400k iters * 160 images/iter / ~1.8M images/epoch ~= 36 epochs; lr steps at 80% and 90%.
from eva_det.config import get_config, set_lsj_image_size

from ..eva2_mim_to_coco.eva2_coco_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8 import (
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

image_size = 1536
dataloader = get_config("common/data/objects365_lsj.py").dataloader
set_lsj_image_size(dataloader, image_size)
dataloader.train.total_batch_size = 160
dataloader.test.num_workers = 0

model.backbone.square_pad = image_size
model.backbone.net.update(
    img_size=image_size,
    # global attention in blocks 2, 5, 8, 11, 14, 17, 20, 23
    window_block_indexes=[i for i in range(24) if i % 3 != 2],
)
# Objects365 has boxes only: no mask branch.
model.roi_heads.update(num_classes=365, mask_in_features=None, mask_pooler=None, mask_head=None)

train.max_iter = 400000
lr_multiplier.scheduler.milestones = [train.max_iter * 8 // 10, train.max_iter * 9 // 10]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 5000 / train.max_iter
train.checkpointer.period = 2500
train.eval_period = 10000
