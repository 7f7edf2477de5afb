# EVA-02 L Cascade Mask R-CNN on LVIS v1 at 1024, fine-tuned from MIM-pretrained EVA-02 L
# (eva02_L_pt_in21k_p14to16, IN-21K only to avoid LVIS contamination; released as
# eva02_L_lvis_bsl: 55.3 box / 48.6 mask AP): the COCO recipe with LVIS data and heads, lr 1e-4.
# 40k iters * 128 images/iter / 100k images/epoch ~= 51 epochs; lr steps at 80% and 90%.
from eva_det.config import use_lvis_federated

from ..eva2_mim_to_coco.eva2_coco_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8 import (
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

# LVIS v1: loader at the model's input size, 1203 classes, federated loss (shared blocks).
dataloader = use_lvis_federated(model, image_size=model.backbone.square_pad, total_batch_size=128)
dataloader.test.num_workers = 0

optimizer.lr = 1e-4

train.max_iter = 40000
lr_multiplier.scheduler.milestones = [train.max_iter * 8 // 10, train.max_iter * 9 // 10]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 1000 / train.max_iter
train.eval_period = 2500
train.checkpointer.period = 2500
