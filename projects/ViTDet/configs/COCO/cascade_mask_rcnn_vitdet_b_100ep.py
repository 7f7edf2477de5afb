# ViTDet-B-sized EVA Cascade Mask R-CNN on COCO, 100 epochs:
# 184375 iters * 64 images/iter / 118000 images/epoch = 100 epochs.
from eva_det.config import get_config

from ..common.coco_loader_lsj import dataloader

model = get_config("common/models/cascade_mask_rcnn_vitdet_eva.py").model
train = get_config("common/train.py").train
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier
test = get_config("common/test.py").test  # TTA, eval precision

train.max_iter = 184375
train.init_checkpoint = ""
