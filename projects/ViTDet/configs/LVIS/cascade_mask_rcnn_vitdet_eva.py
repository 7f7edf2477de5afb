# EVA-01 (1B) Cascade Mask R-CNN on LVIS v1 at 1280: 1203 classes, repeat-factor sampling,
# sigmoid CE + federated loss, 300 detections at score 0.02.
# 75001 iters * 64 images/iter / 100k images/epoch ~= 48 epochs; lr steps at 70k and 75k.
from eva_det.config import use_lvis_federated

from ..COCO.cascade_mask_rcnn_vitdet_eva import (
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

# LVIS v1 data, 1203 classes, federated loss (configs/common/data/lvis_federated.py), at 1280.
dataloader = use_lvis_federated(model, image_size=1280, total_batch_size=64)

optimizer.lr = 2e-4
train.max_iter = 75001
train.eval_period = 5000
lr_multiplier.scheduler.milestones = [70000, 75000]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 250 / train.max_iter
