# EVA-02 L Cascade Mask R-CNN on LVIS v1 at 1536, fine-tuned from the Objects365 detector
# eva02_L_in21k_to_o365 (released as eva02_L_lvis_sys_o365: 65.2 box / 57.3 mask AP with EMA
# weights, soft-NMS and maskness, see docs/MODEL_ZOO.md): the O365-to-COCO recipe with LVIS data
# and heads. 70k iters * 64 images/iter / 100k images/epoch ~= 45 epochs.
from eva_det.config import use_lvis_federated

from ..eva2_o365_to_coco.eva2_o365_to_coco_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8 import (
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

# LVIS v1: loader at the model's input size, 1203 classes, federated loss (shared blocks).
dataloader = use_lvis_federated(model, image_size=model.backbone.square_pad, total_batch_size=64)
dataloader.test.num_workers = 0

train.max_iter = 70000
train.eval_period = 5000
train.checkpointer.period = 5000
