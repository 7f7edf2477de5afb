# EVA-02 L Cascade Mask R-CNN on COCO at 1536, fine-tuned from the Objects365 detector
# eva02_L_m38m_to_o365 (released as eva02_L_coco_det_sys_o365 / eva02_L_coco_seg_sys_o365:
# 64.1 box / 55.4 mask AP with EMA weights and soft-NMS, see docs/MODEL_ZOO.md).
# Window 16 with global attention in blocks 2, 5, ..., 23; drop path 0.3; lr 4e-5 constant after a
# 1% warmup; EMA of weights (decay 0.9999) for evaluation.
# 40k iters * 64 images/iter / 118k images/epoch ~= 22 epochs.
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ..eva2_mim_to_coco.eva2_coco_cascade_mask_rcnn_vitdet_l_8attn_win32_1536_lrd0p8 import (
    dataloader,
    model,
    optimizer,
    test,
    train,
)

dataloader.train.total_batch_size = 64

model.backbone.net.update(window_size=16, drop_path_rate=0.3)

optimizer.lr = 4e-5

train.max_iter = 40000
# A cosine from 1 to 1, i.e. a constant lr (the official schedule).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1, end_value=1),
    warmup_length=0.01,
    warmup_factor=0.001,
)
train.model_ema.update(enabled=True, decay=0.9999, device="cuda")
