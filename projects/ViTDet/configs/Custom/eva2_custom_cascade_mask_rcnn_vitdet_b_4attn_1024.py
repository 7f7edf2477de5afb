# EVA-02 B Cascade Mask R-CNN on your own COCO-format dataset at 1024 (docs/CUSTOM_DATASETS.md),
# fine-tuned from the released COCO detector eva02_B_coco_bsl.pth (55.5 box / 47.1 mask AP):
# everything loads except the class layers (81 cls_score rows per cascade stage, 80 mask
# predictor channels), which start afresh for your classes.
# The dataset is config values (../common/custom_dataset.py): dataset.train_json=... etc.
# Small-data schedule: 16 images/iter; 3000 iters * 16 images = 48 epochs of a 1000-image set
# (max_iter ~= epochs * num_images / 16); lr steps at 80% and 90%.
from detectron2.config import LazyCall as L

from eva_det.config import use_custom_coco_dataset, vit_lr_factor

from ..common.custom_dataset import dataset
from ..eva2_mim_to_coco.eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7 import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

use_custom_coco_dataset(dataloader)  # loaders and evaluator read the `dataset` values
model.roi_heads.num_classes = len(dataset.thing_classes)
dataloader.train.total_batch_size = 16
dataloader.evaluator.output_dir = "${train.output_dir}"  # coco_instances_results.json

# layer-wise lr decay 0.7 over 12 blocks; frozen_blocks=k keeps the embeddings and blocks < k
optimizer.lr = 5e-5
optimizer.params.lr_factor_func = L(vit_lr_factor)(
    lr_decay_rate=0.7, num_layers=12, frozen_blocks=0
)

train.init_checkpoint = ""  # e.g. train.init_checkpoint=weights/eva02_B_coco_bsl.pth
train.output_dir = "output/my_dataset"
train.max_iter = 3000
lr_multiplier.scheduler.milestones = [train.max_iter * 8 // 10, train.max_iter * 9 // 10]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 200 / train.max_iter
train.eval_period = 500
train.checkpointer.period = 500
